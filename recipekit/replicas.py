"""The data-parallel invariant, checked: every rank holds the same trainable parameters.

Data parallelism is only correct while the replicas stay identical; a rank that stops taking part
in the gradient all-reduce trains its own copy on its own shard and nothing else notices. So
ranks compare a checksum of their trainable parameters at every checkpoint, at the end of
training and, on request, every N steps: one all-reduce of two integers per rank. A mismatch
stops the run with ``ReplicasDiverged`` (exit 1, one line naming the ranks and the step).

The checksum adds up the raw bit patterns of the parameters as integers: integer sums are exact
and do not depend on the order they are taken in, so ranks on different CPUs or GPUs agree
exactly when their parameters are bitwise equal, as synchronized replicas are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from recipekit import distributed
from recipekit.errors import ReplicasDiverged

if TYPE_CHECKING:
    import torch

_MODULUS = (1 << 61) - 1  # keeps the position-weighted sum within int64
_INT_OF_SIZE = {8: "int64", 4: "int32", 2: "int16", 1: "int8"}


def checksum(params: Iterable["torch.Tensor"]) -> tuple[int, int]:
    """(sum of the bit patterns of every element, the same with each tensor weighted by its position).

    The second number tells apart replicas that hold the same values in different tensors.
    """
    import torch

    total = weighted = 0
    for index, param in enumerate(params, start=1):
        data = param.detach()
        local = getattr(data, "to_local", None)  # a DTensor: this rank's shard
        data = (local() if local else data).contiguous()
        bits = data.view(getattr(torch, _INT_OF_SIZE[data.element_size()]))
        value = int(bits.sum(dtype=torch.int64)) % _MODULUS  # int64 sums wrap around, still exactly
        total = (total + value) % _MODULUS
        weighted = (weighted + index * value) % _MODULUS
    return total, weighted


def trainable(model) -> list["torch.Tensor"]:
    return [p for p in model.parameters() if p.requires_grad]


def check(params: Iterable["torch.Tensor"], step: int, what: str = "trainable parameters", group=None) -> None:
    """Raise ReplicasDiverged on every rank of ``group`` unless all hold the same ``params`` (collective)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return
    ranks = dist.get_process_group_ranks(group or dist.group.WORLD)
    table = torch.zeros(len(ranks), 2, dtype=torch.int64,
                        device="cuda" if dist.get_backend(group) == "nccl" else "cpu")
    table[dist.get_rank(group)] = torch.tensor(checksum(params), dtype=torch.int64)
    dist.all_reduce(table, group=group)  # each rank fills its own row: the sum is everyone's table
    sums = [tuple(row) for row in table.tolist()]
    if len(set(sums)) > 1:
        raise ReplicasDiverged(describe(ranks, sums, step, what))


def describe(ranks: list[int], sums: list[tuple[int, int]], step: int, what: str) -> str:
    """One line: which ranks hold something else than the first rank's replica, at which step."""
    reference = sums[0]
    same = [rank for rank, value in zip(ranks, sums) if value == reference]
    other = [rank for rank, value in zip(ranks, sums) if value != reference]
    names = lambda found: ("rank " if len(found) == 1 else "ranks ") + ", ".join(map(str, found))  # noqa: E731
    return (f"data-parallel replicas diverged at step {step}: the {what} of {names(other)} differ from "
            f"{names(same)}; gradients were not synchronized, which is a bug (please report it)")


def due(step: int, every: int, saving_or_last: bool) -> bool:
    """Whether to compare at ``step``: before each checkpoint, at the last step, and every ``every`` steps."""
    return saving_or_last or (every > 0 and step % every == 0)


def trainer_callback(every: int = 0):
    """A TrainerCallback that checks the replicas before each checkpoint is written, at the last step
    and every ``every`` steps (0: only those); ``.checked`` lists the steps it checked."""
    from transformers import TrainerCallback

    class CheckReplicas(TrainerCallback):
        def __init__(self):
            self.checked: list[int] = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            # Runs after the Trainer's flow callback has decided on saving and stopping, before the save.
            step = state.global_step
            if distributed.world_size() > 1 and due(step, every, control.should_save or control.should_training_stop):
                check(trainable(model), step)
                self.checked.append(step)
            return control

    return CheckReplicas()
