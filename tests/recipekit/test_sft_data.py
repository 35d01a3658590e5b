"""recipekit.sft_data: chat rows trained on the reply only, packed for the hand-written loops."""

from __future__ import annotations

from recipekit import sft_data
from recipekit.data import IGNORE_INDEX


def test_packed_items_restart_positions_and_never_target_a_documents_first_token():
    rows = [{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]},
            {"input_ids": [], "labels": []}, {"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4]}]
    packed = sft_data.pack_items(rows, sft_data.SFTDataOptions(seq_length=8, packing=True))
    assert packed == [{"input_ids": [5, 6, 7, 8, 9], "labels": [IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9],
                       "position_ids": [0, 1, 2, 0, 1]},
                      {"input_ids": [1, 2, 3, 4], "labels": [IGNORE_INDEX, 2, 3, 4], "position_ids": [0, 1, 2, 3]}]
    assert len(sft_data.pack_items(rows, sft_data.SFTDataOptions(seq_length=8, packing=False))) == 3


def test_collated_items_give_the_padding_its_own_positions():
    import torch

    items = [{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7], "position_ids": [0, 1, 0]},
             {"input_ids": [8], "labels": [IGNORE_INDEX], "position_ids": [0]}]
    batch = sft_data.collate_items(items, pad_id=0, device="cpu")
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX] * 3]
    assert torch.equal(batch["position_ids"], torch.tensor([[0, 1, 0], [0, 0, 1]]))


def write_jsonl(path, rows):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_each_split_is_recognised_converted_and_its_reference_answers_kept(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"q": "When is check-out?", "a": "At 11:00.", "key": "11:00"}])
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"conversations": [{"from": "human", "value": "Check-out?"},
                                                                     {"from": "gpt", "value": "11:00."}],
                                                   "key": "11:00"}])
    opts = sft_data.SFTDataOptions(dataset_name=train, eval_dataset_name=evals, eval_answer_field="key",
                                   dataset_columns={"instruction": "q", "output": "a"})
    loaded = sft_data.load(opts, None)
    assert (loaded.format, loaded.kind) == ("alpaca", "chat")
    assert loaded.train[0]["messages"] == [{"role": "user", "content": "When is check-out?"},
                                           {"role": "assistant", "content": "At 11:00."}]
    assert loaded.hit_rows == [{"prompt": [{"role": "user", "content": "Check-out?"}], "answer": "11:00"}]
    assert sft_data.sample_question(loaded) == "Check-out?"
    assert sft_data.facts(loaded) == {"dataset_format": "alpaca", "data_kind": "chat", "train_examples": 1,
                                      "eval_examples": 1}


def test_a_reference_answer_may_be_a_column_the_format_uses(tmp_path):
    rows = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Q: Check-out?\nA:", "completion": " At 11:00."}])
    opts = sft_data.SFTDataOptions(dataset_name=rows, eval_dataset_name=rows, eval_answer_field="completion")
    loaded = sft_data.load(opts, None)
    assert loaded.kind == "completion" and loaded.hit_rows == [{"prompt": "Q: Check-out?\nA:", "answer": " At 11:00."}]
    assert sft_data.sample_question(loaded) == "Q: Check-out?\nA:"


def test_kinds_must_agree_and_the_text_field_is_checked(tmp_path):
    import pytest

    from recipekit.errors import DataError

    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "Hi?"},
                                                               {"role": "assistant", "content": "Hello."}]}])
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "Hello."}])
    with pytest.raises(DataError, match=r"^eval_dataset_name: .* holds text data \(text format\) but .* holds chat"):
        sft_data.load(sft_data.SFTDataOptions(dataset_name=chat, eval_dataset_name=text), None)
    with pytest.raises(DataError, match=r"^dataset_text_field: column 'body' not found in .*columns found: text"):
        sft_data.load(sft_data.SFTDataOptions(dataset_name=text, dataset_text_field="body"), None)
    assert sft_data.load(sft_data.SFTDataOptions(dataset_name=text, dataset_text_field="text"), None).kind == "text"


def test_the_options_refuse_two_names_for_one_column_and_unknown_roles():
    opts = sft_data.SFTDataOptions(dataset_text_field="body", dataset_format="alpaca",
                                   dataset_columns={"text": "t", "reply": "r"})
    assert opts.check_data() == [
        "dataset_columns: unknown role 'reply'; roles are completion, conversations, input, instruction, messages, "
        "output, prompt, system, text",
        "dataset_text_field: names the messages or text column; for dataset_format: alpaca name columns with "
        "dataset_columns (or set it to null)",
        "dataset_text_field: dataset_columns names the text column too; use one of them"]


def test_string_completions_are_tokenized_without_a_chat_template_and_trained_on_the_completion(tiny_model):
    import datasets
    from transformers import AutoTokenizer

    from recipekit import models

    tokenizer = AutoTokenizer.from_pretrained(models.resolve(tiny_model))
    rows = datasets.Dataset.from_list([{"prompt": "Q: When is check-out?\nA:", "completion": " At 11:00."}])
    (row,) = sft_data.tokenize(rows, tokenizer, sft_data.SFTDataOptions(seq_length=64), "completion").to_list()
    assert tokenizer.decode(row["input_ids"]) == "Q: When is check-out?\nA: At 11:00." + tokenizer.eos_token
    trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == " At 11:00." + tokenizer.eos_token
    trl_rows = sft_data.to_trl_format(rows, sft_data.SFTDataOptions(), "completion")
    assert trl_rows.to_list() == [{"prompt": "Q: When is check-out?\nA:", "completion": " At 11:00."}]
