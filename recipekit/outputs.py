"""What a run leaves in its output_dir: the final model (model/, merged/), metrics.json, the resolved
config and loss.png, and the end every training recipe shares (``finish``)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable

from recipekit import config as configlib
from recipekit import card, distributed, loading, tracking
from recipekit.schema import LoraOptions, ModelOptions

FINAL_DIR = "model"
MERGED_DIR = "merged"
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


def run_facts(recipe: str, resumed_from: Path | None, device: Any) -> dict[str, Any]:
    """The keys every recipe's metrics.json starts from: which recipe, the checkpoint it resumed, where it ran."""
    return {"recipe": recipe, "resumed_from": str(resumed_from) if resumed_from else None,
            "world_size": distributed.world_size(), "device": str(device)}


def finish(cfg: Any, recipe: str, metrics: dict[str, Any], log_history: list[dict[str, Any]],
           summary: Callable[[dict[str, Any], str], None], title: str | None = None,
           question: str | None = None) -> None:
    """The end of every training recipe, on rank 0: metrics.json (with the log history), the resolved
    config, the loss plot (titled ``recipe: model_name`` unless ``title`` says otherwise), the model cards
    (``question``, from the user's data, is the one they suggest asking), the final metrics into the
    experiment trackers, and the summary."""
    if not distributed.is_main():
        return
    metrics["log_history"] = log_history
    write_metrics(metrics, cfg.output_dir)
    save_resolved_config(cfg, cfg.output_dir, recipe)
    plot_loss(log_history, cfg.output_dir, title or f"{recipe}: {cfg.model_name}")
    card.write_all(cfg, recipe, metrics, question)
    tracking.finish(metrics)
    summary(metrics, cfg.output_dir)


def save_final(trainer, tokenizer, output_dir: str, base_path: str, opts: ModelOptions, lora: LoraOptions,
               token: str | None, masked_lm: bool = False) -> dict[str, str]:
    """Save the model (or adapter) + tokenizer to model/, and for adapters a merged copy to merged/."""
    final = Path(output_dir) / FINAL_DIR
    trainer.save_model(str(final))
    saved = {"model": str(final)}
    if distributed.is_main():
        tokenizer.save_pretrained(final)
        if lora.use_peft and lora.merge_adapter:
            merged = merge_adapter(base_path, final, Path(output_dir) / MERGED_DIR, opts, token, masked_lm)
            saved["merged"] = str(merged)
    distributed.barrier()
    return saved


def merge_adapter(base_path: str, adapter_dir: Path, out: Path, opts: ModelOptions, token: str | None,
                  masked_lm: bool = False) -> Path:
    """Merge a LoRA adapter into a fresh full-precision copy of its base (also right for QLoRA)."""
    import torch
    import transformers
    from peft import PeftModel

    auto = transformers.AutoModelForMaskedLM if masked_lm else transformers.AutoModelForCausalLM
    base = auto.from_pretrained(base_path, dtype=torch.float32, token=token, trust_remote_code=opts.trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(out)
    loading.load_tokenizer(str(adapter_dir), opts, token).save_pretrained(out)
    return out
