"""The dataset formats users bring, recognised by their columns and turned into one of three shapes.

Supervised fine-tuning rows, in any of these formats:

| format | columns (default names) | becomes |
|---|---|---|
| ``messages`` | ``messages``: ``[{"role", "content"}, ...]`` (system turns allowed), ending with the assistant | chat |
| ``sharegpt`` | ``conversations``: ``[{"from", "value"}, ...]`` (human/gpt/system, ...) | chat |
| ``alpaca`` | ``instruction``, ``output``; optional ``input`` and ``system`` | chat |
| ``prompt_completion`` | ``prompt``, ``completion``: both strings, or both message lists | completion (strings) or chat |
| ``text`` | ``text``: plain strings | text |

The shapes: *chat* is a ``messages`` column (trained on the last, assistant, turn; the model's chat
template renders it); *completion* is ``prompt``/``completion`` strings (trained on the completion,
with no chat template); *text* is a ``text`` column (trained on every token).

Preference pairs (DPO) come with an explicit prompt (``prompt``, ``chosen``, ``rejected``: strings or
message lists) or an implicit one (``chosen`` and ``rejected`` are whole conversations that share
everything but their last turn, which becomes the prompt).

``dataset_format: auto`` picks the format from the columns; any other value insists on one. Column
names other than the defaults are given by ``dataset_columns`` (a role -> column mapping, e.g.
``{instruction: question, output: answer}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal

from recipekit.errors import DataError

SFTFormat = Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "text"]
PairFormat = Literal["auto", "explicit", "implicit"]

# role -> default column name, per format; the first roles are required, the rest optional.
SFT_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "messages": (("messages",), ()),
    "sharegpt": (("conversations",), ()),
    "alpaca": (("instruction", "output"), ("input", "system")),
    "prompt_completion": (("prompt", "completion"), ()),
    "text": (("text",), ()),
}
PAIR_COLUMNS = {"explicit": ("prompt", "chosen", "rejected"), "implicit": ("chosen", "rejected")}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "model": "assistant", "system": "system"}
CHAT_ROLES = ("system", "user", "assistant")
SAMPLE = 1000  # rows whose shape is checked before anything loads a model


@dataclass(frozen=True)
class Shape:
    """What a format became: ``kind`` is chat, completion or text; ``columns`` maps roles to the file's columns."""

    format: str
    kind: str
    columns: dict[str, str]


def roles(fmt: str) -> tuple[str, ...]:
    required, optional = SFT_COLUMNS[fmt]
    return required + optional


def column_map(fmt: str, overrides: dict[str, str]) -> dict[str, str]:
    return {role: overrides.get(role, role) for role in roles(fmt)}


def needs(fmt: str, overrides: dict[str, str]) -> str:
    """``alpaca: instruction, output (+ input, system)`` with the configured names."""
    required, optional = SFT_COLUMNS[fmt]
    names = column_map(fmt, overrides)
    text = ", ".join(names[r] for r in required)
    return f"{fmt}: {text}" + (f" (+ {', '.join(names[r] for r in optional)})" if optional else "")


def check_columns_option(overrides: dict[str, str], key: str = "dataset_columns") -> list[str]:
    """Config check: every role named in the mapping belongs to some format, and names a column."""
    known = {role for fmt in SFT_COLUMNS for role in roles(fmt)}
    problems = [f"{key}: unknown role {role!r}; roles are {', '.join(sorted(known))}"
                for role in overrides if role not in known]
    problems += [f"{key}: the column for {role!r} must be a non-empty string" for role, column in overrides.items()
                 if not isinstance(column, str) or not column.strip()]
    return problems


def detect(columns: Iterable[str], fmt: str, overrides: dict[str, str], first_row: dict[str, Any] | None,
           name: str, field: str = "dataset_name") -> Shape:
    """The shape of a dataset with these columns; a DataError naming the columns found and what each format needs."""
    found = list(columns)
    candidates = list(SFT_COLUMNS) if fmt == "auto" else [fmt]
    for candidate in candidates:
        names = column_map(candidate, overrides)
        required, _ = SFT_COLUMNS[candidate]
        if all(names[role] in found for role in required) and (fmt != "auto" or fits(candidate, names, first_row)):
            present = {role: column for role, column in names.items() if column in found}
            return Shape(candidate, kind_of(candidate, present, first_row), present)
    shown = ", ".join(found) or "none"
    if fmt != "auto":
        raise DataError(f"dataset_format: {name!r} is not {fmt} data, which needs columns {needs(fmt, overrides)}; "
                        f"columns found: {shown} (map other names with dataset_columns)")
    wanted = "; ".join(needs(f, overrides) for f in SFT_COLUMNS)
    raise DataError(f"{field}: {name!r} matches no known format; columns found: {shown}. Each format needs: "
                    f"{wanted} (set dataset_format, and dataset_columns for other column names)")


def fits(fmt: str, columns: dict[str, str], row: dict[str, Any] | None) -> bool:
    """Whether the first row holds the kind of value ``fmt`` keeps in its main column (a list of turns or text),
    so that one column name shared by two formats (``dataset_text_field``) picks the right one."""
    if row is None:
        return True
    main = {"messages": "messages", "sharegpt": "conversations", "alpaca": "instruction",
            "prompt_completion": "prompt", "text": "text"}[fmt]
    value = row.get(columns[main])
    return isinstance(value, list) if fmt in ("messages", "sharegpt") else \
        isinstance(value, (str, list)) if fmt == "prompt_completion" else isinstance(value, str)


def kind_of(fmt: str, columns: dict[str, str], row: dict[str, Any] | None) -> str:
    if fmt == "text":
        return "text"
    if fmt == "prompt_completion":
        prompt = None if row is None else row.get(columns["prompt"])
        return "chat" if isinstance(prompt, list) else "completion"
    return "chat"


def to_row(row: dict[str, Any], shape: Shape) -> dict[str, Any]:
    """One row in its shape's columns: {messages}, {prompt, completion} or {text}. Raises ValueError if malformed."""
    c = shape.columns
    if shape.format == "messages":
        return {"messages": chat(row[c["messages"]])}
    if shape.format == "sharegpt":
        return {"messages": chat(from_sharegpt(row[c["conversations"]]))}
    if shape.format == "alpaca":
        user = text_of(row, c["instruction"])
        extra = row.get(c["input"]) if "input" in c else None
        if isinstance(extra, str) and extra.strip():
            user = f"{user}\n\n{extra}"
        system = row.get(c["system"]) if "system" in c else None
        turns = [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []
        return {"messages": chat([*turns, {"role": "user", "content": user},
                                  {"role": "assistant", "content": text_of(row, c["output"])}])}
    if shape.format == "prompt_completion":
        prompt, completion = row[c["prompt"]], row[c["completion"]]
        if shape.kind == "chat":
            if not isinstance(prompt, list) or not isinstance(completion, list):
                raise ValueError("prompt and completion must both be message lists or both be strings")
            return {"messages": chat([*prompt, *completion])}
        return {"prompt": text_of(row, c["prompt"]), "completion": text_of(row, c["completion"], strip=False)}
    return {"text": text_of(row, c["text"])}


def text_of(row: dict[str, Any], column: str, strip: bool = True) -> str:
    value = row.get(column)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"column {column!r} must hold non-empty text")
    return value.strip() if strip else value


def from_sharegpt(turns: Any) -> list[dict[str, str]]:
    if not isinstance(turns, list):
        raise ValueError("conversations must be a list of {from, value} turns")
    messages = []
    for turn in turns:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise ValueError("each ShareGPT turn needs a string 'value'")
        role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise ValueError(f"unknown ShareGPT speaker {turn.get('from')!r}; known: {', '.join(SHAREGPT_ROLES)}")
        messages.append({"role": role, "content": turn["value"]})
    return messages


def chat(messages: Any) -> list[dict[str, str]]:
    """A conversation checked: role/content strings, known roles, ending with an assistant reply."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("a conversation must be a non-empty list of messages")
    checked = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise ValueError("each message needs string 'role' and 'content'")
        if message["role"] not in CHAT_ROLES:
            raise ValueError(f"unknown role {message['role']!r}; roles are {', '.join(CHAT_ROLES)}")
        checked.append({"role": message["role"], "content": message["content"]})
    if checked[-1]["role"] != "assistant":
        raise ValueError("a conversation must end with an assistant message")
    if not any(m["role"] == "user" for m in checked):
        raise ValueError("a conversation needs a user message")
    return checked


def convert(dataset, shape: Shape, name: str, field: str = "dataset_name"):
    """The dataset in its shape's columns (other columns kept: an answer column, ids), every sampled row checked."""
    for index, row in enumerate(dataset.select(range(min(SAMPLE, len(dataset))))):
        try:
            to_row(row, shape)
        except ValueError as exc:
            raise DataError(f"{field}: row {index} of {name!r} ({shape.format} format): {exc}") from None
    converted = dataset.map(lambda row: to_row(row, shape), remove_columns=list(shape.columns.values()))
    return converted


# --- preference pairs ------------------------------------------------------------------------------------------

def detect_pairs(columns: Iterable[str], fmt: str, names: dict[str, str], name: str,
                 field: str = "dataset_name") -> str:
    """explicit or implicit; ``names`` maps prompt/chosen/rejected to the configured columns."""
    found = list(columns)
    for candidate in (["explicit", "implicit"] if fmt == "auto" else [fmt]):
        if all(names[role] in found for role in PAIR_COLUMNS[candidate]):
            return candidate
    shown = ", ".join(found) or "none"
    wanted = "; ".join(f"{f}: {', '.join(names[r] for r in PAIR_COLUMNS[f])}" for f in PAIR_COLUMNS)
    what = f"is not {fmt} preference data" if fmt != "auto" else "matches no preference format"
    raise DataError(f"{field}: {name!r} {what}; columns found: {shown}. Each format needs: {wanted}")


def split_implicit(chosen: Any, rejected: Any) -> dict[str, Any]:
    """Two whole conversations -> their shared prompt and the two last turns. Raises ValueError otherwise."""
    if not (isinstance(chosen, list) and isinstance(rejected, list)) or len(chosen) < 2 or len(rejected) < 2:
        raise ValueError("with an implicit prompt, chosen and rejected must be whole conversations (message lists)")
    chosen, rejected = chat(chosen), chat(rejected)
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("chosen and rejected must be the same conversation up to their last (assistant) turn")
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}
