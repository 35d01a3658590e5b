"""Chat/text SFT data shared by the SFT-style recipes (sft, sft-zero2, sft-fsdp, pipeline-parallel, optuna).

Loads and checks the train/eval splits before any model is loaded, converts chat rows into
TRL's prompt/completion format, tokenizes them for recipes with their own training loop, and
measures the held-out answer hit rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from recipekit import data, distributed, evaluate, lora
from recipekit.config import option
from recipekit.data import IGNORE_INDEX


@dataclass
class SFTDataOptions(data.DatasetOptions, data.TextColumnOption):
    dataset_text_field: str = option("messages", help="column holding chat messages or plain text")
    eval_answer_field: Optional[str] = option("answer_key", help="eval column with a string the reply must "
                                              "contain (answer hit rate); null or absent = skip")
    eval_max_new_tokens: int = option(48, help="reply length for the answer hit rate", min=1, max=4096)
    seq_length: int = option(512, help="max tokens per example (longer ones are truncated)", min=8, max=1 << 20)
    packing: bool = option(True, help="padding-free batches: concatenate examples, no pad tokens")


@dataclass
class SFTData:
    train: Any
    eval: Any = None
    kind: str = "chat"  # "chat" (message lists, loss on the last reply) or "text" (loss on every token)
    hit_rows: list[dict[str, Any]] = field(default_factory=list)  # eval rows with an answer key


def load(opts: SFTDataOptions, token: str | None) -> SFTData:
    """Load and check the splits; every problem is a DataError naming the config key. The train split's
    first row says whether the data is chat or text; the eval split must be the same."""
    kinds: list[str] = []

    def check_messages_or_text(rows, name: str):
        kinds.append(kinds[0] if kinds else data.column_kind(rows, opts.dataset_text_field))
        check = data.require_chat_column if kinds[0] == "chat" else data.require_text_column
        check(rows, "dataset_text_field", opts.dataset_text_field, name)
        return rows

    train, evals = data.load_splits(opts, {"dataset_text_field": opts.dataset_text_field}, token,
                                    check_messages_or_text)
    kind = kinds[0]
    if evals is None:
        return SFTData(train=train, kind=kind)
    hit_rows = []
    if kind == "chat" and opts.eval_answer_field and opts.eval_answer_field in evals.column_names:
        hit_rows = evals.select_columns([opts.dataset_text_field, opts.eval_answer_field]).to_list()
    return SFTData(train=train, eval=evals, kind=kind, hit_rows=hit_rows)


def to_trl_format(dataset, opts: SFTDataOptions, kind: str):
    """Chat rows → prompt/completion (TRL then trains on the completion only); text rows → text."""
    if dataset is None:
        return None
    if kind == "chat":
        return data.chat_to_prompt_completion(dataset, opts.dataset_text_field)
    return data.text_only(dataset, opts.dataset_text_field)


def tokenize(dataset, tokenizer, opts: SFTDataOptions, kind: str):
    """Token ids and labels for recipes with their own loop: prompt tokens are labelled IGNORE_INDEX."""
    column = opts.dataset_text_field

    def encode(row):
        if kind == "text":
            ids = tokenizer(row[column], add_special_tokens=True)["input_ids"][:opts.seq_length]
            return {"input_ids": ids, "labels": list(ids)}
        messages = row[column]
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(full, add_special_tokens=False)["input_ids"][:opts.seq_length]
        labels = [IGNORE_INDEX] * min(len(prompt_ids), len(ids)) + ids[len(prompt_ids):]
        return {"input_ids": ids, "labels": labels}

    return dataset.map(encode, remove_columns=dataset.column_names)


def collate(rows: list[dict[str, list[int]]], pad_id: int, length: int | None = None) -> dict[str, Any]:
    """Right-pad a batch to its longest row (or to ``length``): input_ids, labels, attention_mask tensors."""
    import torch

    width = length or max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = min(len(row["input_ids"]), width)
        ids[i, :n] = torch.tensor(row["input_ids"][:n])
        labels[i, :n] = torch.tensor(row["labels"][:n])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def pack_items(rows, opts: SFTDataOptions) -> list[dict[str, list[int]]]:
    """Training units of tokenized rows for a hand-written loop: one example each, or (``packing``) whole
    examples concatenated up to ``seq_length`` tokens.

    Position ids restart at every example; with no attention mask the model then keeps attention
    inside each example. An example's first token is never a target (it would be predicted from
    the example before it).
    """
    items: list[dict[str, list[int]]] = []
    for row in rows:
        ids, labels = row["input_ids"], [IGNORE_INDEX] + row["labels"][1:]
        if not ids:
            continue
        last = items[-1] if items else None
        if opts.packing and last is not None and len(last["input_ids"]) + len(ids) <= opts.seq_length:
            last["input_ids"] += ids
            last["labels"] += labels
            last["position_ids"] += list(range(len(ids)))
        else:
            items.append({"input_ids": list(ids), "labels": labels, "position_ids": list(range(len(ids)))})
    return items


def collate_items(items: list[dict], pad_id: int, device) -> dict[str, Any]:
    """``pack_items`` items as right-padded tensors; the padding gets its own run of position ids so it
    attends only to itself."""
    import torch

    batch = collate(items, pad_id)
    width = batch["input_ids"].shape[1]
    positions = torch.arange(width).repeat(len(items), 1)
    for i, item in enumerate(items):
        n = len(item["position_ids"])
        positions[i, :n] = torch.tensor(item["position_ids"])
        positions[i, n:] = torch.arange(width - n)
    return {"input_ids": batch["input_ids"].to(device), "labels": batch["labels"].to(device),
            "position_ids": positions.to(device)}


def hit_rate(model, tokenizer, rows, opts: SFTDataOptions, model_opts, dtype, adapter: bool) -> float | None:
    """Answer hit rate on rank 0 (None elsewhere); ``adapter=False`` measures the base model."""
    if not rows or not distributed.is_main():
        return None
    with lora.generation_view(model, model_opts, adapter):
        rate, _ = evaluate.answer_hit_rate(model, tokenizer, rows, opts.dataset_text_field, opts.eval_answer_field,
                                           opts.eval_max_new_tokens, dtype=dtype)
    return rate


def print_summary(metrics: dict, output_dir: str) -> None:
    before, after = metrics.get("hit_rate_before"), metrics.get("hit_rate_after")
    if after is not None:
        shown = "n/a (resumed)" if before is None else f"{100 * before:.1f}%"
        print(f"held-out answer hit rate: before {shown} -> after {100 * after:.1f}%")
    if "eval_loss_after" in metrics:
        before = metrics.get("eval_loss_before")
        shown = "n/a" if before is None else f"{before:.4f}"
        print(f"eval loss: {shown} -> {metrics['eval_loss_after']:.4f}")
    print(f"outputs in {Path(output_dir).resolve()}")
    print(f'chat with it: launcher try {output_dir} --prompt "What time is check-out?"')
