"""k8s/examples/: every recipe rendered as Kubernetes manifests, kept in git and checked by a test.

``launcher examples`` rewrites them (rerun it after changing a recipe's config, a template or
launcher.yaml); ``launcher examples --check`` and tests/k8s/test_examples.py compare. Only the
repository's launcher.yaml is read, and the names' suffixes are fixed (a hash of the file name),
so the output is the same everywhere. The PyTorchJob and the TrainJob example of a recipe are
the same job (one name, one config) in two APIs: apply one of them.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from launcher import k8s, profiles, recipes

EXAMPLES = recipes.REPO_ROOT / "k8s" / "examples"
PROFILE = "example-k8s"
NODES, GPUS = 2, 4          # a training recipe: 2 pods x 4 GPUs
WORKERS = 4                 # a search recipe: 4 worker pods of 1 GPU each
VARIANTS = {"": "pytorchjob", ".trainjob": "trainjob"}


def suffix(recipe: str) -> str:
    return hashlib.sha256(recipe.encode()).hexdigest()[:k8s.SUFFIX_LENGTH]


def render(recipe: recipes.Recipe, apis: tuple[str, ...]) -> list[str]:
    """The recipe's examples, one per API; the resolved config (the recipe's --check) is shared."""
    profile = profiles.load(PROFILE, files=[profiles.REPO_FILE])
    if recipe.entry.name == "search.py":
        shape = dict(gpus_per_node=1, workers=WORKERS)
    else:
        shape = dict(nodes=NODES, gpus_per_node=GPUS)
    return [k8s.render(k8s.build(recipe, profile, api=api, suffix=suffix(recipe.name), **shape)) for api in apis]


def expected() -> dict[Path, str]:
    """Every example file and its content."""
    found = recipes.all_recipes()
    with ThreadPoolExecutor(max_workers=2) as pool:  # each recipe's --check runs once
        texts = pool.map(lambda recipe: render(recipe, tuple(VARIANTS.values())), found)
        return {EXAMPLES / f"{recipe.name}{variant}.yaml": text
                for recipe, rendered in zip(found, texts) for variant, text in zip(VARIANTS, rendered)}


def write(check: bool = False) -> list[Path]:
    """Write the examples (or, with ``check``, only compare); return the files that differed."""
    return recipes.sync_examples(EXAMPLES, "*.yaml", expected(), check)
