"""launcher/examples.py: `launcher examples` keeps a directory equal to the rendered examples.

The checked-in examples themselves are compared in tests/slurm/test_examples.py and
tests/k8s/test_examples.py.
"""

from __future__ import annotations

from launcher import appspec, examples, recipes, slurm


def test_write_adds_updates_and_removes_and_check_only_compares(tmp_path, monkeypatch):
    monkeypatch.setattr(appspec, "resolve_config", lambda recipe, config, overrides: "seed: 1\n")
    only_sft = examples.ExampleSet(tmp_path, "sbatch", slurm.SlurmBackend, (
        examples.Variant("", "example", only=("sft",)), examples.Variant(".venv", "example-venv", only=("sft",))))
    stray = tmp_path / "gone.sbatch"
    stray.write_text("a recipe that no longer exists\n")
    (tmp_path / "notes.txt").write_text("not an example\n")
    expected = [tmp_path / "sft.sbatch", tmp_path / "sft.venv.sbatch"]
    assert examples.write(only_sft, check=True) == [*expected, stray]
    assert not expected[0].exists() and stray.exists()  # --check writes nothing
    assert examples.write(only_sft) == [*expected, stray]
    assert sorted(tmp_path.iterdir()) == [tmp_path / "notes.txt", *expected]
    assert "#SBATCH --nodes=2" in expected[0].read_text() and "source " in expected[1].read_text()
    expected[1].write_text("edited by hand\n")
    assert examples.write(only_sft, check=True) == [expected[1]]
    assert examples.write(only_sft) == [expected[1]] and examples.write(only_sft, check=True) == []


def test_a_search_recipe_is_rendered_as_workers_and_a_training_recipe_as_nodes():
    shapes = {recipe.name: examples.shape(recipe) for recipe in recipes.all_recipes()}
    assert shapes["optuna"] == {"gpus_per_node": 1, "workers": examples.WORKERS}
    assert shapes["sft"] == {"nodes": examples.NODES, "gpus_per_node": examples.GPUS}
