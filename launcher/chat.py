"""``launcher try``: answer questions with a trained model through a transformers pipeline."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterator


def find_model_dir(output: Path) -> Path | None:
    """Prefer the merged export, then the final model/adapter, then the dir itself."""
    for candidate in (output / "merged", output / "model", output):
        if (candidate / "config.json").is_file() or (candidate / "adapter_config.json").is_file():
            return candidate
    return None


def load(model_dir: Path) -> Callable[[str, int], str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if (model_dir / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    chat = pipeline("text-generation", model=model, tokenizer=tokenizer)

    def generate(question: str, max_new_tokens: int) -> str:
        out = chat([{"role": "user", "content": question}], max_new_tokens=max_new_tokens, do_sample=False)
        return out[0]["generated_text"][-1]["content"].strip()

    return generate


def read_questions() -> Iterator[str]:
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("ask (empty line to quit): ", end="", flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            return
        yield line.strip()
