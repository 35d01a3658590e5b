"""AdamW's parameter groups, built the same way in every recipe: weight decay, layer-wise LR decay
(``layer_lr_decay``) and per-name LR multipliers (``lr_multipliers``)."""

from __future__ import annotations

import re
from typing import Any

from recipekit.schema import TrainingOptions


def skips_weight_decay(name: str, param) -> bool:
    """Norms, biases and other vectors are not decayed."""
    return param.ndim < 2 or "norm" in name.lower() or name.endswith(".bias")


def lr_scale(name: str, num_layers: int, train: TrainingOptions) -> float:
    """The multiple of the learning rate for parameter ``name``: decay^(L-1-i) for decoder layer i of L,
    decay^L for the embeddings, times the first ``lr_multipliers`` pattern that matches."""
    scale = 1.0
    layer = re.search(r"\.layers\.(\d+)\.", name)
    if layer:
        scale *= train.layer_lr_decay ** (num_layers - 1 - int(layer.group(1)))
    elif "embed" in name:
        scale *= train.layer_lr_decay ** num_layers
    for pattern, factor in train.lr_multipliers.items():
        if re.search(pattern, name):
            scale *= factor
            break
    return scale


def uniform_lr(train: TrainingOptions) -> bool:
    return train.layer_lr_decay == 1.0 and not train.lr_multipliers


def param_groups(model, train: TrainingOptions) -> list[dict[str, Any]]:
    """AdamW groups of the trainable parameters, one per (learning rate, decayed or not); decayed first
    when every parameter gets the same learning rate, else in the order the parameters come."""
    num_layers = getattr(model.config, "num_hidden_layers", None) or 1
    groups: dict[tuple[float, bool], list] = {(1.0, False): [], (1.0, True): []} if uniform_lr(train) else {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (lr_scale(name, num_layers, train), skips_weight_decay(name, param))
            groups.setdefault(key, []).append(param)
    return [{"params": params, "lr": train.learning_rate * scale,
             "weight_decay": 0.0 if no_decay else train.weight_decay}
            for (scale, no_decay), params in groups.items() if params]


def adamw(model, train: TrainingOptions):
    """torch's AdamW over ``param_groups``: the optimizer of the recipes with their own training loop."""
    import torch

    return torch.optim.AdamW(param_groups(model, train), lr=train.learning_rate)


def adamw_unless_uniform(model, train: TrainingOptions):
    """For a transformers Trainer: ``adamw`` where learning rates differ per parameter, else None, so the
    Trainer builds its default optimizer (with its own no-decay rule)."""
    return None if uniform_lr(train) else adamw(model, train)
