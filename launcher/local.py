"""The local backend: run a recipe's entry point directly, or under torchrun for several processes.

The argv built here is the same ``<entry> --config <file> --set ...`` that the cluster
backends run inside their containers.
"""

from __future__ import annotations

import os
import subprocess
import sys

from launcher.recipes import Recipe


def recipe_args(recipe: Recipe, config: str | None, overrides: tuple[str, ...]) -> list[str]:
    args = [str(recipe.entry), "--config", config or str(recipe.config)]
    for item in overrides:
        args += ["--set", item]
    return args


def command(recipe: Recipe, config: str | None, overrides: tuple[str, ...], nproc: int) -> list[str]:
    args = recipe_args(recipe, config, overrides)
    if nproc == 1:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def check(recipe: Recipe, config: str | None, overrides: tuple[str, ...]) -> int:
    """Validate config and data in one process (so errors print once), without training."""
    return subprocess.run([sys.executable, *recipe_args(recipe, config, overrides), "--check"],
                          stdout=subprocess.DEVNULL).returncode


def run(recipe: Recipe, config: str | None, overrides: tuple[str, ...], nproc: int) -> int:
    if nproc > 1:
        code = check(recipe, config, overrides)
        if code != 0:
            return code
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.run(command(recipe, config, overrides, nproc), env=env).returncode
