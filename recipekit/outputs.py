"""What every run leaves behind besides the model: resolved config, metrics.json and loss.png."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable

from recipekit import config as configlib

RESOLVED_CONFIG = "resolved_config.yaml"
METRICS = "metrics.json"
LOSS_PLOT = "loss.png"


def replace_atomically(path: Path, write: Callable[[str], None]) -> None:
    """Have ``write`` fill a temp file next to ``path`` (same suffix), then rename it over ``path``:
    readers never see half a file, and a failed write leaves the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.with_name(f".{path.stem}-{uuid.uuid4().hex[:12]}{path.suffix}"))
    # Created as any new file is (0666 less the umask), not 0600 as mkstemp would.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_atomic(path: Path, text: str) -> None:
    replace_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_resolved_config(cfg: Any, output_dir: str | Path, recipe: str) -> Path:
    path = Path(output_dir) / RESOLVED_CONFIG
    header = f"# Resolved config of recipe {recipe}; rerun with: launcher run recipes/{recipe} --config {path}\n"
    write_atomic(path, configlib.dump_yaml(cfg, header))
    return path


def write_metrics(metrics: dict[str, Any], output_dir: str | Path) -> Path:
    path = Path(output_dir) / METRICS
    write_atomic(path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return path


def plot_loss(log_history: list[dict[str, Any]], output_dir: str | Path, title: str) -> Path | None:
    """Training (and eval) loss against step, from a Trainer's ``state.log_history``."""
    train = [(row["step"], row["loss"]) for row in log_history if "loss" in row and "step" in row]
    evals = [(row["step"], row["eval_loss"]) for row in log_history if "eval_loss" in row and "step" in row]
    if not train and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for points, label in ((train, "train loss"), (evals, "eval loss")):
        if points:
            ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(output_dir) / LOSS_PLOT
    fig.tight_layout()
    replace_atomically(path, fig.savefig)
    plt.close(fig)
    return path
