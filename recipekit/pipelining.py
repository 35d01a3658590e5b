"""Pipeline parallelism's building blocks: a causal LM cut into contiguous stages, the stages' sizes
balanced, the loss that adds up across microbatches, and gradient clipping across the stages.
Used by the pipeline-parallel recipe with torch.distributed.pipelining's schedules."""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist

from recipekit import loop

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")  # decoders whose forward is embed → layers → norm → lm_head


def split_layers(num_layers: int, stages: int, head_cost: float) -> list[int]:
    """Contiguous layer counts per stage that minimise the slowest stage; the last also runs the LM head."""
    @functools.cache
    def solve(start: int, left: int) -> tuple[float, tuple[int, ...]]:
        if left == 1:
            return num_layers - start + head_cost, (num_layers - start,)
        options = []
        for take in range(1, num_layers - start - left + 2):
            cost, rest = solve(start + take, left - 1)
            options.append((max(float(take), cost), (take, *rest)))
        return min(options)

    return list(solve(0, stages)[1])


def layer_types(config) -> list[str]:
    kinds = getattr(config, "layer_types", None)
    if kinds:
        return list(kinds)
    sliding = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    return ["sliding_attention" if sliding else "full_attention"] * config.num_hidden_layers


class Stage(torch.nn.Module):
    """Layers [lo, hi) of a causal LM (plus embeddings / norm + LM head at the ends), named as in the full model."""

    def __init__(self, lm, lo: int, hi: int, first: bool, last: bool, autocast_dtype=None):
        super().__init__()
        self.config, self.first, self.last, self.autocast_dtype = lm.config, first, last, autocast_dtype
        self.model = torch.nn.Module()
        if first:
            self.model.embed_tokens = lm.model.embed_tokens
        self.model.layers = torch.nn.ModuleDict({str(i): lm.model.layers[i] for i in range(lo, hi)})
        self.model.rotary_emb = lm.model.rotary_emb  # each stage computes its own position embeddings
        if last:
            self.model.norm, self.lm_head = lm.model.norm, lm.lm_head
        self.kinds = layer_types(lm.config)[lo:hi]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        make = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
        with torch.autocast(x.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            h = self.model.embed_tokens(x) if self.first else x
            positions = torch.arange(h.shape[1], device=h.device).unsqueeze(0)
            # Right padding only: causal attention alone keeps real tokens from seeing the pads after them.
            masks = {kind: make[kind](config=self.config, inputs_embeds=h, attention_mask=None,
                                      past_key_values=None, position_ids=positions) for kind in set(self.kinds)}
            rope = self.model.rotary_emb(h, position_ids=positions)
            for kind, layer in zip(self.kinds, self.model.layers.values()):
                h = layer(h, attention_mask=masks[kind], position_embeddings=rope, position_ids=positions)
            return self.lm_head(self.model.norm(h)) if self.last else h


class TokenMeanLoss:
    """Cross entropy summed over a microbatch's label tokens, divided by the label tokens of the whole step,
    so the microbatch losses add up to the step's token mean (the schedule runs with scale_grads=False)."""

    def __init__(self):
        self.denominator = 1.0

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return loop.next_token_loss_sum(logits, labels) / self.denominator


def clip_global_grad_norm(owned: list, params: list, max_norm: float, device) -> float:
    """The gradient norm over every stage (an all-reduce of squared sums); scale all grads down to max_norm."""
    squares = torch.zeros((), dtype=torch.float64, device=device)
    for p in owned:
        if p.grad is not None:
            squares += p.grad.detach().double().pow(2).sum()
    dist.all_reduce(squares)
    norm = float(squares.sqrt())
    if max_norm > 0 and norm > max_norm:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(max_norm / (norm + 1e-6))
    return norm
