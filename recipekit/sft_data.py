"""SFT data shared by the SFT-style recipes (sft, sft-zero2, sft-fsdp, pipeline-parallel, optuna).

Loads the train/eval splits in any format of ``recipekit.formats`` (messages, ShareGPT, Alpaca,
prompt/completion, text), checks and converts them before any model is loaded, hands them to TRL
(chat as prompt/completion message lists, completions as strings, text as text), tokenizes them
for recipes with their own training loop, and measures the held-out answer hit rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from recipekit import card, data, distributed, evaluate, formats, lora
from recipekit.config import option
from recipekit.data import IGNORE_INDEX
from recipekit.errors import DataError

ANSWER = "__answer__"  # the eval rows' reference answer, kept beside the converted columns


@dataclass
class SFTDataOptions(data.DatasetOptions, data.TextColumnOption):
    dataset_text_field: Optional[str] = option(None, help="column of chat messages or plain text (the messages "
                                               "and text formats); null = messages / text")
    dataset_format: formats.SFTFormat = option("auto", help="auto (from the columns), messages, sharegpt, alpaca, "
                                               "prompt_completion or text")
    dataset_columns: dict[str, str] = option(default_factory=dict, help="role -> column for other column names, "
                                             "e.g. {instruction: question, output: answer}")
    eval_answer_field: Optional[str] = option("answer_key", help="eval column with the reference answer "
                                              "(answer hit rate); null or absent = skip")
    eval_answer_metric: Literal["contains", "token_f1"] = option(
        "contains", help="contains: the reply contains the reference; token_f1: word overlap with it (F1)")
    eval_max_new_tokens: int = option(48, help="reply length for the answer hit rate", min=1, max=4096)
    seq_length: int = option(512, help="max tokens per example (longer ones are truncated)", min=8, max=1 << 20)
    packing: bool = option(True, help="padding-free batches: concatenate examples, no pad tokens")

    def check_data(self) -> list[str]:
        problems = super().check_data() + formats.check_columns_option(self.dataset_columns)
        if self.dataset_text_field is not None:
            if not self.dataset_text_field.strip():
                problems.append("dataset_text_field: must not be empty; null = the format's own column")
            if self.dataset_format not in ("auto", "messages", "text"):
                problems.append(f"dataset_text_field: names the messages or text column; for dataset_format: "
                                f"{self.dataset_format} name columns with dataset_columns (or set it to null)")
            both = sorted({"messages", "text"} & set(self.dataset_columns))
            if both:
                problems.append(f"dataset_text_field: dataset_columns names the {' and '.join(both)} column too; "
                                "use one of them")
        return problems

    def column_names(self) -> dict[str, str]:
        """role -> column: dataset_columns, with dataset_text_field naming the messages and text columns."""
        names = dict(self.dataset_columns)
        if self.dataset_text_field is not None:
            names.update(messages=self.dataset_text_field, text=self.dataset_text_field)
        return names


@dataclass
class SFTData:
    train: Any
    eval: Any = None
    # chat: a messages column (loss on the last reply); completion: prompt/completion strings (loss on the
    # completion, no chat template); text: a text column (loss on every token)
    kind: str = "chat"
    format: str = "messages"  # the format the train split came in (formats.SFT_COLUMNS)
    hit_rows: list[dict[str, Any]] = field(default_factory=list)  # eval prompts with their reference answer


def load(opts: SFTDataOptions, token: str | None) -> SFTData:
    """Load, recognise, check and convert the splits; every problem is a DataError naming the config key.
    The eval split may come in another format, but must be of the same kind (chat, completion or text)."""
    shapes: list[formats.Shape] = []

    def convert(rows, key: str, name: str):
        if opts.dataset_text_field is not None:  # a named column must be there: say so, not "no format"
            data.require_columns(rows, {"dataset_text_field": opts.dataset_text_field}, name)
        shape = formats.detect(rows.column_names, opts.dataset_format, opts.column_names(), rows[0], name, key)
        if shapes and shape.kind != shapes[0].kind:
            raise DataError(f"{key}: {name!r} holds {shape.kind} data ({shape.format} format) but "
                            f"{opts.dataset_name!r} holds {shapes[0].kind} data; use one kind for both")
        shapes.append(shape)
        answer = opts.eval_answer_field
        if key == "eval_dataset_name" and answer in rows.column_names and shape.kind != "text":
            rows = rows.add_column(ANSWER, [reference_text(value) for value in rows[answer]])
        return formats.convert(rows, shape, name, key)

    train, evals = data.load_splits(opts, {}, token, convert)
    kind, fmt = shapes[0].kind, shapes[0].format
    hit_rows = [] if evals is None or ANSWER not in evals.column_names else [
        {"prompt": prompt_of(row, kind), "answer": row[ANSWER]} for row in evals]
    return SFTData(train=train, eval=evals, kind=kind, format=fmt, hit_rows=hit_rows)


def facts(splits: SFTData) -> dict[str, Any]:
    """What metrics.json records about the data: the format it came in, what it became, its size."""
    return {"dataset_format": splits.format, "data_kind": splits.kind, "train_examples": len(splits.train),
            "eval_examples": 0 if splits.eval is None else len(splits.eval)}


def reference_text(value: Any) -> str:
    """A reference answer as text: a string, or the content of the last message of a list."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return str(value[-1].get("content", ""))
    return "" if value is None else str(value)


def prompt_of(row: dict[str, Any], kind: str):
    """What the model is asked: the conversation before its last reply, or the prompt string."""
    return row["messages"][:-1] if kind == "chat" else row["prompt"]


def to_trl_format(dataset, opts: SFTDataOptions, kind: str):
    """Chat rows → prompt/completion message lists, completion rows → prompt/completion strings (TRL then
    trains on the completion only, appending EOS); text rows → text."""
    if dataset is None:
        return None
    if kind == "chat":
        return data.chat_to_prompt_completion(dataset, "messages")
    if kind == "completion":
        return dataset.select_columns(["prompt", "completion"])
    return data.text_only(dataset, "text")


def tokenize(dataset, tokenizer, opts: SFTDataOptions, kind: str):
    """Token ids and labels for recipes with their own loop: prompt tokens are labelled IGNORE_INDEX."""
    def encode(row):
        if kind == "text":
            ids = tokenizer(row["text"], add_special_tokens=True)["input_ids"][:opts.seq_length]
            return {"input_ids": ids, "labels": list(ids)}
        if kind == "completion":  # no chat template; EOS ends the completion, as TRL does
            prompt_ids = tokenizer(row["prompt"])["input_ids"]
            full_ids = tokenizer(row["prompt"] + row["completion"] + (tokenizer.eos_token or ""))["input_ids"]
        else:
            messages = row["messages"]
            prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(messages, tokenize=False)
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        start = common_prefix(prompt_ids, full_ids)  # tokens may merge across the boundary
        ids = full_ids[:opts.seq_length]
        labels = [IGNORE_INDEX] * min(start, len(ids)) + ids[start:]
        return {"input_ids": ids, "labels": labels}

    return dataset.map(encode, remove_columns=dataset.column_names)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


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
        rate, _ = evaluate.answer_hit_rate(model, tokenizer, rows, opts.eval_max_new_tokens, dtype=dtype,
                                           metric=opts.eval_answer_metric)
    return rate


def sample_question(splits: SFTData) -> str | None:
    """A question from the user's own eval data (else train data) to suggest trying: the last user turn of a
    conversation, or a prompt string; None for plain text."""
    if splits.kind == "text":
        return None
    if splits.hit_rows:
        prompt = splits.hit_rows[0]["prompt"]
    else:
        prompt = prompt_of((splits.eval if splits.eval is not None else splits.train)[0], splits.kind)
    if isinstance(prompt, str):
        return prompt.strip()
    return next((m["content"] for m in reversed(prompt) if m["role"] == "user"), None)


def print_summary(metrics: dict, output_dir: str, question: str | None = None) -> None:
    before, after = metrics.get("hit_rate_before"), metrics.get("hit_rate_after")
    if after is not None:
        shown = "n/a (resumed)" if before is None else f"{100 * before:.1f}%"
        print(f"held-out answer hit rate: before {shown} -> after {100 * after:.1f}%")
    if "eval_loss_after" in metrics:
        before = metrics.get("eval_loss_before")
        shown = "n/a" if before is None else f"{before:.4f}"
        print(f"eval loss: {shown} -> {metrics['eval_loss_after']:.4f}")
    print(f"outputs in {Path(output_dir).resolve()}")
    print(f"chat with it: {card.try_command(output_dir, question)}")
