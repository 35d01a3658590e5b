"""The local backend: run a recipe's entry point directly, or under torchrun for several processes.

The argv built here is the same ``<entry> --config <file> --set ...`` that the cluster
backends run inside their containers.
"""

from __future__ import annotations

import os
import subprocess
import sys

from launcher.recipes import Recipe
from launcher.signals import forwarded
from recipekit.errors import EXIT_PREEMPTED


def recipe_args(recipe: Recipe, config: str | None, overrides: tuple[str, ...]) -> list[str]:
    args = [str(recipe.entry), "--config", config or str(recipe.config)]
    for item in overrides:
        args.append(f"--set={item}")  # one token, so a value starting with "-" is not taken for an option
    return args


def command(recipe: Recipe, config: str | None, overrides: tuple[str, ...], nproc: int) -> list[str]:
    args = recipe_args(recipe, config, overrides)
    if nproc == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def check(recipe: Recipe, config: str | None, overrides: tuple[str, ...], nproc: int = 1) -> int:
    """Validate config and data in one process (so errors print once), without training."""
    # WORLD_SIZE lets checks that depend on the process count (e.g. pipeline stages) run here too.
    env = {**os.environ, "WORLD_SIZE": str(nproc)}
    return subprocess.run([sys.executable, *recipe_args(recipe, config, overrides), "--check"],
                          stdout=subprocess.DEVNULL, env=env).returncode


def run(recipe: Recipe, config: str | None, overrides: tuple[str, ...], nproc: int) -> int:
    """Run to completion, forwarding SIGTERM/SIGUSR1 to the training processes.

    The recipes turn those signals into "checkpoint, then exit 143". Under torchrun they go to
    the workers, not to torchrun itself (which would kill its workers without a checkpoint), and
    the launcher reports 143 rather than torchrun's generic failure.
    """
    if nproc > 1:
        code = check(recipe, config, overrides, nproc)
        if code != 0:
            return code
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    proc = subprocess.Popen(command(recipe, config, overrides, nproc), env=env)
    with forwarded(proc, to_workers=nproc > 1) as signals:
        code = proc.wait()
    if signals and nproc > 1 and code != 0:
        return EXIT_PREEMPTED
    return code
