"""Stop signals passed on to the training processes: one piece for `launcher run` and the k8s pods.

The recipes turn SIGTERM and SIGUSR1 into "checkpoint at the next step, then exit 143". When
the child is a torchrun agent, the signals go to its workers rather than to the agent, which
would stop them itself without a checkpoint; while it has no workers yet, the agent gets them
and stops before any training started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(p) for p in task.read_text().split()]
        except OSError:
            pass
    return found


@contextlib.contextmanager
def forwarded(proc: subprocess.Popen, to_workers: bool, before_workers: int | None = None,
              afterwards: signal.Handlers | None = None,
              signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[list[int]]:
    """While inside, ``signals`` (by default SIGTERM/SIGUSR1) sent to this process go to ``proc``: with
    ``to_workers`` (``proc`` is a torchrun agent) to its children, or to ``proc`` itself while it has none (as
    ``before_workers``, if given: a signal the agent acts on, and only before the first signal found
    workers; after they have ended the agent is finishing with their code). Once ``proc`` has been
    waited for, they go nowhere (its pid may be reused). Yields the list of signals forwarded so far;
    afterwards the signals get ``afterwards`` as their handler if given (e.g. ``signal.SIG_IGN``), else
    their previous handlers."""
    received: list[int] = []
    had_workers = False

    def forward(signum, frame):
        nonlocal had_workers
        if proc.returncode is not None:
            return
        workers = children(proc.pid) if to_workers else []
        had_workers = had_workers or bool(workers)
        if not workers and had_workers and before_workers is not None:
            return
        received.append(signum)
        for pid in workers or [proc.pid]:
            try:
                os.kill(pid, signum if workers or before_workers is None else before_workers)
            except ProcessLookupError:
                pass

    previous = {sig: signal.signal(sig, forward) for sig in signals}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if afterwards is None else afterwards)


def signal_tree(proc: subprocess.Popen, signum: int) -> None:
    """``signum`` to ``proc``'s process group and to each of its children's groups (a torchrun agent starts its
    workers in sessions of their own); a child that leads no group gets it alone."""
    for pid in [proc.pid, *children(proc.pid)]:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)
        except ProcessLookupError:
            pass


@contextlib.contextmanager
def paused_together(proc: subprocess.Popen) -> Iterator[None]:
    """While inside, a terminal's Ctrl-Z (SIGTSTP to this process) stops ``proc``'s processes and then this one,
    and the SIGCONT of ``fg`` or ``bg`` continues them: started in a session of their own, they would otherwise
    go on training while the shell reports the job stopped."""

    def stop(signum, frame):
        if proc.returncode is None:
            signal_tree(proc, signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGSTOP)

    def resume(signum, frame):
        if proc.returncode is None:
            signal_tree(proc, signal.SIGCONT)

    previous = {sig: signal.signal(sig, handler) for sig, handler in ((signal.SIGTSTP, stop), (signal.SIGCONT, resume))}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
