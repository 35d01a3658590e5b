"""The interface every backend sits behind, and the schedulers the command line can name.

A backend turns an AppSpec into a request (``dryrun``: the sbatch script, the manifests, the local
argv) and submits it. A scheduler's jobs outlive the command that submitted them, so it also
names and places a job (``place``) and finds it again later (``status``, ``logs``, ``cancel``).
A local run (launcher/local.py) lives as long as ``launcher run``: the terminal is its log, and
Ctrl-C or SIGTERM stops it.

Options a backend does not read are refused by ``refuse_others``, naming the backend that reads
them, so the command line needs no branch per backend.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterator, Mapping, Protocol

from launcher import options
from launcher.appspec import AppOptions, AppSpec
from launcher.errors import FieldError


class Request(Protocol):
    """What a backend would submit, complete: printing ``text`` shows all of it."""

    text: str


class Backend(Protocol):
    name: str

    def dryrun(self, app: AppSpec, opts: Any) -> Request:
        """The request that would be submitted; nothing is written or sent."""

    def submit(self, request: Any, **connection: Any) -> Any:
        """Submit (or run) the request."""


class Scheduler(Backend, Protocol):
    Options: type                  # its options type: the profile keys and command-line options it reads
    reads: frozenset[str]          # every option key it reads: its Options' and those of its commands
    refusals: Mapping[str, str]    # key -> the message for an option it refuses, where the default won't do

    def place(self, draft: AppSpec, opts: Any) -> tuple[AppSpec, list[str]]:
        """``draft`` named and placed as this scheduler runs it (job name, output dir, shape), and
        checked for what only this scheduler needs; with notes for the user."""

    def dry_run_summary(self, request: Any) -> str:
        """One line: what submitting ``request`` would do."""

    def submit(self, request: Any, **connection: Any) -> list[str]:
        """Submit ``request``; lines for the user: the job's name or id and how to follow it."""

    def status(self, job: str, **connection: Any) -> list[str]:
        """Lines describing a submitted job's state."""

    def logs(self, job: str, follow: bool = False, **connection: Any) -> Iterator[str]:
        """The job's log, as it comes (``follow``: until interrupted); a ``Notice`` belongs on stderr."""

    def cancel(self, job: str, **connection: Any) -> str:
        """Cancel (or preempt) a job; one line saying what was done."""


class Notice(str):
    """A line about the log (rather than of it), for stderr."""


# The schedulers by their --backend name, imported when first used (a local run needs neither).
SCHEDULERS = {"slurm": ("launcher.slurm", "SlurmBackend"), "k8s": ("launcher.k8s", "K8sBackend")}


def get(name: str) -> Scheduler:
    module, cls = SCHEDULERS[name]
    return getattr(importlib.import_module(module), cls)()


def refuse_others(backend: Scheduler, cli: Mapping[str, Any]) -> None:
    """An option that only another scheduler reads is an error naming that scheduler."""
    shared = options.keys(AppOptions)
    for key, value in cli.items():
        if not options.given(value) or key in backend.reads or key in shared:
            continue
        owner = next(name for name in SCHEDULERS if key in get(name).reads)
        raise FieldError(key, backend.refusals.get(key, "only used with --backend {owner}").format(owner=owner))
