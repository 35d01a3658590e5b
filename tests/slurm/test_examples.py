"""Golden test: slurm/examples/*.sbatch are exactly what the template renders today (tests/golden.py)."""

from __future__ import annotations

import subprocess

from launcher import examples, recipes
from tests.golden import assert_current

EXAMPLES = examples.SETS["slurm"].directory


def test_examples_match_a_fresh_render():
    assert_current("slurm")


def test_every_recipe_has_an_example_that_is_valid_bash():
    for recipe in recipes.all_recipes():
        path = EXAMPLES / f"{recipe.name}.sbatch"
        assert path.is_file(), f"no example for {recipe.name}; run `launcher examples`"
        assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_examples_are_deterministic_and_independent_of_this_checkout():
    for path in EXAMPLES.glob("*.sbatch"):
        text = path.read_text(encoding="utf-8")
        assert str(recipes.REPO_ROOT) not in text, f"{path.name} names this checkout's path"
        assert "$(date" not in text.split("set -uo pipefail")[0]
        if "search.py" in text:
            assert "#SBATCH --array=0-3" in text and "#SBATCH --gpus-per-node=1" in text
        else:
            assert "#SBATCH --nodes=2" in text and "#SBATCH --gpus-per-node=4" in text
