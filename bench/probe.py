"""The one thing both sides of the benchmark run inside their training process: a TrainerCallback.

It counts the tokens the model is actually fed (a forward pre-hook on the model, so it sees the
batches exactly as the trainer collated them), timestamps every optimizer step and reads the peak
memory when training ends, then writes one JSON file. The recipe gets it through
``train(callbacks=...)``; `trl sft` through a subclass of SFTTrainer that only appends it. A
hand-written loop (sft-fsdp) has no Trainer: there it is an observer of ``recipekit.loop.observed``,
which hands it the packed items of every step, so it counts their tokens (never the padding the
loop adds to rows of a micro-batch) instead of hooking the forward.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from bench.run import LAUNCHED_ENV, OUT_ENV


def batch_tokens(inputs: dict[str, Any]):
    """Non-padding tokens, squared document lengths summed, and loss tokens of one model call.

    A document is a stretch of tokens that attend to each other: a row of a padded batch (its
    attention_mask), a packed sequence in a padding-free batch (position_ids count 0, 1, ... within
    each), or a whole row when neither is given. Values stay on the device, so counting never
    syncs a GPU.
    """
    import torch

    ids = inputs.get("input_ids")
    if ids is None:
        return None
    mask, positions = inputs.get("attention_mask"), inputs.get("position_ids")
    if mask is not None and mask.dim() == 2:
        lengths = mask.sum(dim=1).to(torch.int64)
        tokens, len_sq = lengths.sum(), (lengths * lengths).sum()
    elif positions is not None:
        # A document of n tokens has positions 0..n-1, and the sum of 2k+1 over k < n is n².
        tokens, len_sq = torch.tensor(positions.numel(), device=positions.device), (2 * positions + 1).sum()
    else:
        rows, width = ids.shape[0], ids.shape[-1]
        tokens, len_sq = torch.tensor(rows * width, device=ids.device), torch.tensor(rows * width * width, device=ids.device)
    labels = inputs.get("labels")
    # None when the caller computes the loss itself (the recipe's CPU path): not countable here.
    loss_tokens = (labels != -100).sum() if labels is not None else None
    return tokens, len_sq.to(torch.int64), loss_tokens


def model_shape(model) -> dict[str, Any]:
    """What the FLOPs formulas need: parameter counts and the attention shape."""
    import torch

    params = {id(p): p for p in model.parameters()}
    embeddings = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    embedding_ids = {id(w) for w in embeddings}
    # A tied LM head shares the embedding's storage but is still a matmul on every token.
    tied_head = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Linear) and weight is not None and id(weight) in embedding_ids:
            tied_head += weight.numel()
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = config.num_attention_heads
    return {
        "params_total": sum(p.numel() for p in params.values()),
        "params_trainable": sum(p.numel() for p in params.values() if p.requires_grad),
        "params_embedding": sum(w.numel() for w in embeddings if id(w) in params),
        "params_tied_lm_head": tied_head,
        "num_layers": config.num_hidden_layers,
        "num_heads": heads,
        "head_dim": getattr(config, "head_dim", None) or config.hidden_size // heads,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "model_type": config.model_type,
    }


# What the record keeps of a run's settings: TrainingArguments' names, and the keys of a recipe's config
# that a hand-written loop reads where their names differ.
SETTINGS = ("per_device_train_batch_size", "gradient_accumulation_steps", "max_steps", "bf16", "fp16",
            "gradient_checkpointing", "optim", "packing", "packing_strategy", "padding_free", "max_length",
            "pad_to_multiple_of", "use_liger_kernel", "torch_compile", "learning_rate")
CONFIG_KEYS = {"per_device_train_batch_size": "batch_size", "max_length": "seq_length"}


class Probe(TrainerCallback):
    def __init__(self, out_path: str | os.PathLike | None = None):
        self.out_path = Path(out_path or os.environ[OUT_ENV])
        rank = int(os.environ.get("RANK", "0"))
        if rank:  # under torchrun every rank writes its own file beside rank 0's (bench.run.rank_outputs)
            self.out_path = self.out_path.with_name(f"{self.out_path.stem}.rank{rank}{self.out_path.suffix}")
        self.launched_at = float(os.environ.get(LAUNCHED_ENV) or time.time())
        self.totals = None  # running (tokens, squared doc lengths, loss tokens) tensors
        self.steps: list[tuple[float, Any]] = []
        self.hook = None
        self.loss_countable = True
        self.record: dict[str, Any] = {}

    def count(self, module, args, kwargs):
        import torch

        if not module.training:
            return
        counted = batch_tokens(kwargs)
        if counted is None:
            return
        if counted[2] is None:
            self.loss_countable = False
            counted = (*counted[:2], torch.zeros((), dtype=torch.int64, device=counted[0].device))
        self.add(counted)

    def add(self, counted) -> None:
        self.totals = counted if self.totals is None else tuple(a + b for a, b in zip(self.totals, counted))

    # --- the run, whichever way it is driven

    def begin(self, model, device, settings: dict[str, Any]) -> None:
        import torch

        self.record.update(train_begin_at=time.time(), device=str(device), torch_threads=torch.get_num_threads(),
                           settings=settings, model=model_shape(model))
        self.record["settings"]["optim"] = str(self.record["settings"]["optim"])

    def step_end(self, device) -> None:
        import torch

        if torch.cuda.is_available() and torch.device(device).type == "cuda":
            torch.cuda.synchronize()  # GPU work is queued asynchronously; time the finished step
        self.steps.append((time.time(), tuple(t.detach().clone() for t in self.totals) if self.totals else None))

    def end(self, global_step: int) -> None:
        import torch

        if self.hook is not None:
            self.hook.remove()
        steps = [{"at": at, "tokens": int(t[0]), "doc_len_sq": int(t[1]),
                  "loss_tokens": int(t[2]) if self.loss_countable else None}
                 if t else {"at": at, "tokens": 0, "doc_len_sq": 0, "loss_tokens": 0} for at, t in self.steps]
        self.record.update(
            launched_at=self.launched_at, steps=steps, global_step=global_step,
            peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            cuda_max_allocated_bytes=torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
            cuda_device=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        self.out_path.write_text(json.dumps(self.record, indent=1))

    # --- driven by a transformers Trainer

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.hook = model.register_forward_pre_hook(self.count, with_kwargs=True)
        self.begin(model, args.device, {key: getattr(args, key, None) for key in SETTINGS})

    def on_step_end(self, args, state, control, **kwargs):
        self.step_end(args.device)

    def on_train_end(self, args, state, control, **kwargs):
        self.end(state.global_step)

    # --- driven by a hand-written loop (recipekit.loop.observed)

    def loop_begin(self, model, device, config: dict[str, Any]) -> None:
        self.begin(model, device, {key: config.get(CONFIG_KEYS.get(key, key)) for key in SETTINGS})

    def loop_step_end(self, device, items: list[dict[str, Any]]) -> None:
        import torch

        # The packed items (recipekit.sft_data.pack_items) as one padding-free row, counted as a Trainer's is.
        row = {key: torch.tensor([[value for item in items for value in item[key]]])
               for key in ("input_ids", "position_ids", "labels")}
        self.add(batch_tokens(row))
        self.step_end(device)

    def loop_end(self, steps: int) -> None:
        self.end(steps)
