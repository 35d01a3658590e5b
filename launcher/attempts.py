"""How each attempt of a job ended, kept in the job's own output directory.

A requeued Slurm job and a recreated pod both see the job's output directory (shared storage), so
the count of failed attempts lives there, in ``<job dir>/attempts.log``: one line per attempt,
``<kind> <exit code> <UTC time> <why>``, where kind is

- ``failure``: killed, or lost another rank, the rendezvous or the store (exit 128-255 but 143);
  these use the retry budget (``max_retries``);
- ``continuation``: stopped by a signal after a checkpoint (exit 143): a time limit reached or a
  preemption; these do not use the retry budget (``max_continuations`` caps them, if set);
- ``finished`` (0) and ``stopped`` (any other code, which is never retried);
- ``started``: written first by a keeper that records its attempt (Kubernetes), so that an attempt
  that never wrote how it ended (its pod killed whole, its node lost) counts as a failure.

The Slurm batch script writes the same lines (slurm/job.sbatch.j2), and the keeper on Kubernetes
(launcher/keeper.py); both stop retrying once the budget is spent.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from recipekit.errors import EXIT_PREEMPTED

FILE = "attempts.log"


def kind(code: int) -> str:
    if code == 0:
        return "finished"
    if code == EXIT_PREEMPTED:
        return "continuation"
    return "failure" if 128 <= code <= 255 else "stopped"


@dataclass
class Attempts:
    job_dir: Path
    max_retries: int
    max_continuations: int | None = None
    records: bool = False  # whether this process writes the outcome of its attempt

    @property
    def path(self) -> Path:
        return self.job_dir / FILE

    def count(self, which: str) -> int:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return 0
        return sum(line.split(" ", 1)[0] == which for line in lines)

    def add(self, code: int, why: str) -> None:
        self.write(f"{kind(code)} {code}", why)

    def start(self) -> None:
        self.write("started -", "")

    def write(self, what: str, why: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.job_dir.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as log:
            log.write(f"{what} {stamp} {why}".rstrip() + "\n")

    def failures(self) -> int:
        """Failed attempts: those that said so, and those that started and never said how they ended."""
        ended = sum(self.count(which) for which in ("failure", "continuation", "finished", "stopped"))
        return self.count("failure") + max(0, self.count("started") - ended)

    def budget_spent(self) -> str | None:
        """Why the job may not run again, or None."""
        failures = self.failures()
        if failures > self.max_retries:
            return f"the job failed {failures} times and max_retries is {self.max_retries} ({self.path})"
        continuations = self.count("continuation")
        if self.max_continuations is not None and continuations > self.max_continuations:
            return (f"the job was continued {continuations} times and max_continuations is "
                    f"{self.max_continuations} ({self.path})")
        return None


def from_env() -> Attempts | None:
    """The job's attempts, from FT_JOB_DIR, FT_MAX_RETRIES (and FT_MAX_CONTINUATIONS, FT_RECORD_ATTEMPTS); None
    when the job did not say where they are kept."""
    job_dir, max_retries = os.environ.get("FT_JOB_DIR"), os.environ.get("FT_MAX_RETRIES", "")
    if not job_dir or not max_retries.isdigit():
        return None
    continuations = os.environ.get("FT_MAX_CONTINUATIONS", "")
    return Attempts(Path(job_dir), int(max_retries), int(continuations) if continuations.isdigit() else None,
                    records=os.environ.get("FT_RECORD_ATTEMPTS") == "1")
