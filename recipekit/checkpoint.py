"""Atomic checkpoints, resume from the newest complete one, and graceful stop on a signal.

A checkpoint is written under ``<output_dir>/.staging/``; once every rank has finished writing,
rank 0 renames it to ``<output_dir>/checkpoint-<step>`` and then writes ``COMPLETE`` inside it.
Resume only ever considers directories with that marker, so a run killed mid-save restarts
from the previous complete checkpoint instead of a corrupt one.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import time
from pathlib import Path

from recipekit import distributed

log = logging.getLogger("recipekit")
MARKER = "COMPLETE"
STAGING = ".staging"
_STEP_DIR = re.compile(r"^checkpoint-(\d+)$")


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
    """The newest complete checkpoint, logging the choice and every incomplete one skipped."""
    chosen = None
    for step, path, complete in reversed(checkpoints(output_dir)):
        if complete:
            chosen = path
            break
        log.warning("skipping %s: no %s marker (the run stopped while writing it)", path.name, MARKER)
    if chosen is not None:
        log.warning("resuming from %s, the newest complete checkpoint", chosen)
    return chosen


def mark_complete(path: Path, step: int) -> None:
    (path / MARKER).write_text(json.dumps({"step": step, "time": time.time()}) + "\n")


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


class AtomicCheckpointMixin:
    """Mix into a ``transformers.Trainer`` subclass to make its checkpoints atomic.

    The Trainer writes each checkpoint into a staging dir; it is published once all ranks are done.
    The Trainer's own rotation is bypassed (it could delete the newest complete checkpoint).
    """

    def _get_output_dir(self, trial):  # noqa: D401 - Trainer hook
        if getattr(self, "_staging_save", False):
            return str(Path(self.args.output_dir) / STAGING)
        return super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        step = self.state.global_step
        staging_root = Path(self.args.output_dir) / STAGING
        if self.args.should_save:
            shutil.rmtree(staging_root / f"checkpoint-{step}", ignore_errors=True)
        distributed.barrier()
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        self._staging_save = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_save = False
            self.args.save_total_limit = limit
        distributed.barrier()
        if self.args.should_save:
            publish(staging_root / f"checkpoint-{step}", Path(self.args.output_dir) / f"checkpoint-{step}", step)
            shutil.rmtree(staging_root, ignore_errors=True)  # also any half-written leftovers of a killed run
            prune(self.args.output_dir, limit)
        distributed.barrier()


class StopOnSignal:
    """Turns SIGTERM/SIGUSR1 into "save a checkpoint at the next step boundary, then stop".

    Install early; ``requested`` says whether a stop was asked for on any rank.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: int | None = None
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received is None:
            log.warning("received %s: will save a checkpoint at the end of this step and stop",
                        signal.Signals(signum).name)
        self.received = signum

    def agreed(self) -> bool:
        """Whether any rank got a signal (collective: call on every rank at the same point)."""
        return distributed.any_rank(self.received is not None)


def trainer_callback(stopper: StopOnSignal):
    """A TrainerCallback that saves and stops when ``stopper`` has been signalled on any rank."""
    from transformers import TrainerCallback

    class SaveAndStop(TrainerCallback):
        stopped = False

        def on_step_end(self, args, state, control, **kwargs):
            if stopper.agreed():
                control.should_save = True
                control.should_training_stop = True
                SaveAndStop.stopped = True
            return control

    return SaveAndStop()


def keep_in_history(row: dict):
    """A callback that puts the pre-training eval (``row``, filled in later) at the top of the log history,
    so it is saved in every checkpoint and a resumed run can still report it."""
    from transformers import TrainerCallback

    class KeepEvalBefore(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if row and state.global_step == 0 and row not in state.log_history:
                state.log_history.insert(0, dict(row))

    return KeepEvalBefore()
