"""slurm/examples/: every recipe rendered with the example profiles, kept in git and checked by a test.

``launcher examples`` rewrites them (rerun it after changing a recipe's config, the template or
launcher.yaml); ``launcher examples --check`` and tests/slurm/test_examples.py compare.
Only the repository's launcher.yaml is read, never the user's, so the output is the same
everywhere: no timestamps, no random names, no paths of this checkout.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from launcher import jobspec, profiles, recipes, slurm

EXAMPLES = recipes.REPO_ROOT / "slurm" / "examples"
PROFILE = "example"
NODES, GPUS = 2, 4          # a training recipe: 2 nodes x 4 GPUs
WORKERS = 4                 # a search recipe: 4 workers of 1 GPU each
VARIANTS = {"sft": ("example-enroot", "example-venv")}  # the other container modes, shown once


def render(recipe: recipes.Recipe, profile_name: str) -> str:
    profile = profiles.load(profile_name, files=[profiles.REPO_FILE])
    if recipe.entry.name == "search.py":
        spec = jobspec.build(recipe, profile, gpus_per_node=1, workers=WORKERS)
    else:
        spec = jobspec.build(recipe, profile, nodes=NODES, gpus_per_node=GPUS)
    return slurm.render(spec)


def expected() -> dict[Path, str]:
    """Every example file and its content."""
    jobs = {}
    for recipe in recipes.all_recipes():
        jobs[EXAMPLES / f"{recipe.name}.sbatch"] = (recipe, PROFILE)
        for variant in VARIANTS.get(recipe.name, ()):
            jobs[EXAMPLES / f"{recipe.name}.{variant.removeprefix('example-')}.sbatch"] = (recipe, variant)
    with ThreadPoolExecutor(max_workers=2) as pool:  # each render runs the recipe's --check
        texts = pool.map(lambda job: render(*job), jobs.values())
        return dict(zip(jobs, texts))


def write(check: bool = False) -> list[Path]:
    """Write the examples (or, with ``check``, only compare); return the files that differed."""
    return recipes.sync_examples(EXAMPLES, "*.sbatch", expected(), check)
