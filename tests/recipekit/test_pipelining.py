"""recipekit.pipelining: balanced stages that, put together, are the model they were cut from."""

from __future__ import annotations

import pytest

from recipekit import pipelining


def test_stages_are_contiguous_and_balance_the_slowest_one():
    assert pipelining.split_layers(30, 2, head_cost=0.0) == [15, 15]
    assert pipelining.split_layers(30, 2, head_cost=4.0) == [17, 13]  # the last stage also runs the LM head
    assert pipelining.split_layers(5, 5, head_cost=10.0) == [1, 1, 1, 1, 1]
    assert sum(pipelining.split_layers(7, 3, head_cost=1.5)) == 7


def test_two_stages_in_a_row_compute_the_whole_models_logits(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    from recipekit import models

    lm = AutoModelForCausalLM.from_pretrained(models.resolve(tiny_model), dtype=torch.float32)
    ids = torch.randint(3, 1000, (2, 9))
    with torch.no_grad():
        expected = lm(input_ids=ids).logits
        first, last = pipelining.Stage(lm, 0, 1, True, False), pipelining.Stage(lm, 1, 2, False, True)
        assert torch.allclose(last(first(ids)), expected, atol=1e-5)
    assert {n for n, _ in first.named_parameters()} | {n for n, _ in last.named_parameters()} >= {
        n for n, _ in lm.named_parameters()}  # named as in the full model, so checkpoints and LR rules apply


def test_microbatch_losses_add_up_to_the_token_mean():
    import torch

    from recipekit import loop

    torch.manual_seed(0)
    logits, labels = torch.randn(4, 6, 11), torch.randint(0, 11, (4, 6))
    labels[:, :2] = -100
    loss = pipelining.TokenMeanLoss()
    loss.denominator = loop.label_tokens(labels)
    parts = sum(loss(logits[i:i + 2], labels[i:i + 2]) for i in (0, 2))
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    assert float(parts) == pytest.approx(float(expected), rel=1e-6)
