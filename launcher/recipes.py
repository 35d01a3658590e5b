"""Finding recipes: a recipe is a directory with an entry point (train.py or search.py) and config.yaml.

The launcher knows a recipe only through that directory: its config file, its entry point and
the first line of the entry point's docstring. It never imports a recipe.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import click

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = REPO_ROOT / "recipes"
ENTRY_POINTS = ("train.py", "search.py")


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    entry: Path
    config: Path

    @property
    def description(self) -> str:
        doc = ast.get_docstring(ast.parse(self.entry.read_text(encoding="utf-8"))) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


def load(ref: str) -> Recipe:
    """A recipe from a directory path (recipes/sft) or a bare name (sft)."""
    path = Path(ref)
    if not path.is_dir() and (RECIPES_DIR / ref).is_dir():
        path = RECIPES_DIR / ref
    if not path.is_dir():
        raise click.BadParameter(f"no recipe at {ref!r}; choose one of: {', '.join(r.name for r in all_recipes())}",
                                 param_hint="RECIPE")
    entry = next((path / e for e in ENTRY_POINTS if (path / e).is_file()), None)
    if entry is None or not (path / "config.yaml").is_file():
        raise click.BadParameter(f"{ref!r} is not a recipe: it needs config.yaml and one of "
                                 f"{', '.join(ENTRY_POINTS)}", param_hint="RECIPE")
    return Recipe(name=path.resolve().name, path=path, entry=entry, config=path / "config.yaml")


def all_recipes() -> list[Recipe]:
    found = []
    for path in sorted(RECIPES_DIR.iterdir()) if RECIPES_DIR.is_dir() else []:
        if (path / "config.yaml").is_file() and any((path / e).is_file() for e in ENTRY_POINTS):
            found.append(load(str(path)))
    return found


def sync_examples(directory: Path, pattern: str, files: dict[Path, str], check: bool) -> list[Path]:
    """Make ``directory`` hold exactly ``files`` (path -> text) among its ``pattern`` files, or with
    ``check`` only compare; return the files that differed. Files of recipes that no longer exist
    count as stale and are removed."""
    stale = [path for path, text in files.items()
             if not path.is_file() or path.read_text(encoding="utf-8") != text]
    stale += sorted(path for path in directory.glob(pattern) if path not in files)
    if not check:
        directory.mkdir(parents=True, exist_ok=True)
        for path in stale:
            if path in files:
                path.write_text(files[path], encoding="utf-8")
            else:
                path.unlink()
    return stale
