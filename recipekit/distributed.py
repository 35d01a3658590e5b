"""The few facts about the process group a recipe needs, from torchrun's environment."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on at least one (a no-op outside torch.distributed)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_sum(*values: float) -> list[float]:
    """Each value summed over every rank, in float64 (collective; the values themselves outside torch.distributed)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(tensor)
    return tensor.tolist()


def init() -> "torch.device":
    """Join the process group torchrun describes (if any) and return this rank's device.

    NCCL with one GPU per local rank when CUDA is present, gloo on CPU. A no-op for a single
    process started without torchrun.
    """
    import torch
    import torch.distributed as dist

    device = torch.device(f"cuda:{local_rank()}") if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if "RANK" in os.environ and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def init_group() -> "torch.device":
    """Like init(), but a single process without torchrun gets a process group of one, so recipes
    that call collectives directly (FSDP, pipelining) run one code path at every world size."""
    import torch.distributed as dist

    device = init()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(),
                                rank=0, world_size=1)
    return device


def init_group_with_rank_env() -> "torch.device":
    """``init_group()``, and for a single process started without torchrun, the rank variables torchrun
    would have set, for libraries that read them instead of asking the group (DeepSpeed)."""
    device = init_group()
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)
    return device


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. filling the datasets cache), then the other ranks (reading it)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# What gloo's and NCCL's errors say when the other end of a collective went away or timed out.
_PEER_FAILURE = ("connection closed by peer", "connection reset by peer", "broken pipe", "connection refused",
                 "timed out", "nccl communicator was aborted", "ncclremoteerror", "ncclsystemerror",
                 "remote worker crashing", "socket timeout")


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says that another rank, the store or the communication backend failed, rather than this
    process: torch.distributed's own error types, or a RuntimeError with the words gloo and NCCL use."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(words in str(exc).lower() for words in _PEER_FAILURE)
