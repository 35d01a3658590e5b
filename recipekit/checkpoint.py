"""Atomic checkpoints, and resuming from the newest complete one.

A checkpoint is written under ``<output_dir>/.staging/``; once every rank has finished writing,
rank 0 renames it to ``<output_dir>/checkpoint-<step>`` and then writes ``COMPLETE`` inside it
(``staged``: every recipe saves through it, the Trainer's through ``recipekit.trainer``).
Resume only ever considers directories with that marker, so a run killed mid-save restarts
from the previous complete checkpoint instead of a corrupt one. The marker also holds a
fingerprint of the training data, so that a rerun on changed data stops instead of continuing
another run's schedule and data order.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Iterator

from recipekit import distributed
from recipekit.errors import UsageError
from recipekit.schema import TrainingOptions

log = logging.getLogger("recipekit")
MARKER = "COMPLETE"
STAGING = ".staging"
_STEP_DIR = re.compile(r"^checkpoint-(\d+)$")
FINGERPRINT_ROWS = 10_000  # rows hashed: the first ones, with the row count (cheap on huge datasets)
_train_data: str | None = None  # this run's data fingerprint, written into every marker it publishes


def checkpoints(output_dir: str | Path) -> list[tuple[int, Path, bool]]:
    """(step, path, complete) for every ``checkpoint-N`` dir, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path, (path / MARKER).is_file()))
    return sorted(found)


def latest_complete(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, logging every incomplete one skipped."""
    for step, path, complete in reversed(checkpoints(output_dir)):
        if complete:
            return path
        log.warning("skipping %s: no %s marker (the run stopped while writing it)", path.name, MARKER)
    return None


def data_fingerprint(rows) -> str:
    """A short hash of a dataset's row count and its first ``FINGERPRINT_ROWS`` rows."""
    digest = hashlib.sha256(str(len(rows)).encode())
    for row in itertools.islice(rows, FINGERPRINT_ROWS):
        digest.update(json.dumps(row, sort_keys=True, default=_plain).encode())
    return digest.hexdigest()[:16]


def _plain(value):
    return value.tolist() if hasattr(value, "tolist") else str(value)


def resume_point(train: TrainingOptions, data=None) -> Path | None:
    """Where this run continues: the newest complete checkpoint in output_dir when ``resume`` is on.

    ``data``, the training rows, is fingerprinted for the checkpoints this run writes; a checkpoint
    written while training on other rows is a UsageError rather than a silent continuation.
    """
    global _train_data
    _train_data = data_fingerprint(data) if data is not None else None
    chosen = latest_complete(train.output_dir) if train.resume else None
    if chosen is not None and _train_data is not None:
        written = json.loads((chosen / MARKER).read_text() or "{}").get("train_data")
        if written not in (None, _train_data):
            raise UsageError(f"resume: {chosen} was written while training on other data (the training rows "
                             f"have changed since); give this run a new output_dir, or move that directory's "
                             f"checkpoints away to start over in it")
    if chosen is not None:
        log.warning("resuming from %s, the newest complete checkpoint", chosen)
    return chosen


def mark_complete(path: Path, step: int) -> None:
    marker = {"step": step, "time": time.time()}
    if _train_data is not None:
        marker["train_data"] = _train_data
    (path / MARKER).write_text(json.dumps(marker) + "\n")


def publish(staged: Path, final: Path, step: int) -> None:
    """Move a fully written checkpoint into place and mark it complete (rank 0 only)."""
    if final.exists():  # a stale, incomplete copy from an earlier attempt at the same step
        shutil.rmtree(final)
    staged.rename(final)
    mark_complete(final, step)


def prune(output_dir: str | Path, keep: int | None) -> None:
    """Keep the newest ``keep`` complete checkpoints; drop incomplete ones older than the newest complete."""
    found = checkpoints(output_dir)
    complete = [path for _, path, done in found if done]
    newest = complete[-1] if complete else None
    doomed = complete[:-keep] if keep and keep > 0 else []
    if newest is not None:
        newest_step = int(_STEP_DIR.match(newest.name).group(1))
        doomed += [path for step, path, done in found if not done and step < newest_step]
    for path in doomed:
        if path != newest:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def staged(output_dir: str | Path, step: int, keep: int | None) -> Iterator[Path]:
    """Write ``checkpoint-<step>`` atomically (collective: every rank enters it).

    Every rank writes into the staging directory this yields; once all have finished, rank 0
    publishes it, removes what a killed run may have left in staging, and keeps the newest
    ``keep`` complete checkpoints. An exception inside leaves nothing published.
    """
    root = Path(output_dir)
    staging = root / STAGING / f"checkpoint-{step}"
    if distributed.is_main():
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    distributed.barrier()
    yield staging
    distributed.barrier()
    if distributed.is_main():
        publish(staging, root / f"checkpoint-{step}", step)
        shutil.rmtree(root / STAGING, ignore_errors=True)
        prune(root, keep)
        log.info("saved checkpoint-%d", step)
    distributed.barrier()
