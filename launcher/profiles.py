"""Named cluster profiles from ``launcher.yaml``: where and how jobs run on a cluster.

Two files are read, the later one winning for a profile of the same name:

1. ``launcher.yaml`` at the repository root (the examples that ship with the project),
2. ``~/.config/ft-recipes/launcher.yaml`` (``$XDG_CONFIG_HOME/ft-recipes/launcher.yaml``), yours.

::

    default_profile: mycluster        # used when --profile is not given (optional)
    profiles:
      mycluster:
        partition: gpu
        time: "08:00:00"
        container: apptainer
        image: /shared/images/ft-recipes.sif
        output_root: /shared/ft-recipes/outputs
        env: {HF_HOME: /shared/hf-cache}

Both files are checked strictly: an unknown key is an error that names its close matches, and
every value is checked for its type and for what may safely reach a job script. Command-line
options (``--partition``, ``--time`` ...) override the chosen profile's values.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from launcher import jobspec, k8s_fields
from launcher.jobspec import FieldError, shown
from launcher.recipes import REPO_ROOT

REPO_FILE = REPO_ROOT / "launcher.yaml"
TOP_LEVEL = ("default_profile", "profiles")


@dataclass(frozen=True)
class Profile:
    name: str = "default"
    partition: str | None = None      # Slurm partition(s), account and QOS
    account: str | None = None
    qos: str | None = None
    time: str | None = None           # time limit: MINUTES, HH:MM:SS or DAYS-HH:MM:SS
    cpus_per_task: int | None = None  # CPUs for each node's task (all its processes)
    container: str = "none"           # none | apptainer | singularity | enroot (pyxis)
    image: str | None = None          # .sif path (apptainer) or image/squashfs (enroot)
    mounts: tuple[str, ...] = ()      # SRC[:DST] bind mounts into the container
    workdir: str | None = None        # the dir holding recipes/ where jobs run; default: this checkout
    venv: str | None = None           # container none: a virtualenv to activate on the nodes
    modules: tuple[str, ...] = ()     # container none: environment modules to load
    output_root: str = "outputs/slurm"  # jobs write to <output_root>/<job name>/ (a shared filesystem)
    env: dict[str, str] = field(default_factory=dict)  # exported in the job
    signal_lead: int = 300            # USR1 this many seconds before the time limit: checkpoint, requeue
    max_retries: int = 3              # requeues after a preemption or a killed node
    # Kubernetes (--backend k8s); `image` above is then the container image, `time` the job's deadline.
    namespace: str | None = None      # default: the kubeconfig context's namespace
    pvc: str | None = None            # PersistentVolumeClaim mounted at /outputs (default ft-recipes-outputs)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict, ...] = ()
    priority_class: str | None = None
    kueue_queue: str | None = None    # Kueue LocalQueue: the kueue.x-k8s.io/queue-name label
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    service_account: str | None = None
    hf_token_secret: str | None = None  # SECRET[:KEY] -> env HF_TOKEN (key default HF_TOKEN)
    wandb_secret: str | None = None     # SECRET[:KEY] -> env WANDB_API_KEY (key default WANDB_API_KEY)
    secret_env: dict[str, str] = field(default_factory=dict)  # {ENV_NAME: SECRET[:KEY]}
    backoff_limit: int | None = None  # pod restarts before the job fails (default 3)
    ttl_seconds_after_finished: int | None = None  # delete the finished job after this (default 7 days)
    clean_pod_policy: str | None = None  # Running (default) | All | None
    memory: str | None = None         # memory request and limit of each pod, e.g. 200Gi
    training_runtime: str | None = None  # --api trainjob: the ClusterTrainingRuntime (default torch-distributed)


FIELDS = {f.name: f for f in dataclasses.fields(Profile) if f.name != "name"}
# Keys only one backend reads; the other backend ignores them in a profile, and refuses them as options.
SLURM_KEYS = ("partition", "account", "qos", "container", "mounts", "workdir", "venv", "modules", "output_root",
              "signal_lead", "max_retries")
K8S_KEYS = ("namespace", "pvc", "node_selector", "tolerations", "priority_class", "kueue_queue", "labels",
            "annotations", "service_account", "hf_token_secret", "wandb_secret", "secret_env", "backoff_limit",
            "ttl_seconds_after_finished", "clean_pod_policy", "memory", "training_runtime")
MERGED_KEYS = ("env", "labels", "annotations", "node_selector", "secret_env")  # options add to the profile's


def check_value(key: str, value: Any) -> Any:
    """``value`` for profile key ``key``, converted (lists to tuples) and checked; FieldError otherwise."""
    if key in ("partition", "account", "qos"):
        return jobspec.check_slurm_words(key, value)
    if key == "time":
        return jobspec.check_time(key, str(value) if isinstance(value, int) and not isinstance(value, bool)
                                  else value)
    if key == "cpus_per_task":
        return None if value is None else jobspec.check_int(key, value, 1, 4096)
    if key == "signal_lead":
        return jobspec.check_int(key, value, 1, 86400)
    if key == "max_retries":
        return jobspec.check_int(key, value, 0, 100)
    if key == "container":
        if value not in jobspec.CONTAINERS:
            raise FieldError(key, f"must be one of {', '.join(jobspec.CONTAINERS)}, got {shown(value)}")
        return value
    if key in ("image", "venv"):
        return None if value is None else jobspec.no_nul(key, value)
    if key == "workdir":
        return None if value is None else jobspec.check_sbatch_path(key, value)
    if key == "output_root":
        return jobspec.no_nul(key, value)
    if key in ("mounts", "modules"):
        return jobspec.check_strings(key, value)
    if key == "env":
        return dict(jobspec.check_env(key, value))
    if key in K8S_KEYS:
        return check_k8s_value(key, value)
    raise FieldError(key, unknown_key(key, FIELDS))


def check_k8s_value(key: str, value: Any) -> Any:
    if value is None and key not in ("node_selector", "tolerations", "labels", "annotations", "secret_env"):
        return None
    if key == "namespace":
        return k8s_fields.check_dns1123_label(key, value)
    if key in ("pvc", "priority_class", "service_account", "training_runtime"):
        return k8s_fields.check_dns1123_subdomain(key, value)
    if key == "kueue_queue":  # a LocalQueue name that is also a label value
        return k8s_fields.check_label_value(key, k8s_fields.check_dns1123_subdomain(key, value, max_length=63))
    if key in ("node_selector", "labels"):
        return k8s_fields.check_labels(key, value or {})
    if key == "annotations":
        return k8s_fields.check_annotations(key, value or {})
    if key == "tolerations":
        return k8s_fields.check_tolerations(key, value or ())
    if key == "hf_token_secret":
        k8s_fields.check_secret_ref(key, value, "HF_TOKEN")
        return value
    if key == "wandb_secret":
        k8s_fields.check_secret_ref(key, value, "WANDB_API_KEY")
        return value
    if key == "secret_env":
        return k8s_fields.check_secret_env(key, value or {})
    if key == "backoff_limit":
        return k8s_fields.check_count(key, value, 0, 100)
    if key == "ttl_seconds_after_finished":
        return k8s_fields.check_count(key, value, 0, 2**31 - 1)
    if key == "clean_pod_policy":
        return k8s_fields.check_clean_pod_policy(key, value)
    if key == "memory":
        return k8s_fields.check_quantity(key, value)
    raise FieldError(key, unknown_key(key, FIELDS))


def unknown_key(key: Any, known) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=3, cutoff=0.6)
    return "unknown key" + (f"; did you mean {', '.join(close)}?" if close else f" (known: {', '.join(known)})")


class ProfileError(ValueError):
    """A problem in a launcher.yaml, as one line naming the file, the profile and the key."""


def parse(data: Any, where: str) -> tuple[str | None, dict[str, Profile]]:
    """(default profile name, profiles) from the parsed YAML of one launcher.yaml."""
    if data is None:
        return None, {}
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: expected a mapping with 'profiles:', got {type(data).__name__}")
    for key in data:
        if key not in TOP_LEVEL:
            raise ProfileError(f"{where}: {shown(key) if not isinstance(key, str) else key}: "
                               f"{unknown_key(key, TOP_LEVEL)}")
    default = data.get("default_profile")
    if default is not None:
        try:
            jobspec.check_name("default_profile", default)
        except FieldError as exc:
            raise ProfileError(f"{where}: {exc}") from None
    profiles = data.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise ProfileError(f"{where}: profiles: expected a mapping of name: settings")
    found = {}
    for name, settings in profiles.items():
        try:
            jobspec.check_name("profile", name)
        except FieldError as exc:
            raise ProfileError(f"{where}: {exc}") from None
        if settings is None:
            settings = {}
        if not isinstance(settings, dict):
            raise ProfileError(f"{where}: profile {name!r}: expected a mapping of settings")
        values = {}
        for key, value in settings.items():
            try:
                values[key] = check_value(key if isinstance(key, str) else shown(key), value)
            except FieldError as exc:
                raise ProfileError(f"{where}: profile {name!r}: {exc}") from None
        found[name] = Profile(name=name, **values)
    return default, found


def user_file() -> Path:
    root = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(root) / "ft-recipes" / "launcher.yaml"


def read(path: Path) -> tuple[str | None, dict[str, Profile]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read it ({type(exc).__name__})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ProfileError(f"{path}: not valid YAML" + (f" (line {mark.line + 1})" if mark else "")) from None
    return parse(data, str(path))


def available(files: list[Path] | None = None) -> tuple[str | None, dict[str, Profile]]:
    """The default profile's name and every profile, from the repository's and the user's file."""
    default, profiles = None, {}
    for path in files if files is not None else [REPO_FILE, user_file()]:
        if path.is_file():
            file_default, found = read(path)
            default = file_default or default
            profiles.update(found)
    return default, profiles


def load(name: str | None, files: list[Path] | None = None) -> Profile:
    """Profile ``name``; without a name the files' default_profile, or the built-in defaults."""
    default, profiles = available(files)
    name = name or default
    if name is None:
        return Profile()
    if name not in profiles:
        close = difflib.get_close_matches(name, list(profiles), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        known = ", ".join(profiles) or "none defined"
        raise ProfileError(f"--profile: no profile {name!r} in launcher.yaml{hint} (profiles: {known})")
    return profiles[name]


def override(profile: Profile, options: dict[str, Any]) -> Profile:
    """``profile`` with the command line's options (None = not given) applied; FieldError names the key."""
    values = {}
    for key, value in options.items():
        if value is None or value == () or value == {}:
            continue
        if key in MERGED_KEYS:
            values[key] = {**getattr(profile, key), **check_value(key, value)}
        else:
            values[key] = check_value(key, value)
    return dataclasses.replace(profile, **values)
