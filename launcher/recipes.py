"""Finding recipes: a recipe is a directory with an entry point (train.py or search.py) and config.yaml.

The launcher knows a recipe only through that directory: its config file, its entry point and
the first line of the entry point's docstring. It never imports a recipe; it runs the entry
point, and ``resolve_config`` asks the recipe itself (``--check``) for the config it will train with.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import ConfigRejected, RecipeNotFound

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = REPO_ROOT / "recipes"
TRAIN_ENTRY = "train.py"
SEARCH_ENTRY = "search.py"
ENTRY_POINTS = (TRAIN_ENTRY, SEARCH_ENTRY)


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    entry: Path
    config: Path

    @property
    def is_search(self) -> bool:
        """A search recipe (search.py) runs as independent one-process workers sharing one study;
        a training recipe (train.py) runs under torchrun, one or more processes on each node."""
        return self.entry.name == SEARCH_ENTRY

    @property
    def entry_in_workdir(self) -> str:
        """The entry point as a job runs it, from a directory holding recipes/: recipes/<name>/train.py."""
        return f"recipes/{self.path.resolve().name}/{self.entry.name}"

    @property
    def description(self) -> str:
        doc = ast.get_docstring(ast.parse(self.entry.read_text(encoding="utf-8"))) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def args(self, config: str | None = None, overrides: tuple[str, ...] = ()) -> list[str]:
        """``<entry> --config <file> --set=KEY=VALUE ...``: the recipe's command line, without the interpreter."""
        args = [str(self.entry), "--config", str(config or self.config)]
        for item in overrides:
            args.append(f"--set={item}")  # one token, so a value starting with "-" is not taken for an option
        return args


def load(ref: str) -> Recipe:
    """A recipe from a directory path (recipes/sft) or a bare name (sft)."""
    path = Path(ref)
    if not path.is_dir() and (RECIPES_DIR / ref).is_dir():
        path = RECIPES_DIR / ref
    if not path.is_dir():
        raise RecipeNotFound(f"no recipe at {ref!r}; choose one of: {', '.join(r.name for r in all_recipes())}")
    entry = next((path / e for e in ENTRY_POINTS if (path / e).is_file()), None)
    if entry is None or not (path / "config.yaml").is_file():
        raise RecipeNotFound(f"{ref!r} is not a recipe: it needs config.yaml and one of {', '.join(ENTRY_POINTS)}")
    return Recipe(name=path.resolve().name, path=path, entry=entry, config=path / "config.yaml")


def all_recipes() -> list[Recipe]:
    found = []
    for path in sorted(RECIPES_DIR.iterdir()) if RECIPES_DIR.is_dir() else []:
        if (path / "config.yaml").is_file() and any((path / e).is_file() for e in ENTRY_POINTS):
            found.append(load(str(path)))
    return found


@functools.lru_cache(maxsize=64)
def resolve_config(recipe: Recipe, config: str | None, overrides: tuple[str, ...]) -> str:
    """The recipe's own ``--check`` output: the full, validated config it will train with.

    Run from the repository root, as the job runs from its workdir; paths inside this checkout
    come back relative, so they hold wherever the job's copy of the repository is. A config the
    recipe refuses raises ``ConfigRejected`` with what the recipe printed.
    """
    absolute = Recipe(recipe.name, recipe.path, recipe.entry.resolve(), recipe.config)
    args = [sys.executable, *absolute.args(str(Path(config or recipe.config).resolve()), overrides), "--check"]
    result = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise ConfigRejected(result.stderr, result.returncode)
    return result.stdout.replace(f"{REPO_ROOT}/", "")
