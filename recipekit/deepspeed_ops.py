"""DeepSpeed's just-in-time C++ ops, built once per machine without hanging on a stale lock.

DeepSpeed compiles its ops (fused Adam, CPU Adam, the shared-memory all-reduce) on first use
through torch's extension loader, which guards each build with a plain `lock` file. A process
killed while holding it (preemption, OOM kill, SIGKILL) leaves the file behind, and every later
job then waits on it forever. Here every build runs under an flock, which the kernel releases
when its holder dies, so a leftover `lock` file is provably stale and is removed before building.

Two more things would otherwise rebuild the ops over and over: torch runs
whichever `ninja` comes first on PATH, and two ninja versions hash the same build command
differently, so each takes the other's outputs for stale (a pod, an srun step and a shell rarely
agree on PATH); and two installs (two venvs) writing one directory overwrite each other. So the
build always uses the ninja pinned next to this interpreter, in a directory of its own per install.
docs/benchmarks.md has what the rebuilds and compiles avoided here cost.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import sys
import sysconfig
import tempfile
from pathlib import Path

from recipekit import models

log = logging.getLogger(__name__)


def extensions_dir() -> Path:
    """Where the ops are built: TORCH_EXTENSIONS_DIR if set, else a cache dir per Python, torch and install."""
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"])
    import torch

    location = str(Path(importlib.util.find_spec("deepspeed").origin).resolve().parent)
    install = hashlib.sha256(location.encode()).hexdigest()[:8]
    tag = (f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}"
           f"-ds{importlib.metadata.version('deepspeed')}-{install}")
    return models.cache_dir().parent / "torch_extensions" / tag


def use_pinned_ninja() -> None:
    """Put the interpreter's own scripts dir (where requirements.lock's ninja lives) first on PATH."""
    scripts = sysconfig.get_path("scripts")
    if scripts and os.access(os.path.join(scripts, "ninja"), os.X_OK):
        rest = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != scripts]
        os.environ["PATH"] = os.pathsep.join([scripts, *rest])


def _adam(ds_config: dict) -> dict | None:
    """The config's optimizer section if DeepSpeed builds Adam or AdamW from it."""
    optimizer = ds_config.get("optimizer", {})
    return optimizer if str(optimizer.get("type", "")).lower() in ("adam", "adamw") else None


def _offloads_optimizer(ds_config: dict) -> bool:
    return ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device") == "cpu"


def use_torch_adamw(ds_config: dict) -> bool:
    """Have DeepSpeed build torch's fused AdamW instead of its own fused Adam; whether the config changed.
    A ``torch_adam`` the config sets is kept, and offloaded optimizer states keep DeepSpeed's CPU Adam."""
    optimizer = _adam(ds_config)
    if optimizer is not None and not _offloads_optimizer(ds_config):
        params = optimizer.setdefault("params", {})
        if "torch_adam" not in params:
            params.update(torch_adam=True, fused=True)
            return True
    return False


def fused_adam_loadable() -> bool:
    """Whether DeepSpeed's CUDA fused Adam can be had: built into this install (as in the CUDA image) or
    compiled here (a CUDA toolkit where torch's extension builder looks for one)."""
    from deepspeed.git_version_info import installed_ops
    from torch.utils.cpp_extension import CUDA_HOME

    return bool(installed_ops.get("fused_adam")) or CUDA_HOME is not None


def choose_adam(ds_config: dict, on_cpu: bool) -> None:
    """Torch's fused AdamW where DeepSpeed's own fused Adam cannot be had cheaply: on the CPU accelerator
    always (its CPU fused Adam compiles for over a minute and steps no faster), and on a GPU when the CUDA
    one is neither built into the install nor compilable (a pip install without the CUDA toolkit), where
    the engine would otherwise fail as it starts."""
    if on_cpu:
        use_torch_adamw(ds_config)
    elif not fused_adam_loadable() and use_torch_adamw(ds_config):
        log.warning("DeepSpeed's fused Adam is not built into this install and there is no CUDA toolkit to "
                    "compile it: torch's fused AdamW instead (the CUDA image has DeepSpeed's prebuilt)")


def _tensor_parallel(ds_config: dict) -> bool:
    size = ds_config.get("tensor_parallel", {}).get("autotp_size", 0)
    return not isinstance(size, int) or size > 1  # "auto" and the like: assume it is used


def ops_for(ds_config: dict) -> list[str]:
    """The op builders a run with this config loads: DeepSpeed's Adam unless torch's is asked for,
    and the shared-memory all-reduce only under AutoTP tensor parallelism, its one user."""
    ops = []
    optimizer = _adam(ds_config)
    if optimizer is not None and not optimizer.get("params", {}).get("torch_adam"):
        ops.append("CPUAdamBuilder" if _offloads_optimizer(ds_config) else "FusedAdamBuilder")
    if _tensor_parallel(ds_config):
        ops.append("ShareMemCommBuilder")
    return ops


def leave_out_shm_comm() -> None:
    """DeepSpeed's comm layer compiles its shared-memory all-reduce on CPU whenever it starts, yet
    only inference_all_reduce (AutoTP layers) calls it: training's all-reduces go through
    torch.distributed. Marked incompatible (the first thing DeepSpeed checks), it is not built,
    which saves its compile; inference_all_reduce would fall back to torch.distributed."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def prepare(ds_config: dict) -> None:
    """Build (or load) the ops a ZeRO run with this config needs before DeepSpeed asks for them.

    DeepSpeed keeps every loaded op in a per-process table, so its own later loads return these
    modules and never touch the lock files again.
    """
    from deepspeed.accelerator import get_accelerator

    root = extensions_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        guard = open(root / ".build.flock", "w")
    except OSError:  # a read-only cache (e.g. inside an Apptainer .sif): build under the temp dir instead
        root = Path(tempfile.gettempdir()) / f"ft-recipes-{os.getuid()}" / "torch_extensions" / root.name
        log.warning("%s is not writable; building DeepSpeed ops in %s", extensions_dir(), root)
        root.mkdir(parents=True, exist_ok=True)
        guard = open(root / ".build.flock", "w")
    os.environ["TORCH_EXTENSIONS_DIR"] = str(root)
    use_pinned_ninja()
    ops = ops_for(ds_config)
    if "ShareMemCommBuilder" not in ops:
        leave_out_shm_comm()
    with guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        for name in ops:
            builder = get_accelerator().create_op_builder(name)
            if builder is None or not builder.is_compatible(verbose=False):
                continue
            stale = root / builder.NAME / "lock"
            if stale.exists():
                log.warning("removing a stale build lock left by a killed process: %s", stale)
                stale.unlink()
            builder.load(verbose=False)
