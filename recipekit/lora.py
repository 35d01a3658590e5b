"""LoRA adapters: their peft config from the shared options, and the model as generation should see it."""

from __future__ import annotations

import contextlib
import re
from typing import Any

from recipekit.schema import LoraOptions, ModelOptions


def lora_config(lora: LoraOptions, model, task_type: str | None = "CAUSAL_LM"):
    from peft import LoraConfig

    targets: Any = lora.peft_target_modules
    layers = None
    if lora.peft_top_layers is not None:
        num_layers = model.config.get_text_config().num_hidden_layers
        layers = list(range(max(0, num_layers - lora.peft_top_layers), num_layers))
        if targets == "all-linear":  # peft needs explicit names to restrict adapters to some layers
            targets = decoder_linear_names(model)
    return LoraConfig(r=lora.peft_lora_r, lora_alpha=lora.peft_lora_alpha, lora_dropout=lora.peft_lora_dropout,
                      target_modules=targets, layers_to_transform=layers, bias="none", task_type=task_type)


def decoder_linear_names(model) -> list[str]:
    """Leaf names of the linear layers inside the decoder blocks (q_proj, ..., down_proj)."""
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and re.search(r"\.layers\.\d+\.", name)})


@contextlib.contextmanager
def generation_view(model, opts: ModelOptions, adapter: bool):
    """The model as generation should see it, quickly: LoRA off for the base model's answers,
    or merged into the weights (undone afterwards) so generation does not pay for the adapter."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        yield model
    elif not adapter:
        with model.disable_adapter():
            yield model
    elif opts.load_in_4bit or opts.load_in_8bit:  # quantized weights cannot absorb the adapter
        yield model
    else:
        model.merge_adapter()
        try:
            yield model
        finally:
            model.unmerge_adapter()
