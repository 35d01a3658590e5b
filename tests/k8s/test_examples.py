"""Golden test: k8s/examples/*.yaml are exactly what the templates render today (tests/golden.py)."""

from __future__ import annotations

from launcher import examples, k8s, recipes
from tests.golden import assert_current

EXAMPLES = examples.SETS["k8s"].directory


def test_examples_match_a_fresh_render():
    assert_current("k8s")


def test_every_recipe_has_a_pytorchjob_and_a_trainjob_example():
    for recipe in recipes.all_recipes():
        for suffix, kinds in (("", {"PyTorchJob", "Job"}), (".trainjob", {"TrainJob"})):
            path = EXAMPLES / f"{recipe.name}{suffix}.yaml"
            assert path.is_file(), f"no example {path.name}; run `launcher examples --backend k8s`"
            config_map, job = k8s.manifests(path.read_text(encoding="utf-8"))
            assert config_map["kind"] == "ConfigMap" and job["kind"] in kinds
            assert job["metadata"]["name"].startswith(recipe.name + "-")


def test_examples_are_two_nodes_of_four_gpus_and_independent_of_this_checkout():
    for path in EXAMPLES.glob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        assert str(recipes.REPO_ROOT) not in text, f"{path.name} names this checkout's path"
        _, job = k8s.manifests(text)
        if job["kind"] == "PyTorchJob":
            spec = job["spec"]
            assert spec["nprocPerNode"] == "4"
            assert spec["pytorchReplicaSpecs"]["Master"]["replicas"] == 1
            assert spec["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
        elif job["kind"] == "TrainJob":
            trainer = job["spec"]["trainer"]
            search = trainer["command"][1].endswith("search.py")
            assert (trainer["numNodes"], trainer["numProcPerNode"]) == ((4, 1) if search else (2, 4))
        else:  # a search recipe's workers
            assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
