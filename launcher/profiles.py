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

A profile's keys are those of the job itself (``env``, ``image``: ``appspec.AppOptions``) and of
every backend's options (``slurm.SlurmOptions``, ``k8s.K8sOptions``), so one profile can describe
a site's Slurm and Kubernetes clusters: each backend reads its own keys and ignores the others.
Both files are checked strictly: an unknown key is an error that names its close matches, and
every value is checked, when the file is read, by its option's own check. ``options.build``
turns a profile's settings and the command-line options (``--partition``, ``--time`` ...),
which win, into one backend's options.
"""

from __future__ import annotations

import difflib
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from launcher import options
from launcher.appspec import AppOptions
from launcher.checks import check_name, shown
from launcher.errors import FieldError, ProfileError
from launcher.recipes import REPO_ROOT

REPO_FILE = REPO_ROOT / "launcher.yaml"
TOP_LEVEL = ("default_profile", "profiles")


@dataclass(frozen=True)
class Profile:
    """A named set of checked settings: keys of the job itself (env, image) and of each backend's options."""

    name: str = "default"
    settings: Mapping[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)


@functools.cache
def keys() -> dict[str, Callable[[str, Any], Any]]:
    """Every key a profile may hold, with its check: the job's own, then each backend's options'.
    A key two backends read (time, cpus_per_task) is checked the same way for both."""
    from launcher import k8s, slurm

    found: dict[str, Callable[[str, Any], Any]] = {}
    for options_type in (AppOptions, slurm.SlurmOptions, k8s.K8sOptions):
        for key, check in options.profile_keys(options_type).items():
            assert found.setdefault(key, check) is check, f"{key} is checked two ways"
    return found


def check_value(key: str, value: Any) -> Any:
    """``value`` for profile key ``key``, converted (lists to tuples) and checked; FieldError otherwise."""
    known = keys()
    if key not in known:
        raise FieldError(key, unknown_key(key, known))
    return known[key](key, value)


def unknown_key(key: Any, known) -> str:
    close = difflib.get_close_matches(str(key), list(known), n=3, cutoff=0.6)
    return "unknown key" + (f"; did you mean {', '.join(close)}?" if close else f" (known: {', '.join(known)})")


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
            check_name("default_profile", default)
        except FieldError as exc:
            raise ProfileError(f"{where}: {exc}") from None
    profiles = data.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise ProfileError(f"{where}: profiles: expected a mapping of name: settings")
    found = {}
    for name, settings in profiles.items():
        try:
            check_name("profile", name)
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
        found[name] = Profile(name=name, settings=values)
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
