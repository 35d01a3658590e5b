"""bench/matmul.py: the shapes are the model's, the limit is the step's FLOPs over the measured times."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench import matmul

SMOL = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                       num_key_value_heads=3, head_dim=64, vocab_size=49152)


def test_weight_shapes_cover_every_linear_weight_of_the_decoder_once():
    shapes = matmul.weight_shapes(SMOL)
    assert shapes["hidden x intermediate"] == (576, 1536, 60) and shapes["intermediate x hidden"] == (1536, 576, 30)
    assert shapes["hidden x vocabulary"] == (576, 49152, 1) and shapes["hidden x kv"] == (576, 192, 60)
    assert shapes["hidden x q"] == (576, 576, 60) and "q x hidden" not in shapes  # q and o are both 576 x 576
    per_layer = 576 * 576 * 2 + 576 * 192 * 2 + 576 * 1536 * 3
    assert sum(i * o * n for i, o, n in shapes.values()) == 30 * per_layer + 576 * 49152


def test_operands_have_the_shapes_autograd_multiplies():
    import torch

    for orientation, expected in (("forward", (5, 3)), ("grad_input", (5, 2)), ("grad_weight", (3, 2))):
        a, b = matmul.operands(5, 2, 3, orientation, torch.float32)
        assert torch.matmul(a, b).shape == expected  # (rows, out), (rows, in), (out, in)


def test_limits_are_the_flops_over_the_summed_times_and_frozen_leaves_out_weight_gradients():
    def timing(orientation, seconds, count=1, dtype="bfloat16", kernel="matmul"):
        return dict(dtype=dtype, shape="hidden x q", orientation=orientation, kernel=kernel, seconds=seconds,
                    count=count, tflops=4.0 / seconds)

    timings = [timing("forward", 1.0, count=2), timing("grad_input", 1.0, count=2), timing("grad_weight", 2.0, count=2),
               timing("forward", 2.0, dtype="float32"), timing("grad_input", 2.0, dtype="float32"),
               timing("grad_weight", 2.0, dtype="float32")]
    limits = matmul.limits(timings)
    assert limits["bfloat16"]["full"] == pytest.approx(3 * 2 * 4.0 / (2 * 4.0))
    assert limits["bfloat16"]["frozen"] == pytest.approx(2 * 2 * 4.0 / (2 * 2.0))
    assert limits["float32"] == {"full": pytest.approx(2.0), "frozen": pytest.approx(2.0)}
    # A frozen weight may be packed once, so "frozen" takes each matmul's faster kernel; a trained one
    # changes every step, so "full" keeps torch.matmul's time.
    packed = [timing(orientation, 0.5, count=2, kernel="packed") for orientation in ("forward", "grad_input")]
    with_packed = matmul.limits(timings + packed)
    assert with_packed["bfloat16"]["frozen"] == pytest.approx(2 * 2 * 4.0 / (2 * 2 * 0.5))
    assert with_packed["bfloat16"]["full"] == limits["bfloat16"]["full"]
    slower = [timing(orientation, 3.0, count=2, kernel="packed") for orientation in ("forward", "grad_input")]
    assert matmul.limits(timings + slower) == limits
    row = {"limits_tflops": limits}
    assert matmul.limit_for(row, bf16=True, lora=True) == limits["bfloat16"]["frozen"]
    assert matmul.limit_for(row, bf16=False, lora=False) == limits["float32"]["full"]
    assert matmul.limit_for(None, bf16=True, lora=True) is None


def test_the_packed_kernel_computes_each_timed_product():
    import torch

    from recipekit.cpu_speedups import packed_frozen_linear, packs_weights

    checked = 0
    for dtype, tolerance in ((torch.bfloat16, 1e-2), (torch.float32, 1e-5)):
        if not packs_weights(dtype):
            continue
        for orientation in ("forward", "grad_input"):
            a, b = matmul.operands(8, 16, 24, orientation, dtype)
            packed = torch.ops.mkldnn._reorder_linear_weight(b.t().contiguous(), 8)
            got = packed_frozen_linear().apply(a, packed, packed, None)
            torch.testing.assert_close(got.float(), torch.matmul(a, b).float(), rtol=tolerance, atol=tolerance)
            checked += 1
    if not checked:
        pytest.skip("this torch build has no oneDNN packed linear")


def test_measure_times_every_shape_orientation_and_dtype_for_real():
    tiny = SimpleNamespace(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=8, vocab_size=100)
    import torch

    from recipekit.cpu_speedups import packs_weights

    record = matmul.measure(tiny, rows=16, repeats=1)
    shapes = len(matmul.weight_shapes(tiny))
    packed = [t for t in record["timings"] if t["kernel"] == "packed"]
    assert len(record["timings"]) == shapes * 3 * 2 + len(packed)
    for dtype in ("bfloat16", "float32"):  # the forward and the gradient to the input of every shape, packed
        timed = sorted((t["shape"], t["orientation"]) for t in packed if t["dtype"] == dtype)
        every = sorted((name, orientation) for name in matmul.weight_shapes(tiny)
                       for orientation in ("forward", "grad_input"))
        assert timed == (every if packs_weights(getattr(torch, dtype)) else [])
    assert all(t["seconds"] > 0 and t["tflops"] > 0 for t in record["timings"])
    assert set(record["limits_tflops"]) == {"bfloat16", "float32"} and record["rows"] == 16
