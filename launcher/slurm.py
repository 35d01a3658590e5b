"""The Slurm backend: AppSpec + SlurmOptions -> sbatch script (the dry-run request) -> sbatch -> job id.

``dryrun`` is pure: the same job always gives the same script, which is what ``launcher render``
prints and what ``launcher submit`` writes next to the job's outputs and hands to
``sbatch --parsable``. ``status``/``logs``/``cancel`` use scontrol, the job's output file and
scancel (launcher/slurm_client.py).

Values written into ``#SBATCH`` lines cannot be quoted (sbatch reads them literally), so job
names, partitions, accounts, QOS, time limits and the paths written there are restricted to safe
characters; every other value is shell-quoted by the template's ``q`` filter, and the resolved
config sits in a here-document whose end marker it may not contain.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import jinja2

from launcher import slurm_client
from launcher.appspec import AppSpec, check_config_text
from launcher.backend import Notice
from launcher.checks import (absolute, check_cpus, check_name, check_path, check_strings, check_time, int_from,
                             no_nul, not_an_option, one_of, optional_count, check_retries, optional_string, shown,
                             time_seconds)
from launcher.errors import FieldError
from launcher.options import option
from launcher.recipes import REPO_ROOT

TEMPLATES = REPO_ROOT / "slurm"
TEMPLATE = "job.sbatch.j2"
SCRIPT_NAME = "job.sbatch"
CONTAINERS = ("none", "apptainer", "singularity", "enroot", "oci")
CONFIG_END = "FT_RECIPES_CONFIG"  # ends the resolved config's here-document in the job script
SBATCH = "#SBATCH lines"
_SLURM_WORDS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*(,[A-Za-z0-9][A-Za-z0-9_.+-]*)*")


def check_slurm_words(name: str, value: Any) -> str | None:
    """A partition, account or QOS name (comma-separated list allowed), written into #SBATCH lines."""
    if value is not None and (not isinstance(value, str) or not _SLURM_WORDS.fullmatch(value)):
        raise FieldError(name, f"must be names of letters, digits, '.', '_', '+' or '-' separated by commas, "
                               f"got {shown(value)}")
    return value


def check_workdir(name: str, value: Any) -> str | None:
    return None if value is None else check_path(name, value, SBATCH)


def check_mounts(name: str, value: Any) -> tuple[str, ...]:
    mounts = check_strings(name, value)
    for mount in mounts:
        if not mount.split(":")[0] or "," in mount or mount.startswith("-"):  # SRC given, and one srun word
            raise FieldError(name, f"must be non-empty paths without ',' (SRC[:DST[:FLAGS]]), got {shown(mount)}")
    return mounts


def check_modules(name: str, value: Any) -> tuple[str, ...]:
    return tuple(not_an_option(name, module) for module in check_strings(name, value))


# How a job asks for its GPUs: --gpus-per-node (Slurm's GPU options) or --gres=gpu:N (generic
# resources, what older sites and some accounting setups expect). Slurm refuses the two together.
GPU_REQUESTS = ("gpus-per-node", "gres")
_MEM = re.compile(r"[0-9]{1,9}[KMGT]?")


def check_mem(name: str, value: Any) -> str | None:
    """Slurm's --mem: a size with an optional unit K, M (the default), G or T; 0 asks for all of each node's."""
    if value is None:
        return None
    text = str(value)
    if isinstance(value, bool) or not _MEM.fullmatch(text):
        raise FieldError(name, f"must be a size such as 200G, 512000M or 0 (all of the node's memory), got {shown(value)}")
    return text


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise FieldError(name, f"must be true or false, got {shown(value)}")
    return value


@dataclass(frozen=True)
class SlurmOptions:
    """Where and how a job runs on a Slurm cluster (profile keys and command-line options of the same names)."""

    partition: str | None = option(check=check_slurm_words)
    account: str | None = option(check=check_slurm_words)
    qos: str | None = option(check=check_slurm_words)
    time: str | None = option(check=check_time)               # MINUTES, HH:MM:SS or DAYS-HH:MM:SS
    cpus_per_task: int | None = option(check=check_cpus)      # CPUs for each node's task (all its processes)
    container: str = option("none", check=one_of(CONTAINERS))
    mounts: tuple[str, ...] = option((), check=check_mounts)  # SRC[:DST] bind mounts (oci: the bundle's own)
    workdir: str | None = option(check=check_workdir)         # the dir holding recipes/ on the nodes
    venv: str | None = option(check=optional_string)          # container none: a virtualenv to activate
    modules: tuple[str, ...] = option((), check=check_modules)  # container none: environment modules
    output_root: str = option("outputs/slurm", check=no_nul)  # jobs write to <output_root>/<job name>/
    mem: str | None = option(check=check_mem)  # memory per node (--mem)
    exclusive: bool = option(False, check=check_bool)  # whole nodes only
    gpu_request: str = option("gpus-per-node", check=one_of(GPU_REQUESTS))  # how GPUs are asked for
    signal_lead: int = option(300, check=int_from(1, 86400))   # USR1 this long before the time limit
    max_retries: int = option(3, check=check_retries)       # requeues after failures (killed, ranks lost)
    max_continuations: int | None = option(check=optional_count)  # requeues after a time limit or preemption

    def __post_init__(self):
        limit = time_seconds(self.time) if self.time is not None else None
        if limit and self.signal_lead >= limit:
            raise FieldError("signal_lead", f"{self.signal_lead} s must be shorter than the time limit "
                                            f"{self.time} ({limit} s)")


@dataclass(frozen=True)
class SlurmRequest:
    """The request: one job's sbatch script, and what it says about where the job runs."""

    app: AppSpec
    opts: SlurmOptions
    workdir: str                       # the directory holding recipes/ on the nodes
    mounts: tuple[str, ...]            # bind mounts into the container
    text: str = ""                     # the script

    @property
    def path(self) -> str:
        return f"{self.app.output_dir}/{SCRIPT_NAME}"

    @property
    def config_path(self) -> str:
        return f"{self.app.output_dir}/job-config.yaml"

    @property
    def log(self) -> str:
        """Where Slurm writes the job's output (``%j`` = job id; array tasks: ``%A_%a``): its default
        file in the directory sbatch runs in, which ``submit`` makes the job's. The script names no
        --output: Slurm opens that file before the script runs, so it could not be in the job's
        directory when a plain ``sbatch`` of the rendered script has not created it yet."""
        return f"{self.app.output_dir}/slurm-{'%A_%a' if self.app.workers > 1 else '%j'}.out"

    def submitted_log(self, job_id: str) -> str:
        """The output file of the submitted job (the first worker's, for an array)."""
        return self.log.replace("%j", job_id).replace("%A", job_id).replace("%a", "0")


JOB_ID_FILE = "slurm-job-id"  # in the job's output dir: the job that owns it (submit refuses a second)


def quote(value) -> str:
    """The ``q`` filter: one shell word whatever the value holds."""
    return shlex.quote(str(value))


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters["q"] = quote
    return env


def request(app: AppSpec, opts: SlurmOptions) -> SlurmRequest:
    """The complete sbatch script for ``app`` (placed by SlurmBackend.place) with ``opts``."""
    config = check_config_text(app.config_text)
    if CONFIG_END in config.splitlines():
        raise FieldError("config", f"a line of the resolved config may not be exactly {CONFIG_END}")
    mounts = opts.mounts
    if opts.container not in ("none", "oci") and not any(
            (app.output_dir + "/").startswith(m.split(":")[0].rstrip("/") + "/") for m in mounts):
        mounts += (app.output_dir,)  # the job's config and outputs, at the same path inside
    job = SlurmRequest(app, opts, opts.workdir or str(REPO_ROOT), mounts)
    text = environment().get_template(TEMPLATE).render(app=app, opts=opts, job=job, config_end=CONFIG_END)
    return dataclasses.replace(job, text=text)


def checked_job_id(job: str) -> str:
    if not slurm_client.JOB_ID.fullmatch(job):
        raise FieldError("JOB", f"expected a Slurm job id such as 1234 or 1234_5, got {shown(job)}")
    return job


def unknown_job(job: str) -> FieldError:
    return FieldError("JOB", f"Slurm does not know job {job}, and it was not submitted from here")


class SlurmBackend:
    """Slurm: a batch script per job, submitted with sbatch; one srun task per node runs torchrun."""

    name = "slurm"
    Options = SlurmOptions
    reads = frozenset(f.name for f in dataclasses.fields(SlurmOptions)) | {"preempt"}
    refusals = {"dry_run_server": "server is only for --backend {owner}; use --dry-run"}

    def place(self, draft: AppSpec, opts: SlurmOptions) -> tuple[AppSpec, list[str]]:
        """The job's name as given; its outputs in ``<output_root>/<name>`` unless --set output_dir names them."""
        name = check_name("job_name", draft.job_name)
        if draft.output_dir is not None:
            output_dir = check_path("output_dir", absolute(draft.output_dir), SBATCH)
        else:
            output_dir = f"{check_path('output_root', absolute(opts.output_root), SBATCH)}/{name}"
        if opts.workdir is None:
            check_path("workdir", str(REPO_ROOT), SBATCH)  # the default: this checkout
        if opts.container == "none" and draft.image is not None:
            raise FieldError("image", "is only used with container apptainer, singularity, enroot or oci")
        if opts.container != "none" and not draft.image:
            raise FieldError("image", f"is required with container {opts.container}")
        if draft.image is not None:
            not_an_option("image", draft.image)
        if opts.container == "oci" and opts.mounts:
            raise FieldError("mounts", "with container oci, the bundle's config.json mounts what the job needs "
                                       "(images/oci_bundle.py --mount); drop mounts")
        return dataclasses.replace(draft, job_name=name, output_dir=output_dir), []

    def dryrun(self, app: AppSpec, opts: SlurmOptions) -> SlurmRequest:
        return request(app, opts)

    def dry_run_summary(self, request: SlurmRequest) -> str:
        return f"dry run: would write {request.path} and run sbatch --parsable {request.path}"

    def submit(self, request: SlurmRequest) -> list[str]:
        """Write the script to ``<output dir>/job.sbatch``, submit it, and remember where its log goes."""
        app = request.app
        owner = Path(app.output_dir) / JOB_ID_FILE
        live = [job for job in (slurm_client.show(owner.read_text().strip()) if owner.is_file() else [])
                if not job.ended]
        if live:
            raise FieldError("job_name", f"{app.output_dir} belongs to job {live[0]['JobId']}, which is "
                                         f"{live[0]['JobState']}: two jobs in one directory would resume from each "
                                         f"other's checkpoints; give another --job-name, or cancel it first "
                                         f"(launcher cancel {live[0]['JobId']})")
        Path(app.output_dir).mkdir(parents=True, exist_ok=True)
        Path(request.path).write_text(request.text, encoding="utf-8")
        job_id = slurm_client.sbatch(Path(request.path), cwd=app.output_dir)
        owner.write_text(job_id + "\n", encoding="utf-8")
        slurm_client.remember(job_id, app.job_name, app.output_dir, request.log)
        return [f"submitted job {job_id} ({app.job_name})", f"log:     {request.submitted_log(job_id)}",
                f"outputs: {app.output_dir}",
                f"follow:  launcher logs {job_id} --follow   (status: launcher status {job_id}, "
                f"cancel: launcher cancel {job_id})"]

    def status(self, job: str) -> list[str]:
        job = checked_job_id(job)
        states = slurm_client.show(job)
        logs = slurm_client.log_files(job)
        lines = []
        if not states:
            record = slurm_client.recorded(job)
            if record is None:
                raise unknown_job(job)
            lines.append(f"job {job} ({record['name']}): no longer known to Slurm (finished; see its log)")
        return lines + [state.summary() for state in states] + [f"log: {log}" for log in logs]

    def logs(self, job: str, follow: bool = False) -> Iterator[str]:
        """The job's output file(s); ``follow`` hands them to ``tail -F``, which prints as they grow."""
        files = slurm_client.log_files(checked_job_id(job))
        if not files:
            raise unknown_job(job)
        if follow:
            code = subprocess.run(["tail", "-n", "+1", "-F", *files]).returncode
            if code != 0:
                raise slurm_client.SlurmError(f"tail -F stopped with exit code {code}")
            return
        for path in files:
            if len(files) > 1:
                yield f"==> {path} <==\n"
            try:
                yield Path(path).read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                yield Notice(f"(no log yet at {path}: the job has not started)\n")

    def cancel(self, job: str, preempt: bool = False) -> str:
        """scancel the job; ``preempt``: USR1 instead, so it checkpoints, requeues itself and resumes."""
        slurm_client.cancel(checked_job_id(job), preempt)
        return f"{'sent USR1 to' if preempt else 'cancelled'} job {job}"
