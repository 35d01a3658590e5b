"""Checks for values every backend takes: names, counts, time limits, paths, env vars.

Each ``check_*`` returns the value (converted where a profile gives a list for a tuple) or raises
``FieldError`` naming the field and what is allowed, in one line. Checks only one backend needs
live with it (launcher/slurm.py, launcher/k8s_fields.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from launcher.errors import FieldError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SAFE_PATH = re.compile(r"/[A-Za-z0-9_@+=:,./-]*")  # nothing a shell, #SBATCH or a comment line reads specially
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Names an exported variable may not take: bash's own, Slurm's facts about the job, and the Slurm job
# script's variables (slurm/job.sbatch.j2), and FT_* (the keeper's, launcher/keeper.py). Refused whatever the backend, so one profile serves all.
RESERVED_ENV = {"_", "IFS", "ENV", "SHELLOPTS", "PS4", "UID", "EUID", "PPID", "SHLVL", "RANDOM", "SRANDOM",
                "SECONDS", "LINENO", "PWD", "OLDPWD", "FUNCNAME", "GROUPS", "DIRSTACK", "PIPESTATUS", "HISTCMD",
                "EPOCHSECONDS", "EPOCHREALTIME", "OPTIND", "OPTARG", "job_dir", "config", "config_tmp",
                "max_retries", "max_continuations", "attempts", "counted", "head_node", "head_addr", "rdzv_port",
                "stopped", "step", "code", "kind", "why"}
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def shown(value: Any) -> str:
    """A value as it goes into an error message: one line, control characters escaped."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def no_nul(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise FieldError(name, f"expected a string, got {shown(value)}")
    if "\0" in value:
        raise FieldError(name, "must not contain a NUL character")
    return value


def optional_string(name: str, value: Any) -> str | None:
    return None if value is None else no_nul(name, value)


def not_an_option(name: str, value: str) -> str:
    """A value passed as a command's argument must not read as one of its options."""
    if not value or value.startswith("-"):
        raise FieldError(name, f"must not be empty or start with '-', got {shown(value)}")
    return value


def check_name(name: str, value: Any) -> str:
    """A job or profile name: also a directory name, and written into #SBATCH lines."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise FieldError(name, "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, "
                               f"got {shown(value)}")
    return value


def check_int(name: str, value: Any, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise FieldError(name, f"must be an integer from {low} to {high}, got {shown(value)}")
    return value


def optional_count(name: str, value: Any) -> int | None:
    """A count that may be left unset (null: no limit)."""
    return None if value is None else check_int(name, value, 0, 1_000_000)


def check_cpus(name: str, value: Any) -> int | None:
    """CPUs for each node's processes (Slurm's --cpus-per-task, a pod's CPU request)."""
    return None if value is None else check_int(name, value, 1, 4096)


def check_path(name: str, value: Any, where: str) -> str:
    """An absolute path of safe characters only: it is written where nothing can be quoted (``where``)."""
    if not isinstance(value, str) or not _SAFE_PATH.fullmatch(value) or "/../" in value + "/":
        raise FieldError(name, f"must be an absolute path of letters, digits and _ @ + = : , . / - "
                               f"(it is written into {where}), got {shown(value)}")
    return value


def absolute(path: str) -> str:
    """``path`` made absolute (``~`` expanded) the way a job will see it."""
    return str(Path(path).expanduser().absolute())


def time_seconds(value: Any) -> int | None:
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


def check_time(name: str, value: Any) -> str | None:
    """A time limit (Slurm's format; on Kubernetes the job's deadline). A YAML number is minutes."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is not None and time_seconds(value) is None:
        raise FieldError(name, "must be a Slurm time limit: MINUTES, HH:MM:SS or DAYS-HH:MM:SS, "
                               f"got {shown(value)}")
    return value


def check_env(name: str, env: Any) -> dict[str, str]:
    """Env vars for the job: valid names that nothing else sets, string values."""
    if not isinstance(env, dict):
        raise FieldError(name, f"expected a mapping of NAME: value, got {shown(env)}")
    for key, value in env.items():
        if not isinstance(key, str) or not _ENV_KEY.fullmatch(key):
            raise FieldError(name, f"{shown(key)} is not a valid environment variable name")
        if key in RESERVED_ENV or key.startswith(("BASH", "SLURM_", "FT_")):
            raise FieldError(name, f"{key} is reserved (bash, Slurm or the launcher sets it, or the job script "
                                   f"uses it)")
        if not isinstance(value, str):
            raise FieldError(f"{name}.{key}", f"expected a string (quote numbers in YAML), got {shown(value)}")
        no_nul(f"{name}.{key}", value)
    return dict(env)


def check_strings(name: str, values: Any) -> tuple[str, ...]:
    if not isinstance(values, (list, tuple)):
        raise FieldError(name, f"expected a list of strings, got {shown(values)}")
    return tuple(no_nul(name, v) for v in values)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise FieldError(name, f"must be one of {', '.join(choices)}, got {shown(value)}")
    return value


def one_of(choices: tuple[str, ...]) -> Callable[[str, Any], str]:
    """The check of an option that takes one of ``choices``."""
    return lambda name, value: check_choice(name, value, choices)


def int_from(low: int, high: int) -> Callable[[str, Any], int]:
    """The check of an option that takes an integer from ``low`` to ``high``."""
    return lambda name, value: check_int(name, value, low, high)


def check_retries(name: str, value: Any) -> int | None:
    """max_retries, on every backend; left empty (None) in a profile, the default."""
    return None if value is None else check_int(name, value, 0, 100)
