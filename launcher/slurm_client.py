"""Slurm's commands as the Slurm backend uses them: sbatch, scontrol, scancel, and a record of submitted jobs.

Accounting is not assumed, so there is no ``sacct``: while Slurm knows a job, ``scontrol show job``
describes it; once it has forgotten it (MinJobAge), the record that ``sbatch`` left here still
says where the job's log is.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from launcher.errors import BackendError

JOB_ID = re.compile(r"\d+(_\d+)?")


class SlurmError(BackendError):
    """A Slurm command failed or is missing; the message is one line."""


def command(*args: str, check: bool = True, cwd: str | None = None) -> subprocess.CompletedProcess:
    if shutil.which(args[0]) is None:
        raise SlurmError(f"{args[0]} not found: run this on a Slurm login node, or start the local test "
                         f"cluster with slurm/local-cluster.sh start and export SLURM_CONF")
    result = subprocess.run(list(args), capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0 and "configuration source" in result.stderr:
        raise SlurmError("no Slurm configuration found: run this on a login node of the cluster, or export "
                         "SLURM_CONF (for the local test cluster, see slurm/local-cluster.sh status)")
    if check and result.returncode != 0:
        message = " ".join(result.stderr.split()) or f"exit code {result.returncode}"
        raise SlurmError(f"{args[0]} failed: {message}")
    return result


def sbatch(script: Path, cwd: str | None = None) -> str:
    """``sbatch --parsable SCRIPT`` in ``cwd`` (the job's log goes there); the new job's id."""
    job_id = command("sbatch", "--parsable", str(script), cwd=cwd).stdout.strip().split(";")[0]
    if not JOB_ID.fullmatch(job_id):
        raise SlurmError(f"sbatch printed no job id: {job_id!r}")
    return job_id


def cancel(job_id: str, preempt: bool = False) -> None:
    """``scancel`` the job; with ``preempt``, USR1 to its batch shell instead (checkpoint and requeue)."""
    command("scancel", *(["--signal=USR1", "--batch"] if preempt else []), job_id)


# ---------------------------------------------------------------------------------------------
# Jobs already submitted: a small record (job id, name, output dir, log pattern) per submission.


def records_file() -> Path:
    root = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(root) / "ft-recipes" / "slurm-jobs.tsv"


def remember(job_id: str, name: str, job_dir: str, log: str) -> None:
    path = records_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8", newline="") as handle:
        csv.writer(handle, delimiter="\t").writerow([job_id, name, job_dir, log])


def recorded(job_id: str) -> dict[str, str] | None:
    path = records_file()
    if not path.is_file():
        return None
    found = None
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle, delimiter="\t"):
            if len(row) == 4 and row[0] == job_id.split("_")[0]:
                found = dict(zip(("job_id", "name", "job_dir", "log"), row))
    return found


FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                "PREEMPTED")


@dataclass
class JobState:
    """One job (or array task) as ``scontrol show job`` reports it."""

    fields: dict[str, str]

    def __getitem__(self, key: str) -> str:
        return self.fields.get(key, "")

    @property
    def ended(self) -> bool:
        """Whether the job will never run again (a requeued job passes through PENDING, not these states)."""
        return self["JobState"] in FINAL_STATES

    def summary(self) -> str:
        text = f"job {self['JobId']}"
        if self["ArrayJobId"] and self["ArrayTaskId"]:
            text = f"job {self['ArrayJobId']}_{self['ArrayTaskId']}"
        text += f" ({self['JobName']}): {self['JobState']}"
        if self["Reason"] and self["Reason"] != "None":
            text += f" ({self['Reason']})"
        if self["NodeList"] and self["NodeList"] != "(null)":
            text += f" on {self['NodeList']}"
        text += f", run time {self['RunTime']}, restarts {self['Restarts'] or 0}"
        if self["JobState"] not in ("PENDING", "RUNNING", "CONFIGURING", "REQUEUED"):
            text += f", exit code {self['ExitCode']}"
        return text


def parse_scontrol(text: str) -> list[JobState]:
    """``scontrol show job -o`` output: one line per job, ``Key=Value`` pairs."""
    jobs = []
    for line in text.splitlines():
        pairs = re.findall(r"(\w[\w/:]*)=(.*?)(?=\s+\w[\w/:]*=|$)", line.strip())
        if pairs:
            jobs.append(JobState(dict(pairs)))
    return jobs


def show(job_id: str) -> list[JobState]:
    """The job's records in slurmctld (several for an array); [] once Slurm has forgotten it."""
    result = command("scontrol", "show", "job", "-o", job_id, check=False)
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return []
        raise SlurmError("scontrol failed: " + " ".join(result.stderr.split()))
    return parse_scontrol(result.stdout)


def log_files(job_id: str) -> list[str]:
    """The job's output files: from scontrol while Slurm knows the job, else from submit's record."""
    jobs = show(job_id)
    if jobs:
        return list(dict.fromkeys(job["StdOut"] for job in jobs if job["StdOut"]))
    record = recorded(job_id)
    if record is None:
        return []
    pattern = record["log"].replace("%j", job_id).replace("%A", job_id.split("_")[0])
    if "%a" not in pattern:
        return [pattern]
    task = job_id.partition("_")[2]
    if task:
        return [pattern.replace("%a", task)]
    prefix, _, suffix = pattern.partition("%a")
    return sorted(str(p) for p in Path(prefix).parent.glob(Path(prefix).name + "*" + suffix))
