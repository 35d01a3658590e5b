"""recipekit.formats: each dataset format is recognised by its columns and turned into its shape."""

from __future__ import annotations

import pytest

from recipekit import formats
from recipekit.errors import DataError

REPLY = {"role": "assistant", "content": "At 11:00."}
ASK = {"role": "user", "content": "When is check-out?"}
ROWS = {
    "messages": {"messages": [{"role": "system", "content": "Be brief."}, ASK, REPLY], "answer": "11:00"},
    "sharegpt": {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": ASK["content"]},
                                   {"from": "gpt", "value": REPLY["content"]}]},
    "alpaca": {"instruction": "When is check-out?", "input": "", "output": "At 11:00.", "system": "Be brief."},
    "prompt_completion": {"prompt": "Q: When is check-out?\nA:", "completion": " At 11:00."},
    "text": {"text": "Check-out is at 11:00."},
}


def dataset(rows):
    import datasets

    return datasets.Dataset.from_list(rows)


@pytest.mark.parametrize("fmt", list(ROWS))
def test_each_format_is_detected_from_its_columns_and_converted(fmt):
    data = dataset([ROWS[fmt]])
    shape = formats.detect(data.column_names, "auto", {}, data[0], "my.jsonl")
    assert shape.format == fmt
    (row,) = formats.convert(data, shape, "my.jsonl").to_list()
    if shape.kind == "chat":
        assert row["messages"] == [{"role": "system", "content": "Be brief."}, ASK, REPLY]
    elif shape.kind == "completion":
        assert row["prompt"] == "Q: When is check-out?\nA:" and row["completion"] == " At 11:00."
    else:
        assert row["text"] == "Check-out is at 11:00."


def test_other_columns_are_kept_and_alpaca_input_joins_the_instruction():
    data = dataset([{"question": "Translate", "context": "bonjour", "answer": "hello", "id": 7}])
    shape = formats.detect(data.column_names, "auto", {"instruction": "question", "input": "context",
                                                         "output": "answer"}, data[0], "x")
    (row,) = formats.convert(data, shape, "x").to_list()
    assert shape.format == "alpaca" and row["id"] == 7
    assert row["messages"] == [{"role": "user", "content": "Translate\n\nbonjour"},
                               {"role": "assistant", "content": "hello"}]


def test_prompt_completion_of_message_lists_is_chat():
    data = dataset([{"prompt": [ASK], "completion": [REPLY]}])
    shape = formats.detect(data.column_names, "auto", {}, data[0], "x")
    assert (shape.format, shape.kind) == ("prompt_completion", "chat")
    assert formats.convert(data, shape, "x")[0]["messages"] == [ASK, REPLY]


def test_no_known_format_names_the_columns_found_and_what_each_format_needs():
    data = dataset([{"question": "q", "reply": "r"}])
    with pytest.raises(DataError) as caught:
        formats.detect(data.column_names, "auto", {}, data[0], "mine.csv")
    (message,) = caught.value.problems
    assert message.startswith("dataset_name: 'mine.csv' matches no known format; columns found: question, reply.")
    for needed in ("messages: messages", "sharegpt: conversations", "alpaca: instruction, output (+ input, system)",
                   "prompt_completion: prompt, completion", "text: text"):
        assert needed in message
    with pytest.raises(DataError, match=r"^dataset_format: 'mine.csv' is not alpaca data"):
        formats.detect(data.column_names, "alpaca", {}, data[0], "mine.csv")


@pytest.mark.parametrize("row,why", [
    ({"messages": [ASK]}, "must end with an assistant message"),
    ({"messages": [{"role": "robot", "content": "x"}, REPLY]}, "unknown role 'robot'"),
    ({"conversations": [{"from": "alien", "value": "x"}]}, "unknown ShareGPT speaker 'alien'"),
])
def test_a_malformed_row_is_named(row, why):
    data = dataset([row])
    shape = formats.detect(data.column_names, "auto", {}, data[0], "x")
    with pytest.raises(DataError, match=f"row 0 of 'x' .*{why}"):
        formats.convert(data, shape, "x")


def test_column_mapping_is_checked():
    assert formats.check_columns_option({"instruction": "q", "answer": "a", "output": ""}) == [
        "dataset_columns: unknown role 'answer'; roles are completion, conversations, input, instruction, messages, "
        "output, prompt, system, text",
        "dataset_columns: the column for 'output' must be a non-empty string"]


def test_preference_pairs_explicit_and_implicit():
    names = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
    assert formats.detect_pairs(["prompt", "chosen", "rejected"], "auto", names, "x") == "explicit"
    assert formats.detect_pairs(["chosen", "rejected", "id"], "auto", names, "x") == "implicit"
    split = formats.split_implicit([ASK, REPLY], [ASK, {"role": "assistant", "content": "At noon."}])
    assert split == {"prompt": [ASK], "chosen": [REPLY], "rejected": [{"role": "assistant", "content": "At noon."}]}
    with pytest.raises(ValueError, match="same conversation up to their last"):
        formats.split_implicit([ASK, REPLY], [{"role": "user", "content": "Other?"}, REPLY])
    with pytest.raises(DataError, match="matches no preference format; columns found: good, bad"):
        formats.detect_pairs(["good", "bad"], "auto", names, "x")


def test_auto_detection_checks_the_values_where_one_column_name_serves_two_formats():
    """dataset_text_field names the messages and the text column alike: the values say which it is."""
    names = {"messages": "body", "text": "body"}
    chats = dataset([{"body": [ASK, REPLY]}])
    texts = dataset([{"body": "Check-out is at 11:00."}])
    assert formats.detect(chats.column_names, "auto", names, chats[0], "x").format == "messages"
    assert formats.detect(texts.column_names, "auto", names, texts[0], "x").format == "text"
    both = dataset([{"instruction": "When is check-out?", "output": "At 11:00.", "text": "Check-out: 11:00."}])
    assert formats.detect(both.column_names, "auto", {}, both[0], "x").format == "alpaca"
    assert formats.detect(both.column_names, "text", {}, both[0], "x").format == "text"
