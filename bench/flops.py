"""Model FLOPs and MFU, with the conventions stated once.

Full fine-tuning, as torchtitan counts it: every trained token costs 6·N FLOPs (forward 2·N,
backward 4·N), where N is the parameter count without the embedding table (a tied LM head is
counted: it is still a matmul on every token), plus the attention term 12·L·H·Q·T per token
(L layers, H heads, Q head dim, T the length of the sequence the token attends within; the full
T×T score matrix, no causal halving). Packed and padded batches are counted per document, so
padding and cross-document attention that a mask throws away are never credited.

LoRA, as NeMo AutoModel counts it: the frozen weights still cost the forward and the backward
to the activations but no weight gradient, so the full-FT FLOPs are scaled by
(2 + trainable/frozen) / 3.
"""

from __future__ import annotations

from typing import Any

# Dense bf16 peak TFLOP/s (no sparsity), matched against torch.cuda.get_device_name(), first hit wins.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4), ("B200", 2250.0),
    ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
)


def peak_tflops(device_name: str | None) -> float | None:
    if not device_name:
        return None
    for needle, tflops in PEAK_BF16_TFLOPS:
        if needle in device_name:
            return tflops
    return None


def dense_params(shape: dict[str, Any]) -> int:
    return shape["params_total"] - shape["params_embedding"] + shape["params_tied_lm_head"]


def lora_factor(shape: dict[str, Any]) -> float:
    trainable = shape["params_trainable"]
    frozen = shape["params_total"] - trainable
    return (2 + trainable / frozen) / 3


def model_flops(shape: dict[str, Any], tokens: int, doc_len_sq: int, lora: bool) -> float:
    """Training FLOPs for ``tokens`` tokens whose documents' squared lengths sum to ``doc_len_sq``."""
    attention_per_len = 12 * shape["num_layers"] * shape["num_heads"] * shape["head_dim"]
    flops = 6 * dense_params(shape) * tokens + attention_per_len * doc_len_sq
    return flops * lora_factor(shape) if lora else flops


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Fraction of the device's peak, or None when the peak is unknown (CPUs)."""
    if not peak or seconds <= 0:
        return None
    return flops / seconds / (peak * 1e12)
