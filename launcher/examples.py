"""slurm/examples/ and k8s/examples/: every recipe rendered with the example profiles, kept in git.

``launcher examples`` rewrites them (rerun it after changing a recipe's config, a template or
launcher.yaml); ``launcher examples --check``, tests/slurm/test_examples.py and
tests/k8s/test_examples.py compare. Only the repository's launcher.yaml is read, never the
user's, and a Kubernetes job's name gets a fixed suffix (a hash of the recipe's name), so the
output is the same everywhere: no timestamps, no random names, no paths of this checkout. The
PyTorchJob and the TrainJob example of a recipe are the same job (one name, one config) in two
APIs: apply one of them.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from launcher import appspec, k8s, profiles, recipes, slurm
from launcher.backend import Scheduler

NODES, GPUS = 2, 4          # a training recipe: 2 nodes (pods) x 4 GPUs
WORKERS = 4                 # a search recipe: 4 workers (pods) of 1 GPU each


@dataclass(frozen=True)
class Variant:
    """One example file per recipe: ``<recipe><suffix>.<extension>``, rendered with a profile and options."""

    suffix: str
    profile: str
    options: dict[str, Any] = field(default_factory=dict)
    only: tuple[str, ...] | None = None   # only for these recipes (None: every recipe)


@dataclass(frozen=True)
class ExampleSet:
    directory: Path
    extension: str
    backend: Callable[[], Scheduler]
    variants: tuple[Variant, ...]

    def files(self) -> list[Path]:
        return sorted(self.directory.glob(f"*.{self.extension}"))


def fixed_suffix(base: str) -> str:
    return hashlib.sha256(base.encode()).hexdigest()[:k8s.SUFFIX_LENGTH]


SETS = {
    "slurm": ExampleSet(recipes.REPO_ROOT / "slurm" / "examples", "sbatch", slurm.SlurmBackend, (
        Variant("", "example"),
        Variant(".enroot", "example-enroot", only=("sft",)),  # the other container modes, shown once
        Variant(".venv", "example-venv", only=("sft",)))),
    "k8s": ExampleSet(recipes.REPO_ROOT / "k8s" / "examples", "yaml", lambda: k8s.K8sBackend(suffix=fixed_suffix), (
        Variant("", "example-k8s", {"api": "pytorchjob"}),
        Variant(".trainjob", "example-k8s", {"api": "trainjob"}))),
}


def shape(recipe: recipes.Recipe) -> dict[str, int]:
    return dict(gpus_per_node=1, workers=WORKERS) if recipe.is_search else dict(nodes=NODES, gpus_per_node=GPUS)


def render(examples: ExampleSet, recipe: recipes.Recipe) -> dict[Path, str]:
    """The recipe's example files and their content (its --check runs once, for all of them)."""
    backend, found = examples.backend(), {}
    for variant in examples.variants:
        if variant.only is None or recipe.name in variant.only:
            profile = profiles.load(variant.profile, files=[profiles.REPO_FILE])
            app, opts, _ = appspec.plan(backend, profile, recipe, variant.options, **shape(recipe))
            path = examples.directory / f"{recipe.name}{variant.suffix}.{examples.extension}"
            found[path] = backend.dryrun(app, opts).text
    return found


def expected(examples: ExampleSet) -> dict[Path, str]:
    """Every example file of the set and its content."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        rendered = pool.map(lambda recipe: render(examples, recipe), recipes.all_recipes())
        return {path: text for files in rendered for path, text in files.items()}


def write(examples: ExampleSet, check: bool = False) -> list[Path]:
    """Make the set's directory hold exactly the expected files (or, with ``check``, only compare);
    return the files that differed. Files of recipes that no longer exist are stale and removed."""
    files = expected(examples)
    stale = [path for path, text in files.items()
             if not path.is_file() or path.read_text(encoding="utf-8") != text]
    stale += [path for path in examples.files() if path not in files]
    if not check:
        examples.directory.mkdir(parents=True, exist_ok=True)
        for path in stale:
            if path in files:
                path.write_text(files[path], encoding="utf-8")
            else:
                path.unlink()
    return stale
