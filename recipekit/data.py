"""Loading datasets by name, and checking them before any model is loaded.

A dataset name is one of:
- an embedded dataset shipped with the project (``hotel``, ``hotel-handbook``, ``hotel-preferences``);
- a local file (``.jsonl``/``.json``, ``.csv``, ``.parquet``) or a local dataset directory;
- a dataset id on the Hugging Face Hub.

Every recipe names its train and eval datasets with the keys of ``DatasetOptions`` and loads them
with ``load_splits``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from recipekit.config import option
from recipekit.errors import DataError

EMBEDDED_DIR = Path(__file__).resolve().parent / "datasets" / "hotel"
EMBEDDED = {
    "hotel": {"train": "train.jsonl", "eval": "eval.jsonl"},
    "hotel-handbook": {"train": "handbook_train.jsonl", "eval": "handbook_eval.jsonl"},
    "hotel-preferences": {"train": "preferences_train.jsonl", "eval": "preferences_eval.jsonl"},
}
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SAMPLE_ROWS = 1000  # rows inspected per check: enough to catch a wrong column, cheap on huge datasets
IGNORE_INDEX = -100  # label value the loss skips (prompt tokens, padding)


def dataset_option(default: str):
    """The ``dataset_name`` key, with the recipe's default dataset."""
    return option(default, help="embedded dataset, local .jsonl/.csv/.parquet file or dir, or Hub dataset id")


@dataclass
class TrainDatasetOptions:
    dataset_name: str = dataset_option("hotel")
    dataset_split: str = option("train", help="split to train on")


@dataclass
class TextColumnOption(TrainDatasetOptions):
    """The column of plain text (or chat messages) a recipe trains on; listed after DatasetOptions
    among a recipe's bases, it sits between the train and the eval keys."""

    dataset_text_field: str = option("text", help="column holding the raw text documents")


@dataclass
class DatasetOptions(TrainDatasetOptions):
    """The train and eval datasets, as every recipe names them, and their checks. A recipe's data
    options subclass it (redeclaring ``dataset_name = dataset_option(...)`` for their own default)."""

    eval_dataset_name: Optional[str] = option(None, help="dataset for evaluation; null = dataset_name")
    eval_split: Optional[str] = option("eval", help="split to evaluate on; null disables evaluation")

    def check_data(self) -> list[str]:
        problems = check_name("dataset_name", self.dataset_name)
        if self.eval_dataset_name is not None:
            problems += check_name("eval_dataset_name", self.eval_dataset_name)
        return problems

    def eval_dataset(self) -> str | None:
        """The dataset to evaluate on; None where there is no eval split (null, or one local file)."""
        name = self.eval_dataset_name or self.dataset_name
        if self.eval_split is None or not (self.eval_dataset_name or has_split(name, self.eval_split)):
            return None
        return name


def load_splits(opts: DatasetOptions, columns: dict[str, str], token: str | None,
                prepare: Callable[[Any, str, str], Any] | None = None) -> tuple[Any, Any | None]:
    """The train split and, where there is one, the eval split: each loaded, checked for rows and for
    ``columns`` (config key -> column), then passed through ``prepare(rows, key, name)``, the recipe's own
    checks and conversions (``key``: dataset_name or eval_dataset_name). Every problem is a DataError
    naming its config key."""
    def load(key: str, name: str, split: str):
        rows = load_split(key, name, split, token)
        require_rows(rows, key, name)
        require_columns(rows, columns, name)  # names the key and lists the columns found
        return rows if prepare is None else prepare(rows, key, name)

    train = load("dataset_name", opts.dataset_name, opts.dataset_split)
    eval_name = opts.eval_dataset()
    return train, None if eval_name is None else load("eval_dataset_name", eval_name, opts.eval_split)


def is_local_file(name: str) -> bool:
    return Path(name).suffix.lower() in FILE_FORMATS


def has_split(name: str, split: str) -> bool:
    """Whether ``name`` can provide a separate ``split`` (a single local file has only one)."""
    if name in EMBEDDED:
        return split in EMBEDDED[name]
    return not is_local_file(name)


def check_name(field: str, name: str) -> list[str]:
    """Problems knowable without loading: a missing local file, or a file in an unsupported format."""
    if not name.strip():
        return [f"{field}: must not be empty"]
    path = Path(name).expanduser()
    if name in EMBEDDED or path.is_dir():
        return []
    if path.suffix.lower() in FILE_FORMATS:
        return [] if path.is_file() else [f"{field}: file not found: {name}"]
    if path.exists():
        return [f"{field}: unsupported file type {path.suffix!r}; use .jsonl, .json, .csv or .parquet"]
    return []  # a Hub dataset id; whether it exists is known only when loading


def split_files(folder: Path, split: str) -> list[Path]:
    """The data files of ``split`` in a dataset folder: ``<split>.jsonl``, or shards such as
    ``<split>-00000-of-00002.parquet``, in the folder or its ``data/``.

    Each split is read on its own, so an eval file may carry columns the train file lacks (an
    answer key); ``datasets``' own folder layout would name ``eval.jsonl`` the test split and
    require every split to have the same columns.
    """
    return sorted(f for place in (folder, folder / "data") if place.is_dir() for f in place.iterdir()
                  if f.is_file() and f.suffix.lower() in FILE_FORMATS
                  and (f.stem == split or f.stem.startswith((f"{split}-", f"{split}_"))))


def load_split(field: str, name: str, split: str, token: str | None = None):
    """Load one split as a ``datasets.Dataset``; any failure is a DataError naming ``field``."""
    import datasets

    datasets.disable_progress_bars()
    try:
        if name in EMBEDDED:
            if split not in EMBEDDED[name]:
                raise DataError(f"{field}: embedded dataset {name!r} has splits {', '.join(EMBEDDED[name])}, "
                                f"not {split!r}")
            return datasets.load_dataset("json", data_files=str(EMBEDDED_DIR / EMBEDDED[name][split]),
                                         split="train")
        path = Path(name).expanduser()
        if path.suffix.lower() in FILE_FORMATS:
            if not path.is_file():
                raise DataError(f"{field}: file not found: {name}")
            return datasets.load_dataset(FILE_FORMATS[path.suffix.lower()], data_files=str(path), split="train")
        if path.is_dir():
            files = split_files(path, split)
            if len({FILE_FORMATS[f.suffix.lower()] for f in files}) > 1:
                raise DataError(f"{field}: split {split!r} of {name} is in files of several formats "
                                f"({', '.join(f.name for f in files)}); keep one format per split")
            if files:
                return datasets.load_dataset(FILE_FORMATS[files[0].suffix.lower()],
                                             data_files=[str(f) for f in files], split="train")
            return datasets.load_dataset(str(path), split=split)
        return datasets.load_dataset(name, split=split, token=token)
    except DataError:
        raise
    except (ValueError, KeyError) as exc:
        if "corresponds to no data" in str(exc):  # how `datasets` reports a file without rows
            raise DataError(f"{field}: {name!r} has no rows") from None
        raise DataError(f"{field}: cannot load split {split!r} of {name!r}: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - the hub and file readers raise many unrelated types
        raise DataError(f"{field}: cannot load {name!r} ({type(exc).__name__}: {_first_line(exc)}); "
                        "a hub dataset needs network access, a local file must be readable") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def sample(dataset, limit: int = SAMPLE_ROWS) -> Iterable[dict[str, Any]]:
    return dataset.select(range(min(limit, len(dataset))))


def require_rows(dataset, field: str, name: str) -> None:
    if len(dataset) == 0:
        raise DataError(f"{field}: {name!r} has no rows")


def require_columns(dataset, columns: dict[str, str], name: str) -> None:
    """``columns`` maps the config key that names a column to that column; all missing ones are reported."""
    found = list(dataset.column_names)
    problems = [f"{key}: column {column!r} not found in {name!r}; columns found: {', '.join(found) or 'none'}"
                for key, column in columns.items() if column not in found]
    if problems:
        raise DataError(problems)


def require_text_column(dataset, key: str, column: str, name: str) -> None:
    """The column must hold non-empty strings."""
    for i, row in enumerate(sample(dataset)):
        value = row[column]
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{key}: row {i} of {name!r} has no text in column {column!r}")


def require_chat_column(dataset, key: str, column: str, name: str, last_role: str | None = "assistant") -> None:
    """The column must hold chat message lists ``[{"role", "content"}, ...]`` (ending with ``last_role``)."""
    for i, row in enumerate(sample(dataset)):
        messages = row[column]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{key}: row {i} of {name!r} has no messages in column {column!r}")
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                    or not isinstance(message.get("content"), str):
                raise DataError(f"{key}: row {i} of {name!r}: each message needs string 'role' and 'content'")
        if last_role and messages[-1]["role"] != last_role:
            raise DataError(f"{key}: row {i} of {name!r} must end with an {last_role!r} message")


def column_kind(dataset, column: str) -> str:
    """'chat' when the column holds message lists, else 'text'."""
    first = dataset[0][column]
    return "chat" if isinstance(first, list) else "text"


def chat_to_prompt_completion(dataset, column: str):
    """Split each conversation before its last (assistant) turn, so the loss covers the reply only."""
    return dataset.map(
        lambda row: {"prompt": row[column][:-1], "completion": row[column][-1:]},
        remove_columns=dataset.column_names,
    )


def text_only(dataset, column: str):
    return dataset.map(lambda row: {"text": row[column]}, remove_columns=dataset.column_names)
