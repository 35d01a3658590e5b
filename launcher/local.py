"""The local backend: run a recipe's entry point on this machine, directly or under torchrun.

The argv built here is the same ``<entry> --config <file> --set ...`` that the cluster backends
run inside their containers. A local run lives as long as ``launcher run``: its log is the
terminal, and SIGTERM/SIGUSR1 sent to the launcher reach the training processes. So do the
terminal's signals (Ctrl-C, Ctrl-\\, a hangup): the training processes run in a session of their
own, so those reach the launcher alone, which passes each on once to every training process, and a
Ctrl-Z pauses them with the launcher until ``fg`` or ``bg``.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Mapping

from launcher.appspec import AppSpec
from launcher.signals import STOP_SIGNALS, forwarded, paused_together
from recipekit.errors import EXIT_PREEMPTED

# What a terminal sends its foreground processes: Ctrl-C, Ctrl-\, and a hangup when it closes. They stop a run
# without a checkpoint, as they would stop the training processes run by hand.
TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)


@dataclass(frozen=True)
class LocalRequest:
    """What ``launcher run`` starts: the command, and the variables it adds to this environment."""

    argv: list[str]
    env: Mapping[str, str]
    nproc: int
    check: list[str] | None = None   # run first, quietly: with several processes its errors then print once

    @property
    def text(self) -> str:
        return shlex.join(self.argv) + "\n"


def check_argv(app: AppSpec) -> list[str]:
    return [sys.executable, *app.recipe.args(app.config, app.overrides), "--check"]


def validate(app: AppSpec) -> int:
    """The recipe's ``--check``: config and data validated, the resolved config printed; its exit code."""
    return subprocess.run(check_argv(app)).returncode


class LocalBackend:
    name = "local"

    def dryrun(self, app: AppSpec, opts: None = None) -> LocalRequest:
        """One process runs the entry point itself; more run under torchrun (DDP, gloo on CPU)."""
        args = app.recipe.args(app.config, app.overrides)
        nproc = app.nproc_per_node
        threads = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}  # the cores, shared out
        if nproc == 1:
            return LocalRequest([sys.executable, *args], threads, nproc)
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
        return LocalRequest(argv, threads, nproc, check=check_argv(app))

    def submit(self, request: LocalRequest) -> int:
        """Run to completion, forwarding SIGTERM/SIGUSR1 and the terminal's signals to the training processes;
        the exit code.

        A run that one of the terminal's signals stopped reports 128 + the signal (130 for Ctrl-C), and one of
        several processes that SIGTERM/SIGUSR1 stopped 143, not torchrun's generic failure.
        """
        if request.check is not None:
            # WORLD_SIZE lets checks that depend on the process count (e.g. pipeline stages) run here too.
            code = subprocess.run(request.check, stdout=subprocess.DEVNULL,
                                  env={**os.environ, "WORLD_SIZE": str(request.nproc)}).returncode
            if code != 0:
                return code
        env = dict(os.environ)
        for key, value in request.env.items():
            env.setdefault(key, value)
        # A session of its own: the terminal's Ctrl-C would otherwise reach a process twice (from the terminal
        # and from here), or reach the torchrun agent, which then stops its workers itself and exits 1.
        proc = subprocess.Popen(request.argv, env=env, start_new_session=True)
        with forwarded(proc, to_workers=request.nproc > 1, signals=(*STOP_SIGNALS, *TERMINAL_SIGNALS)) as signals, \
                paused_together(proc):
            code = proc.wait()
        ended_by = [sig for sig in signals if sig in TERMINAL_SIGNALS]
        if ended_by and code != 0:
            return 128 + ended_by[0]  # 130 for Ctrl-C
        if signals and request.nproc > 1 and code != 0:
            return EXIT_PREEMPTED
        return code
