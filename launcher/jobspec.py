"""A cluster job, typed and validated: what any backend needs to know to run a recipe.

``JobSpec`` is built from a recipe directory, a profile and the command line. Building it runs
the recipe's own ``--check``, so the resolved config it carries is exactly what the recipe
accepted. Every field is validated on construction; a bad value raises ``FieldError`` naming
the field. Values that a backend writes where the shell cannot quote them (Slurm's ``#SBATCH``
lines) are restricted to a safe character set; everything else is shell-quoted when rendered.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from launcher.recipes import REPO_ROOT, Recipe

CONTAINERS = ("none", "apptainer", "singularity", "enroot")
CONFIG_END = "FT_RECIPES_CONFIG"  # ends the resolved config's here-document in a job script

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SLURM_WORDS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*(,[A-Za-z0-9][A-Za-z0-9_.+-]*)*")
_SAFE_PATH = re.compile(r"/[A-Za-z0-9_@+=:,./-]*")  # nothing a shell or #SBATCH would read specially
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Names an exported variable may not take: bash's own, Slurm's facts about the job, and the job
# script's variables (slurm/job.sbatch.j2).
RESERVED_ENV = {"_", "IFS", "ENV", "SHELLOPTS", "PS4", "UID", "EUID", "PPID", "SHLVL", "RANDOM", "SRANDOM",
                "SECONDS", "LINENO", "PWD", "OLDPWD", "FUNCNAME", "GROUPS", "DIRSTACK", "PIPESTATUS", "HISTCMD",
                "EPOCHSECONDS", "EPOCHREALTIME", "OPTIND", "OPTARG", "job_dir", "config", "config_tmp",
                "max_retries", "attempt", "head_node", "head_addr", "rdzv_port", "preempted", "ignore_usr1",
                "step", "code"}
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


class FieldError(ValueError):
    """A bad value, reported as ``<field>: <problem>`` on one line."""

    def __init__(self, name: str, problem: str):
        self.field = name
        self.problem = problem
        super().__init__(f"{name}: {problem}")


def shown(value: Any) -> str:
    """A value as it goes into an error message: one line, control characters escaped."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def no_nul(name: str, value: str) -> str:
    if not isinstance(value, str):
        raise FieldError(name, f"expected a string, got {shown(value)}")
    if "\0" in value:
        raise FieldError(name, "must not contain a NUL character")
    return value


def not_an_option(name: str, value: str) -> str:
    """A value passed as a command's argument must not read as one of its options."""
    if not value or value.startswith("-"):
        raise FieldError(name, f"must not be empty or start with '-', got {shown(value)}")
    return value


def check_name(name: str, value: str) -> str:
    """A job or profile name: also a directory name, and written into #SBATCH lines."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise FieldError(name, "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, "
                               f"got {shown(value)}")
    return value


def check_slurm_words(name: str, value: str | None) -> str | None:
    """A partition, account or QOS name (comma-separated list allowed), written into #SBATCH lines."""
    if value is not None and (not isinstance(value, str) or not _SLURM_WORDS.fullmatch(value)):
        raise FieldError(name, f"must be names of letters, digits, '.', '_', '+' or '-' separated by commas, "
                               f"got {shown(value)}")
    return value


def check_sbatch_path(name: str, value: str) -> str:
    """An absolute path written into #SBATCH lines, where nothing can be quoted or escaped."""
    if not isinstance(value, str) or not _SAFE_PATH.fullmatch(value) or "/../" in value + "/":
        raise FieldError(name, "must be an absolute path of letters, digits and _ @ + = : , . / - "
                               f"(it is written into #SBATCH lines), got {shown(value)}")
    return value


def time_seconds(value: str) -> int | None:
    """Seconds in a Slurm time limit (minutes, m:s, h:m:s, d-h, d-h:m, d-h:m:s); None if malformed."""
    match = _TIME.fullmatch(value) if isinstance(value, str) else None
    if not match:
        return None
    days, a, b, c = (int(g) if g is not None else None for g in match.groups())
    if days is None:
        parts = [x for x in (a, b, c) if x is not None]
        if len(parts) == 1:
            return parts[0] * 60
        if len(parts) == 2:
            return parts[0] * 60 + parts[1]
        return parts[0] * 3600 + parts[1] * 60 + parts[2]
    return days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)


def check_time(name: str, value: str | None) -> str | None:
    if value is not None and time_seconds(value) is None:
        raise FieldError(name, "must be a Slurm time limit: MINUTES, HH:MM:SS or DAYS-HH:MM:SS, "
                               f"got {shown(value)}")
    return value


def check_int(name: str, value: Any, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise FieldError(name, f"must be an integer from {low} to {high}, got {shown(value)}")
    return value


def check_env(name: str, env: Any) -> dict[str, str]:
    if not isinstance(env, dict):
        raise FieldError(name, f"expected a mapping of NAME: value, got {shown(env)}")
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_KEY.fullmatch(key):
            raise FieldError(name, f"{shown(key)} is not a valid environment variable name")
        if key in RESERVED_ENV or key.startswith(("BASH", "SLURM_")):
            raise FieldError(name, f"{key} is reserved (bash or Slurm sets it, or the job script uses it)")
        if not isinstance(value, str):
            raise FieldError(f"{name}.{key}", f"expected a string (quote numbers in YAML), got {shown(value)}")
        no_nul(f"{name}.{key}", value)
    return env


def check_strings(name: str, values: Any) -> tuple[str, ...]:
    if not isinstance(values, (list, tuple)):
        raise FieldError(name, f"expected a list of strings, got {shown(values)}")
    return tuple(no_nul(name, v) for v in values)


@dataclass(frozen=True)
class JobSpec:
    """One training (or search) job on a cluster, independent of the scheduler."""

    recipe: str                       # recipe name, e.g. sft-zero2
    entry: str                        # entry point relative to workdir: recipes/<name>/train.py
    program: Literal["torchrun", "python"]  # train.py runs under torchrun, search.py as workers
    config_text: str                  # resolved config: the recipe's own `--check` output
    job_name: str
    job_dir: str                      # the recipe's output_dir: outputs, resolved config and logs
    nodes: int = 1
    gpus_per_node: int = 0
    nproc_per_node: int = 1           # processes per node (= GPUs per node on GPUs)
    workers: int = 1                  # >1: that many independent workers (a job array)
    profile: str = "default"          # the profile's name, for the record
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    cpus_per_task: int | None = None
    container: str = "none"
    image: str | None = None
    mounts: tuple[str, ...] = ()
    workdir: str = str(REPO_ROOT)
    venv: str | None = None
    modules: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    signal_lead: int = 300            # seconds before the time limit that USR1 asks for a checkpoint
    max_retries: int = 3
    overrides: tuple[str, ...] = ()   # the --set values the config was resolved with, for the record

    def __post_init__(self):
        check_name("recipe", self.recipe)
        check_name("job_name", self.job_name)
        check_name("profile", self.profile)
        if self.program not in ("torchrun", "python"):
            raise FieldError("program", f"must be torchrun or python, got {shown(self.program)}")
        if not re.fullmatch(r"recipes/[A-Za-z0-9][A-Za-z0-9_.-]*/(train|search)\.py", self.entry):
            raise FieldError("entry", f"must be recipes/<name>/train.py or search.py, got {shown(self.entry)}")
        check_sbatch_path("output_dir", self.job_dir)
        check_sbatch_path("workdir", self.workdir)
        check_int("nodes", self.nodes, 1, 10000)
        check_int("gpus_per_node", self.gpus_per_node, 0, 64)
        check_int("nproc_per_node", self.nproc_per_node, 1, 1024)
        check_int("workers", self.workers, 1, 10000)
        check_int("signal_lead", self.signal_lead, 1, 86400)
        check_int("max_retries", self.max_retries, 0, 100)
        if self.cpus_per_task is not None:
            check_int("cpus_per_task", self.cpus_per_task, 1, 4096)
        for name in ("partition", "account", "qos"):
            check_slurm_words(name, getattr(self, name))
        check_time("time", self.time)
        if self.time is not None and time_seconds(self.time) and self.signal_lead >= time_seconds(self.time):
            raise FieldError("signal_lead", f"{self.signal_lead} s must be shorter than the time limit "
                                              f"{self.time} ({time_seconds(self.time)} s)")
        if self.container not in CONTAINERS:
            raise FieldError("container", f"must be one of {', '.join(CONTAINERS)}, got {shown(self.container)}")
        if self.container == "none" and self.image is not None:
            raise FieldError("image", "is only used with container apptainer, singularity or enroot")
        if self.container != "none" and not self.image:
            raise FieldError("image", f"is required with container {self.container}")
        if self.image is not None:
            not_an_option("image", no_nul("image", self.image))
        if self.venv is not None:
            no_nul("venv", self.venv)
        for module in check_strings("modules", self.modules):
            not_an_option("modules", module)
        for mount in check_strings("mounts", self.mounts):
            if not mount or "," in mount or mount.startswith("-"):
                raise FieldError("mounts", "must be non-empty paths without ',' (SRC[:DST[:FLAGS]]), "
                                           f"got {shown(mount)}")
        check_env("env", self.env)
        check_strings("overrides", self.overrides)
        self.check_config_text()
        if self.program == "python" and self.nodes != 1:
            raise FieldError("nodes", "a search recipe's workers run on one node each; use --workers for more")
        if self.program == "torchrun" and self.workers != 1:
            raise FieldError("workers", f"only search recipes (search.py) run as several workers, not {self.recipe}")

    def check_config_text(self) -> None:
        text = no_nul("config", self.config_text)
        if not text.endswith("\n"):
            raise FieldError("config", "the resolved config must end with a newline")
        if CONFIG_END in text.splitlines():
            raise FieldError("config", f"a line of the resolved config may not be exactly {CONFIG_END}")

    @property
    def config_path(self) -> str:
        return f"{self.job_dir}/job-config.yaml"


# ---------------------------------------------------------------------------------------------
# Building a spec from a recipe, a profile and the command line


def override_key(item: str) -> str:
    return item.partition("=")[0].strip()


@functools.lru_cache(maxsize=64)
def resolve_config(recipe: Recipe, config: str | None, overrides: tuple[str, ...]) -> str:
    """The recipe's own ``--check`` output: the full, validated config it will train with.

    Run from the repository root, as the job runs from its workdir; paths inside this checkout
    come back relative, so they hold wherever the job's copy of the repository is.
    """
    args = [sys.executable, str(recipe.entry.resolve()), "--config", str(Path(config or recipe.config).resolve())]
    for item in overrides:
        args += ["--set", item]
    result = subprocess.run([*args, "--check"], cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(result.returncode)
    return result.stdout.replace(f"{REPO_ROOT}/", "")


def build(recipe: Recipe, profile, *, config: str | None = None, overrides: tuple[str, ...] = (),
          nodes: int = 1, gpus_per_node: int = 0, nproc_per_node: int | None = None, workers: int = 1,
          job_name: str | None = None) -> JobSpec:
    """Check the inputs, resolve the recipe's config, and return the JobSpec (FieldError on bad input).

    ``profile`` is a ``launcher.profiles.Profile`` with the command line's overrides applied.
    The job directory is the recipe's ``output_dir``: ``<output_root>/<job name>`` unless
    ``--set output_dir=...`` names another one.
    """
    job_name = check_name("job_name", job_name if job_name is not None else recipe.name)
    for item in overrides:
        no_nul("--set", item)
    given = [item.partition("=")[2] for item in overrides if override_key(item) == "output_dir"]
    if given:
        job_dir = str(Path(given[-1]).expanduser().absolute())
        check_sbatch_path("output_dir", job_dir)
    else:
        root = str(Path(profile.output_root).expanduser().absolute())
        check_sbatch_path("output_root", root)
        job_dir = f"{root}/{job_name}"
        overrides = (*overrides, f"output_dir={job_dir}")
    program = "python" if recipe.entry.name == "search.py" else "torchrun"
    fields_from_profile = {f.name: getattr(profile, f.name) for f in fields(JobSpec) if hasattr(profile, f.name)}
    fields_from_profile["workdir"] = profile.workdir or str(REPO_ROOT)
    fields_from_profile["mounts"] = tuple(profile.mounts)
    if profile.container != "none" and not any(
            (job_dir + "/").startswith(m.split(":")[0].rstrip("/") + "/") for m in profile.mounts):
        fields_from_profile["mounts"] += (job_dir,)  # the job's config and outputs, at the same path inside
    nproc = nproc_per_node if nproc_per_node is not None else max(1, gpus_per_node)
    # Check everything that does not need the config before running the recipe's --check.
    probe = dict(recipe=recipe.name, entry=f"recipes/{recipe.path.resolve().name}/{recipe.entry.name}",
                 program=program, job_name=job_name, job_dir=job_dir, nodes=nodes, gpus_per_node=gpus_per_node,
                 nproc_per_node=nproc, workers=workers, profile=profile.name, overrides=tuple(overrides),
                 **fields_from_profile)
    JobSpec(config_text="placeholder: true\n", **probe)
    return JobSpec(config_text=resolve_config(recipe, config, tuple(overrides)), **probe)
