"""Held-out answer hit rate: does the greedy reply contain the fact's key value?"""

from __future__ import annotations

from typing import Any


def generate_replies(model, tokenizer, conversations: list[list[dict[str, str]]], max_new_tokens: int = 48,
                     batch_size: int = 40, dtype=None) -> list[str]:
    """Greedy replies to each conversation (left-padded batches), under autocast to ``dtype`` if given."""
    import torch

    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    replies: list[str] = []
    try:
        for start in range(0, len(conversations), batch_size):
            prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                       for c in conversations[start:start + batch_size]]
            batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            autocast = torch.autocast(model.device.type, dtype=dtype, enabled=dtype not in (None, torch.float32))
            with torch.no_grad(), autocast:
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            replies += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return replies


def answer_hit_rate(model, tokenizer, rows: list[dict[str, Any]], messages_field: str, answer_field: str,
                    max_new_tokens: int = 48, dtype=None) -> tuple[float, list[dict[str, Any]]]:
    """Fraction of rows whose reply contains ``row[answer_field]`` (case-insensitive), and the details."""
    conversations = [row[messages_field][:-1] if row[messages_field][-1]["role"] == "assistant"
                     else row[messages_field] for row in rows]
    replies = generate_replies(model, tokenizer, conversations, max_new_tokens, dtype=dtype)
    details = [{"question": conv[-1]["content"], "expected": str(row[answer_field]), "reply": reply.strip(),
                "hit": str(row[answer_field]).lower() in reply.lower()}
               for conv, row, reply in zip(conversations, rows, replies)]
    rate = sum(d["hit"] for d in details) / len(details) if details else 0.0
    return rate, details
