"""recipekit.evaluate: greedy replies batched by a token budget, returned in the caller's order."""

from __future__ import annotations

import pytest

from recipekit import evaluate


def test_batches_fill_the_budget_shortest_first():
    lengths = [30, 10, 20, 10, 40]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)  # [1, 3, 2, 0, 4]
    # With 10 new tokens: three rows of 20 fit 90 tokens; the 30-token row would make 4 x 40.
    assert evaluate.token_budget_batches(order, lengths, 10, 90) == [[1, 3, 2], [0], [4]]
    assert evaluate.token_budget_batches(order, lengths, 10, 10_000) == [order]


def test_a_row_longer_than_the_budget_gets_a_batch_of_its_own():
    assert evaluate.token_budget_batches([0, 1], [5, 500], 8, 64) == [[0], [1]]


@pytest.fixture(scope="module")
def tiny_chat(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipekit import models

    path = models.resolve(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():  # larger random weights, so that the reply depends on the prompt
        for param in model.parameters():
            param.normal_(std=1.0)
    return model, AutoTokenizer.from_pretrained(path)


def test_replies_come_back_in_the_order_asked(tiny_chat):
    """Batched (sorted, left-padded) generation gives each conversation the reply it gets alone."""
    model, tokenizer = tiny_chat
    questions = ["When does the restaurant open for dinner on Sundays?", "Wi-Fi?", "Is parking free?"]
    conversations = [[{"role": "user", "content": q}] for q in questions]
    alone = [evaluate.generate_replies(model, tokenizer, [c], max_new_tokens=6)[0] for c in conversations]
    batched = evaluate.generate_replies(model, tokenizer, conversations, max_new_tokens=6)
    assert batched == alone
    assert len(set(alone)) == len(alone)  # distinct replies, so a reordering would show


def test_cached_weight_casts_leave_the_replies_and_the_frozen_flags_as_they_were(tiny_chat, monkeypatch):
    import torch

    from recipekit import cpu_speedups

    model, tokenizer = tiny_chat
    conversations = [[{"role": "user", "content": "Is breakfast included?"}]]
    head = model.get_output_embeddings().weight
    model.requires_grad_(False)
    head.requires_grad_(True)  # a trained weight among frozen ones, as with a LoRA base
    try:
        with cpu_speedups.cached_weight_casts(model, low_precision=True):
            assert all(p.requires_grad for p in model.parameters())
        assert [p.requires_grad for p in model.parameters()].count(True) == 1 and head.requires_grad
        replies = evaluate.generate_replies(model, tokenizer, conversations, max_new_tokens=6, dtype=torch.bfloat16)
        monkeypatch.setattr(cpu_speedups, "switched_off", {"cached_weight_casts"})
        uncached = evaluate.generate_replies(model, tokenizer, conversations, max_new_tokens=6, dtype=torch.bfloat16)
    finally:
        model.requires_grad_(True)
    assert replies == uncached


def test_token_f1_scores_the_words_shared_with_the_reference():
    # check out is at 11 00 / check out 11 00: precision 4/6, recall 4/4
    assert evaluate.token_f1("Check-out is at 11:00.", "check-out: 11:00") == pytest.approx(0.8)
    assert evaluate.token_f1("The garage.", "a garage") == 1.0  # articles and punctuation do not count
    assert evaluate.token_f1("No idea", "11:00") == 0.0
    assert evaluate.contains("Check-out is at 11:00.", "11:00") == 1.0


def test_the_metric_decides_how_a_reply_is_scored(tiny_chat):
    """Against a reference sharing half its words with the real reply: contains gives 0, token_f1 a part."""
    model, tokenizer = tiny_chat
    ask = [{"role": "user", "content": "Is parking free?"}]
    (reply,) = evaluate.generate_replies(model, tokenizer, [ask], max_new_tokens=8)
    kept = evaluate.words(reply)[:2]
    assert len(kept) == 2, reply
    rows = [{"prompt": ask, "answer": " ".join(kept + ["zzzunseen", "qqqother"])}]
    contains, _ = evaluate.answer_hit_rate(model, tokenizer, rows, max_new_tokens=8)
    f1, details = evaluate.answer_hit_rate(model, tokenizer, rows, max_new_tokens=8, metric="token_f1")
    assert contains == 0.0 and 0.0 < f1 < 1.0 and details[0]["reply"] == reply.strip()
    # A prompt string is used as it is, without the chat template.
    (raw,) = evaluate.generate_replies(model, tokenizer, ["Q: Is parking free?\nA:"], max_new_tokens=8)
    assert raw != reply
