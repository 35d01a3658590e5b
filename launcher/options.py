"""Typed options: values that a profile key and a command-line option both set.

An options type (``AppOptions`` in launcher/appspec.py, ``SlurmOptions``, ``K8sOptions``) is a
frozen dataclass whose fields are made with ``option()``. A field's name is its key in
launcher.yaml and the name of its command-line option's value; its ``check`` converts and checks
one value, raising FieldError that names the key. Each value is checked once, where it comes in:
a profile's when its file is read (launcher/profiles.py), the command line's in ``build``. The
type's own ``__post_init__`` checks only how its values fit together.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

Check = Callable[[str, Any], Any]


def option(default: Any = None, *, check: Check, merge: bool = False, in_profile: bool = True) -> Any:
    """A field of an options type. ``merge``: the command line's NAME=VALUE pairs add to the profile's;
    ``in_profile=False``: a command-line option only (not a launcher.yaml key)."""
    metadata = {"check": check, "merge": merge, "in_profile": in_profile}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def keys(options_type: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(options_type)}


def profile_keys(options_type: type) -> dict[str, Check]:
    """The launcher.yaml keys ``options_type`` reads, with their checks."""
    return {name: f.metadata["check"] for name, f in keys(options_type).items() if f.metadata["in_profile"]}


def given(value: Any) -> bool:
    """Whether a command-line option was given: click leaves None, False or () when it was not."""
    return value is not None and value is not False and value != () and value != {}


def build(options_type: type, settings: Mapping[str, Any] | None = None, cli: Mapping[str, Any] | None = None):
    """``options_type`` from a profile's settings (checked when its file was read) and the command
    line's options, which win; each command-line value is checked here. Keys of other types are ignored."""
    settings, cli = settings or {}, cli or {}
    values = {}
    for name, spec in keys(options_type).items():
        if given(cli.get(name)):
            value = spec.metadata["check"](name, cli[name])
            values[name] = {**settings.get(name, {}), **value} if spec.metadata["merge"] else value
        elif settings.get(name) is not None:  # a key left empty in the profile keeps the default
            values[name] = settings[name]
    return options_type(**values)
