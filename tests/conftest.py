"""Shared fixtures: the tiny model, a small slice of the hotel data, and a recipe runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """The alias recipes resolve to a 2-layer random Llama with the embedded tokenizer."""
    from recipekit import models

    models.prepare_tiny()
    return models.TINY_MODEL


@pytest.fixture(scope="session")
def small_hotel(tmp_path_factory) -> dict[str, str]:
    """48 train and 8 eval rows of the hotel chat data, as local JSONL files (the user-data path)."""
    from recipekit.data import EMBEDDED_DIR

    out = tmp_path_factory.mktemp("hotel")
    paths = {}
    for split, count in (("train", 48), ("eval", 8)):
        rows = (EMBEDDED_DIR / f"{split}.jsonl").read_text().splitlines()[:count]
        paths[split] = str(out / f"{split}.jsonl")
        Path(paths[split]).write_text("\n".join(rows) + "\n")
    return paths


def run_launcher(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``launcher ARGS`` as a user runs it, output captured."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def read_metrics(output_dir: Path) -> dict:
    return json.loads((output_dir / "metrics.json").read_text())


def logged_losses(metrics: dict) -> list[float]:
    return [row["loss"] for row in metrics["log_history"] if "loss" in row]
