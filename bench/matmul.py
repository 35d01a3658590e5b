"""The machine's own limit for the benchmark's model: dense matmul throughput at the model's matrix shapes.

    python -m bench.matmul MODEL_DIR ROWS        # writes JSON to $BENCH_PROBE_OUT (the runner sets it)

A training step of a decoder is, FLOP for FLOP, almost all matmuls of a (tokens x hidden)
activation with the model's weights: per layer the attention projections (hidden x heads·head_dim,
hidden x kv_heads·head_dim) and the MLP (hidden x intermediate, three of them), and once per step
the LM head (hidden x vocabulary). Each weight takes part in three matmuls of 2·rows·in·out FLOPs:
the forward, the gradient to the activations and the gradient to the weight (none for a frozen
weight under LoRA). Each of these is timed here in bf16 and in float32 with ``rows`` rows (the
tokens of one micro-batch), best of ``REPEATS`` (the least disturbed by other load), and the limit
is the step's matmul FLOPs over the sum of their times: what the model's FLOPs would run at if
nothing but these matmuls took time. A frozen weight never changes, so it can be held in oneDNN's
blocked layout once (``recipekit.cpu_speedups``' packed frozen weights): where this CPU and torch
build run that kernel, the forward and the gradient to the input are also timed with a packed
weight, and the "frozen" limit takes the faster of the two kernels. The "full" limit does not: a
trained weight changes every step and would have to be packed again. Rows of the benchmark divide
their model FLOP/s (bench/flops.py) by it: the CPU MFU.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPEATS = 5
DTYPES = ("bfloat16", "float32")
ORIENTATIONS = ("forward", "grad_input", "grad_weight")


def weight_shapes(config) -> dict[str, tuple[int, int, int]]:
    """(in, out, how many per step) of each distinct weight matrix of a decoder-only model's config."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    shapes = {"hidden x q": (hidden, q, layers), "q x hidden": (q, hidden, layers),
              "hidden x kv": (hidden, kv, 2 * layers), "hidden x intermediate": (hidden, config.intermediate_size,
                                                                                  2 * layers),
              "intermediate x hidden": (config.intermediate_size, hidden, layers),
              "hidden x vocabulary": (hidden, config.vocab_size, 1)}
    if q == hidden:  # one shape, counted once with both weights
        shapes["hidden x q"] = (hidden, q, 2 * layers)
        del shapes["q x hidden"]
    return shapes


def operands(rows: int, fan_in: int, fan_out: int, orientation: str, dtype):
    """The two operands of one of a linear layer's three training matmuls, laid out as autograd has them."""
    import torch

    x, w, dy = (torch.randn(rows, fan_in, dtype=dtype), torch.randn(fan_out, fan_in, dtype=dtype),
                torch.randn(rows, fan_out, dtype=dtype))
    if orientation == "forward":
        return x, w.t()  # x @ W^T
    if orientation == "grad_input":
        return dy, w  # dY @ W
    return dy.t(), x  # dY^T @ x


def best_seconds(a, b, repeats: int) -> float:
    import torch

    return best_of(lambda: torch.matmul(a, b), repeats)


def packed_seconds(a, b, repeats: int) -> float:
    """``a @ b`` (the forward or the gradient to the input) with ``b``, the weight, packed beforehand, as a
    frozen weight is kept."""
    import torch

    from recipekit.cpu_speedups import packed_frozen_linear

    packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), a.shape[0])  # linear(a, W) is a @ W^T
    linear = packed_frozen_linear()
    return best_of(lambda: linear.apply(a, packed, packed, None), repeats)


def best_of(call, repeats: int) -> float:
    call()  # warm-up: the kernel's first call may pack or dispatch
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def measure(config, rows: int, repeats: int = REPEATS) -> dict[str, Any]:
    """Every shape x orientation x dtype timed (and the frozen weights' two orientations packed, where they can
    be); the limits for full fine-tuning and for frozen weights (LoRA)."""
    import torch

    from recipekit.cpu_speedups import packs_weights

    shapes = weight_shapes(config)
    timings = []
    for dtype_name in DTYPES:
        dtype = getattr(torch, dtype_name)
        for name, (fan_in, fan_out, count) in shapes.items():
            for orientation in ORIENTATIONS:
                a, b = operands(rows, fan_in, fan_out, orientation, dtype)
                kernels = {"matmul": best_seconds(a, b, repeats)}
                if orientation != "grad_weight" and packs_weights(dtype):
                    kernels["packed"] = packed_seconds(a, b, repeats)
                for kernel, seconds in kernels.items():
                    timings.append(dict(dtype=dtype_name, shape=name, fan_in=fan_in, fan_out=fan_out, count=count,
                                        orientation=orientation, kernel=kernel, seconds=seconds,
                                        tflops=2 * rows * fan_in * fan_out / seconds / 1e12))
    return {"rows": rows, "repeats": repeats, "threads": torch.get_num_threads(), "timings": timings,
            "limits_tflops": limits(timings)}


def limits(timings: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{dtype: {"full": TFLOP/s, "frozen": TFLOP/s}}: a step's matmul FLOPs over their summed best times;
    "frozen" leaves out the weight gradients (LoRA's frozen weights) and takes each matmul's faster kernel,
    "full" only torch.matmul's."""
    fastest: dict[tuple, dict[str, Any]] = {}
    for t in timings:
        key = (t["dtype"], t["shape"], t["orientation"])
        if key not in fastest or t["seconds"] < fastest[key]["seconds"]:
            fastest[key] = t
    out: dict[str, dict[str, float]] = {}
    for dtype in {t["dtype"] for t in timings}:
        out[dtype] = {}
        for kind, orientations in (("full", ORIENTATIONS), ("frozen", ORIENTATIONS[:2])):
            kept = (fastest.values() if kind == "frozen"
                    else [t for t in timings if t["kernel"] == "matmul"])
            picked = [t for t in kept if t["dtype"] == dtype and t["orientation"] in orientations]
            work = sum(t["count"] * t["tflops"] * t["seconds"] for t in picked)
            seconds = sum(t["count"] * t["seconds"] for t in picked)
            out[dtype][kind] = work / seconds
    return out


def limit_for(limit_row: dict[str, Any] | None, bf16: bool, lora: bool) -> float | None:
    """The limit (TFLOP/s) that a training row is measured against: its precision, its kind of weights."""
    if not limit_row:
        return None
    return limit_row["limits_tflops"]["bfloat16" if bf16 else "float32"]["frozen" if lora else "full"]


def main(argv: list[str]) -> int:
    from transformers import AutoConfig

    from bench.run import OUT_ENV

    model, rows = argv
    config = AutoConfig.from_pretrained(model)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    record = measure(config, int(rows))
    record["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(os.environ[OUT_ENV]).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
