"""What per-document attention buys: one attention layer's forward and backward on a packed row.

    python -m bench.attention        # SmolLM2-135M on hotel-sized documents

Two measurements per row length: one attention layer alone (forward and backward, best of
REPEATS, the least disturbed by other load), and a whole training step of the model with each
attention, run in back-to-back pairs so that other load slows both sides of a pair alike (the
median ratio). Each row is filled with documents of the lengths the hotel data has after the chat
template, cycled in file order, as TRL's padding-free packing lays them out in one row; documents
this short take ``recipekit.cpu_speedups.PaddedDocuments`` (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOTEL_TRAIN = REPO / "recipekit" / "datasets" / "hotel" / "train.jsonl"
MODEL = "smollm2-135m-instruct"
ROW_LENGTHS = (256, 512, 1024, 2048)  # one padding-free row: batch_size x seq_length at most
REPEATS = 5
PAIRS = 5


def hotel_lengths(tokenizer) -> list[int]:
    rows = [json.loads(line) for line in HOTEL_TRAIN.read_text().splitlines() if line.strip()]
    return [len(tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"])
            for row in rows]


def packed_positions(row_length: int, lengths: list[int]):
    """Position ids of one row of ``row_length`` tokens holding whole documents of ``lengths`` (cycled)."""
    import torch

    pieces, used, index = [], 0, 0
    while used < row_length:
        n = min(lengths[index % len(lengths)], row_length - used)
        pieces.append(torch.arange(n))
        used, index = used + n, index + 1
    return torch.cat(pieces)[None]


def block_mask(positions):
    """The packed-documents mask transformers builds for SDPA: causal within each document."""
    import torch

    document = torch.cumsum((positions[0] == 0).long(), 0)
    return (document[:, None] == document[None, :]).tril()[None, None]


def time_layer(attention, module, shape: dict, positions, repeats: int) -> float:
    import torch

    heads, kv_heads, head_dim = shape["heads"], shape["kv_heads"], shape["head_dim"]
    length = positions.shape[-1]
    mask = block_mask(positions)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        q = torch.randn(1, heads, length, head_dim, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(1, kv_heads, length, head_dim, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(1, kv_heads, length, head_dim, dtype=torch.bfloat16, requires_grad=True)
        started = time.perf_counter()
        out, _ = attention(module, q, k, v, mask, dropout=0.0, scaling=head_dim ** -0.5, position_ids=positions)
        out.float().sum().backward()
        best = min(best, time.perf_counter() - started)
    return best


def step_ratios(model, positions, per_document, pairs: int) -> list[float]:
    """Per-document / block-mask time of one whole forward and backward of ``model`` (bf16 autocast), the
    two run back to back ``pairs`` times, so that other load slows both sides of a pair alike."""
    import torch
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    ids = torch.randint(3, model.config.vocab_size, positions.shape)

    def one_step(attention) -> float:
        AttentionInterface.register("sdpa", attention)
        model.zero_grad(set_to_none=True)
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids, position_ids=positions, use_cache=False).logits
        logits.float().mean().backward()
        return time.perf_counter() - started

    one_step(sdpa_attention_forward), one_step(per_document)  # warm-up
    try:
        return [one_step(per_document) / one_step(sdpa_attention_forward) for _ in range(pairs)]
    finally:
        AttentionInterface.register("sdpa", sdpa_attention_forward)


def main() -> int:
    import statistics

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from recipekit import cpu_speedups, models

    path = models.resolve(MODEL)
    config = AutoConfig.from_pretrained(path)
    shape = dict(heads=config.num_attention_heads, kv_heads=config.num_key_value_heads,
                 head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    lengths = hotel_lengths(AutoTokenizer.from_pretrained(path))
    module = torch.nn.Module()
    module.num_key_value_groups = shape["heads"] // shape["kv_heads"]
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa", dtype=torch.float32)
    per_document = cpu_speedups.DocumentAttention(sdpa_attention_forward, min_row_length=0)
    print(f"{MODEL}: {shape}, documents of {min(lengths)}-{max(lengths)} tokens (mean "
          f"{sum(lengths) / len(lengths):.0f}), {torch.get_num_threads()} threads")
    print(f"| row length | one layer, block mask | one layer, per document | ratio (best of {REPEATS}) "
          f"| training step ratio (median of {PAIRS} pairs) |")
    print("|---:|---:|---:|---:|---:|")
    for row_length in ROW_LENGTHS:
        positions = packed_positions(row_length, lengths)
        stock = time_layer(sdpa_attention_forward, module, shape, positions, REPEATS)
        ours = time_layer(per_document, module, shape, positions, REPEATS)
        step = statistics.median(step_ratios(model, positions, per_document, PAIRS))
        print(f"| {row_length} | {1e3 * stock:.2f} ms | {1e3 * ours:.2f} ms | {ours / stock:.2f} | {step:.2f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
