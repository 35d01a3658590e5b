"""What a hand-written training loop (sft-fsdp, pipeline-parallel) takes from transformers' Trainer
stack, without importing it: seeding, the learning-rate schedules, the causal-LM loss, and observers
in place of callbacks (``observed``; sft-fsdp's loop has them, for the benchmark's probe).

``transformers.optimization`` and ``transformers.trainer_utils`` import peft and bitsandbytes,
CPU time in every rank before its first step (docs/benchmarks.md). The schedules here are the curves of
``transformers.get_scheduler`` for every ``lr_scheduler_type`` the config accepts (with its
defaults: half a cosine, one hard restart, linear polynomial decay to 1e-7);
tests/recipekit/test_loop.py compares them step by step.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
from typing import TYPE_CHECKING, Any, Callable

from recipekit.data import IGNORE_INDEX
from recipekit.schema import POLYNOMIAL_LR_END

if TYPE_CHECKING:
    import torch

INVERSE_SQRT_TIMESCALE = 10_000  # used when there is no warmup to take the time scale from

# Makers of observers of a hand-written loop, the counterpart of ``trainers.added_callbacks`` (the
# benchmark's probe is one). See ``observed`` for what an observer is told.
added_observers: list[Callable[[], Any]] = []


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators (every device's), as ``transformers.set_seed`` does."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def observed(model, device, config: dict[str, Any]):
    """Tell the added observers about the training loop inside the block; yields ``step_end(items)``,
    which the loop calls after every optimizer step with the packed items this rank trained on in it.

    Each observer gets ``loop_begin(model, device, config)`` before the first step,
    ``loop_step_end(device, items)`` after each, and ``loop_end(steps)`` once the loop has finished
    (not when it raised, as a Trainer's ``on_train_end`` is not called then).
    """
    observers = [make() for make in added_observers]
    for observer in observers:
        observer.loop_begin(model, device, config)
    steps = 0

    def step_end(items: list[dict[str, Any]]) -> None:
        nonlocal steps
        steps += 1
        for observer in observers:
            observer.loop_step_end(device, items)

    yield step_end
    for observer in observers:
        observer.loop_end(steps)


def lr_factor(name: str, step: int, warmup: int, total: int, lr_init: float) -> float:
    """The multiple of the base learning rate at ``step`` (0-based) of a ``total``-step run."""
    if step < warmup and name != "constant":
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    if name == "constant" or name == "constant_with_warmup":
        return 1.0
    if name == "linear":
        return max(0.0, (total - step) / max(1, total - warmup))
    if name == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    if name == "cosine_with_restarts":
        return 0.0 if progress >= 1.0 else max(0.0, 0.5 * (1.0 + math.cos(math.pi * (progress % 1.0))))
    if name == "polynomial":
        if step > total:
            return POLYNOMIAL_LR_END / lr_init
        return ((lr_init - POLYNOMIAL_LR_END) * (1 - progress) + POLYNOMIAL_LR_END) / lr_init
    if name == "inverse_sqrt":
        timescale = warmup or INVERSE_SQRT_TIMESCALE
        return 1.0 / math.sqrt((step + timescale - warmup) / timescale)
    raise ValueError(f"lr_scheduler_type: unknown schedule {name!r}")


def scheduler(name: str, optimizer: torch.optim.Optimizer, warmup: int, total: int):
    """A ``LambdaLR`` following ``name``; its state_dict is the one transformers' schedulers save.
    (A polynomial schedule needs a learning rate above its end; the config's check says so.)"""
    from torch.optim.lr_scheduler import LambdaLR

    lr_init = optimizer.defaults["lr"]
    return LambdaLR(optimizer, functools.partial(lr_factor, name, warmup=warmup, total=total, lr_init=lr_init))


def next_token_loss_sum(logits, labels):
    """The sum of next-token cross-entropies over the labelled tokens (log-softmax in float32)."""
    import torch.nn.functional as F

    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum")


def label_tokens(labels) -> int:
    """How many tokens ``next_token_loss_sum`` adds up."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
