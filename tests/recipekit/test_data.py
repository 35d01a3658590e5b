"""recipekit.data: loading by name and the checks that run before any model is loaded."""

import json

import pytest

from recipekit import data
from recipekit.errors import DataError

CHAT = [{"role": "user", "content": "When is breakfast?"}, {"role": "assistant", "content": "From 06:45."}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_embedded_splits_load():
    train = data.load_split("dataset_name", "hotel", "train")
    evals = data.load_split("dataset_name", "hotel", "eval")
    assert len(train) == 360 and len(evals) == 80
    assert {"messages", "answer_key"} <= set(evals.column_names)
    assert data.column_kind(train, "messages") == "chat"


def test_embedded_unknown_split_is_a_clear_error():
    with pytest.raises(DataError, match="has splits train, eval, not 'test'"):
        data.load_split("dataset_name", "hotel", "test")


def test_a_folder_reads_each_split_from_its_own_files_even_with_different_columns(tmp_path):
    # datasets' own layout would call eval.jsonl the test split and insist on one set of columns.
    write_jsonl(tmp_path / "train.jsonl", [{"messages": CHAT}] * 3)
    write_jsonl(tmp_path / "eval.jsonl", [{"messages": CHAT[:1], "answer_key": "06:45"}] * 2)
    train = data.load_split("dataset_name", str(tmp_path), "train")
    evals = data.load_split("eval_dataset_name", str(tmp_path), "eval")
    assert (len(train), train.column_names) == (3, ["messages"])
    assert (len(evals), sorted(evals.column_names)) == (2, ["answer_key", "messages"])


def test_a_folder_reads_sharded_splits_under_data(tmp_path):
    import pandas as pd

    (tmp_path / "data").mkdir()
    for shard in range(2):
        pd.DataFrame({"text": [f"train {shard}"]}).to_parquet(tmp_path / "data" / f"train-0000{shard}-of-00002.parquet")
    pd.DataFrame({"text": ["held out"]}).to_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet")
    assert data.load_split("dataset_name", str(tmp_path), "train")["text"] == ["train 0", "train 1"]
    assert data.load_split("dataset_name", str(tmp_path), "validation")["text"] == ["held out"]


def test_a_folder_split_in_two_formats_is_a_clear_error(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a"}])
    (tmp_path / "train.csv").write_text("text\nb\n")
    with pytest.raises(DataError, match=r"^dataset_name: split 'train' of .* several formats \(train.csv, train.jsonl\)"):
        data.load_split("dataset_name", str(tmp_path), "train")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_local_files_of_each_format(tmp_path, suffix):
    import pandas as pd

    frame = pd.DataFrame({"text": ["one", "two"], "label": [0, 1]})
    path = tmp_path / f"rows{suffix}"
    {".jsonl": lambda p: frame.to_json(p, orient="records", lines=True),
     ".csv": lambda p: frame.to_csv(p, index=False), ".parquet": frame.to_parquet}[suffix](path)
    loaded = data.load_split("dataset_name", str(path), "train")
    assert loaded["text"] == ["one", "two"]


def test_missing_column_names_the_key_and_the_columns_found(tmp_path):
    dataset = data.load_split("dataset_name", write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "label": 1}]),
                              "train")
    with pytest.raises(DataError) as info:
        data.require_columns(dataset, {"dataset_text_field": "messages"}, "d.jsonl")
    assert info.value.problems == [
        "dataset_text_field: column 'messages' not found in 'd.jsonl'; columns found: prompt, label"]


def test_empty_values_and_bad_messages_are_refused(tmp_path):
    dataset = data.load_split("d", write_jsonl(tmp_path / "t.jsonl", [{"text": "ok"}, {"text": "  "}]), "train")
    with pytest.raises(DataError, match="row 1 .* has no text"):
        data.require_text_column(dataset, "dataset_text_field", "text", "t.jsonl")
    chats = data.load_split("d", write_jsonl(tmp_path / "c.jsonl", [{"m": CHAT[:1]}]), "train")
    with pytest.raises(DataError, match="must end with an 'assistant' message"):
        data.require_chat_column(chats, "dataset_text_field", "m", "c.jsonl")


def test_zero_rows_and_missing_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("text\n")
    with pytest.raises(DataError, match="has no rows"):
        data.load_split("dataset_name", str(empty), "train")
    no_rows = data.load_split("d", write_jsonl(tmp_path / "rows.jsonl", [{"text": "x"}]), "train").select([])
    with pytest.raises(DataError, match="has no rows"):
        data.require_rows(no_rows, "dataset_name", "rows.jsonl")
    assert data.check_name("dataset_name", str(tmp_path / "absent.jsonl")) == [
        f"dataset_name: file not found: {tmp_path / 'absent.jsonl'}"]
    (tmp_path / "notes.txt").write_text("hello")
    assert data.check_name("dataset_name", str(tmp_path / "notes.txt")) == [
        "dataset_name: unsupported file type '.txt'; use .jsonl, .json, .csv or .parquet"]


def test_chat_rows_become_prompt_and_completion(tmp_path):
    dataset = data.load_split("d", write_jsonl(tmp_path / "c.jsonl", [{"messages": CHAT}]), "train")
    row = data.chat_to_prompt_completion(dataset, "messages")[0]
    assert row == {"prompt": CHAT[:1], "completion": CHAT[1:]}


def test_the_eval_dataset_is_the_train_one_unless_named_and_absent_where_there_is_no_split(tmp_path):
    single = write_jsonl(tmp_path / "one.jsonl", [{"text": "a"}])
    assert data.DatasetOptions().eval_dataset() == "hotel"
    assert data.DatasetOptions(eval_split=None).eval_dataset() is None
    assert data.DatasetOptions(dataset_name=single).eval_dataset() is None  # one file has one split
    assert data.DatasetOptions(dataset_name=single, eval_dataset_name=single).eval_dataset() == single
    assert data.DatasetOptions(dataset_name=str(tmp_path / "gone.jsonl"), eval_dataset_name="").check_data() == [
        f"dataset_name: file not found: {tmp_path / 'gone.jsonl'}", "eval_dataset_name: must not be empty"]


def test_load_splits_checks_both_splits_and_names_the_key(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "id": 1}, {"text": "b", "id": 2}])
    evals = write_jsonl(tmp_path / "eval.jsonl", [{"body": "c"}])
    seen = []

    def prepare(rows, key, name):
        seen.append((key, name))
        return rows.select_columns(["text"])

    opts = data.DatasetOptions(dataset_name=train, eval_dataset_name=train)
    loaded, loaded_eval = data.load_splits(opts, {"dataset_text_field": "text"}, None, prepare)
    assert loaded.column_names == ["text"] and len(loaded_eval) == 2 and seen == [("dataset_name", train), ("eval_dataset_name", train)]
    assert data.load_splits(data.DatasetOptions(dataset_name=train), {}, None)[1] is None
    with pytest.raises(DataError) as info:
        data.load_splits(data.DatasetOptions(dataset_name=train, eval_dataset_name=evals),
                         {"dataset_text_field": "text"}, None)
    assert info.value.problems == [f"dataset_text_field: column 'text' not found in {evals!r}; columns found: body"]
