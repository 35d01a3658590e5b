"""recipekit.hf's CPU fast paths give the same numbers as the stock code they replace."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from recipekit import hf


@pytest.fixture
def tiny(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    from recipekit import models

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(models.resolve(tiny_model), attn_implementation="sdpa",
                                                dtype=torch.float32)


@pytest.fixture
def stock_sdpa(monkeypatch):
    """Put the stock SDPA back after the test (use_document_attention changes it process-wide)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", sdpa_attention_forward)


def packed_batch(lengths=(7, 12, 5), vocab=1000):
    """One padding-free row of three documents, as TRL's packing collator builds it."""
    import torch

    ids = torch.randint(3, vocab, (1, sum(lengths)))
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    labels = ids.clone()
    start = 0
    for n in lengths:  # the first half of each document is prompt
        labels[0, start:start + n // 2] = -100
        start += n
    return {"input_ids": ids, "position_ids": positions, "use_cache": False}, labels  # as TRL's trainer calls it


def forward_and_grads(model, inputs):
    model.zero_grad()
    logits = model(**inputs).logits
    (logits.float() ** 2).mean().backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_document_attention_matches_the_packed_mask(tiny, stock_sdpa):
    import torch

    inputs, _ = packed_batch()
    stock_logits, stock_grads = forward_and_grads(tiny, inputs)
    hf.use_document_attention()
    logits, grads = forward_and_grads(tiny, inputs)
    from transformers import AttentionInterface

    assert AttentionInterface._global_mapping["sdpa"]._last[2] == [0, 7, 19, 24]  # the per-document path ran
    assert torch.allclose(logits, stock_logits, atol=1e-5)
    assert len(grads) == len(stock_grads) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, stock_grads))

    # The other tokens of a document really are invisible: changing document 1 leaves document 2 alone.
    changed = {**inputs, "input_ids": inputs["input_ids"].clone()}
    changed["input_ids"][0, :7] = 3
    assert torch.allclose(tiny(**changed).logits[0, 7:], logits[0, 7:], atol=1e-5)
    assert not torch.allclose(tiny(**changed).logits[0, :7], logits[0, :7], atol=1e-3)


def test_document_attention_leaves_padded_batches_and_generation_alone(tiny, stock_sdpa):
    import torch

    ids = torch.randint(3, 1000, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    stock = tiny(input_ids=ids, attention_mask=mask).logits
    stock_reply = tiny.generate(ids[:1], max_new_tokens=4, do_sample=False)
    hf.use_document_attention()
    assert torch.allclose(tiny(input_ids=ids, attention_mask=mask).logits, stock, atol=1e-6)
    assert torch.equal(tiny.generate(ids[:1], max_new_tokens=4, do_sample=False), stock_reply)


@pytest.mark.parametrize("num_items", [None, 11])
def test_loss_on_trained_positions_matches_the_model_loss(tiny, num_items):
    import torch

    inputs, labels = packed_batch()
    n = None if num_items is None else torch.tensor(num_items)
    tiny.zero_grad()
    expected = tiny(**inputs, labels=labels, num_items_in_batch=n).loss
    expected.backward()
    expected_grads = [p.grad.clone() for p in tiny.parameters()]

    trainer = SimpleNamespace(model_accepts_loss_kwargs=True, args=SimpleNamespace(average_tokens_across_devices=False))
    tiny.zero_grad()
    loss = hf.PlainLossOnCPUMixin._loss_on_trained_positions(trainer, tiny, {**inputs, "labels": labels}, n)
    loss.backward()
    assert torch.allclose(loss, expected, atol=1e-6)
    assert all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(tiny.parameters(), expected_grads))
