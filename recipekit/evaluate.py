"""Evaluation: the held-out answer hit rate (does the greedy reply contain the fact's key value?), and
the evaluation before training, which runs inside ``train()`` and is kept in the log history."""

from __future__ import annotations

from typing import Any

from recipekit import cpu_speedups


def generate_replies(model, tokenizer, conversations: list[list[dict[str, str]] | str], max_new_tokens: int = 48,
                     batch_tokens: int = 8192, dtype=None) -> list[str]:
    """Greedy replies to each conversation (through the chat template) or prompt string (as it is), under
    autocast to ``dtype`` if given.

    Prompts are batched shortest first, as many per batch as fit ``batch_tokens`` (prompt and reply
    tokens, padding included): fewer, larger batches are faster on CPU, and sorting keeps the left
    padding small.
    """
    import torch

    encoded = [prompt_ids(tokenizer, c) for c in conversations]
    lengths = [len(ids) for ids in encoded]
    order = sorted(range(len(encoded)), key=lengths.__getitem__)
    low_precision = dtype not in (None, torch.float32)
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    replies: dict[int, str] = {}
    try:
        with torch.no_grad(), torch.autocast(model.device.type, dtype=dtype, enabled=low_precision), \
                cpu_speedups.cached_weight_casts(model, low_precision):
            for batch_rows in token_budget_batches(order, lengths, max_new_tokens, batch_tokens):
                batch = tokenizer.pad({"input_ids": [encoded[i] for i in batch_rows]},
                                      return_tensors="pt").to(model.device)
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
                texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
                replies.update(zip(batch_rows, texts))
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return [replies[i] for i in range(len(encoded))]


def prompt_ids(tokenizer, prompt: list[dict[str, str]] | str) -> list[int]:
    """A conversation through the chat template (with the generation prompt), or a prompt string as it is."""
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def token_budget_batches(order: list[int], lengths: list[int], max_new_tokens: int,
                         batch_tokens: int) -> list[list[int]]:
    """Split ``order`` (indices, shortest prompt first) into batches whose padded size fits the budget.

    A batch's size is its row count times its longest prompt plus ``max_new_tokens``; a row too
    long for the budget on its own still gets a batch of one.
    """
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * (lengths[i] + max_new_tokens) <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def answer_hit_rate(model, tokenizer, rows: list[dict[str, Any]], max_new_tokens: int = 48, dtype=None,
                    metric: str = "contains") -> tuple[float, list[dict[str, Any]]]:
    """The mean score of the greedy replies to ``row["prompt"]`` (a conversation or a string) against
    ``row["answer"]``, and the details. ``contains``: 1 if the reply contains the answer (case-insensitive),
    else 0; ``token_f1``: the F1 of the words they share."""
    replies = generate_replies(model, tokenizer, [row["prompt"] for row in rows], max_new_tokens, dtype=dtype)
    score = contains if metric == "contains" else token_f1
    details = [{"question": row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][-1]["content"],
                "expected": str(row["answer"]), "reply": reply.strip(), "score": score(reply, str(row["answer"]))}
               for row, reply in zip(rows, replies)]
    rate = sum(d["score"] for d in details) / len(details) if details else 0.0
    return rate, details


def contains(reply: str, answer: str) -> float:
    return float(answer.lower() in reply.lower())


def words(text: str) -> list[str]:
    """Lower-case words with punctuation and the articles a, an, the left out."""
    kept = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in text.lower())
    return [word for word in kept.split() if word not in ("a", "an", "the")]


def token_f1(reply: str, answer: str) -> float:
    """F1 of the words the reply and the answer share (each shared word counted as often as both have it)."""
    from collections import Counter

    got, want = Counter(words(reply)), Counter(words(answer))
    shared = sum((got & want).values())
    if shared == 0:
        return float(not got and not want)
    precision, recall = shared / sum(got.values()), shared / sum(want.values())
    return 2 * precision * recall / (precision + recall)


def evaluate_when_training_starts(trainer, enabled: bool) -> None:
    """Have ``trainer.train()`` evaluate before its first step; the result is logged at step 0 and,
    being in the log history, kept in every checkpoint (see ``starting_eval``).

    Never ``trainer.evaluate()`` before ``train()``: accelerate then prepares the model for evaluation
    only and marks it prepared, so ``train()`` skips wrapping it in DistributedDataParallel and each
    rank trains its own replica on its own shard. ``eval_on_start`` evaluates inside ``train()``, after
    the model is wrapped (under DeepSpeed, after its engine is built).
    """
    trainer.args.eval_on_start = enabled


def starting_eval(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """The evaluation logged at step 0, by this run or by the one a resumed run continues; {} if none."""
    return next((row for row in log_history if row.get("step") == 0 and "eval_loss" in row), {})


def training_runtime(train_metrics: dict[str, Any], log_history: list[dict[str, Any]],
                     evaluated_at_start: bool) -> float | None:
    """Seconds ``train()`` spent training, without the evaluation it ran before the first step."""
    runtime = train_metrics.get("train_runtime")
    if runtime is not None and evaluated_at_start:
        runtime -= starting_eval(log_history).get("eval_runtime", 0.0)
    return None if runtime is None else round(runtime, 3)


def keep_in_history(row: dict):
    """A callback that puts the pre-training eval (``row``, filled in later) at the top of the log history,
    so it is saved in every checkpoint and a resumed run can still report it."""
    from transformers import TrainerCallback

    class KeepEvalBefore(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if row and state.global_step == 0 and row not in state.log_history:
                state.log_history.insert(0, dict(row))

    return KeepEvalBefore()
