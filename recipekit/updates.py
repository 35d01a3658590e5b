"""Every trainable parameter group moves: checked at the first optimizer step that should move it.

A group of the optimizer that has gradients and a learning rate, and still does not change in a
step, is trained by nothing: its groups were made from other tensors than the ones the model trains
(built before the adapters existed), or something between the optimizer and the weights drops the
update. The run would end with exit 0 and that group at its starting values. So each group is
compared with itself across the first step in which it should move: one that did not stops the run
with ``ParametersFrozen`` (exit 1, one line naming the group). Trainable parameters that are in no
group at all stop it at the first step.

A group "should move" in a step where its learning rate is above 0 (a warmup step at 0 is not one)
and some of its elements have a gradient: an AdamW step moves such an element by about the learning
rate. Only elements whose value that can change in their precision are watched (so a learning rate
below the float resolution of a weight is not mistaken for a frozen group), at most ``WATCHED``
elements per tensor, those with the largest gradients.
"""

from __future__ import annotations

from typing import Any

from recipekit.errors import ParametersFrozen

WATCHED = 16  # elements per tensor compared across the step
TENSORS = 8  # tensors per group compared across the step
GIVE_UP_AFTER = 50  # optimizer steps: a group that never gets a gradient by then is not checked


class FirstUpdateCheck:
    """``before(optimizer, model)`` just before ``optimizer.step()``, ``after(optimizer)`` just after it; a no-op
    once every group has been seen to move."""

    def __init__(self):
        self.names: dict[int, str] = {}
        self.moved: set[int] = set()
        self.steps = 0
        self.pending: dict[int, list[tuple[Any, Any, Any]]] = {}

    def before(self, optimizer, model) -> None:
        self.pending = {}
        if self.steps >= GIVE_UP_AFTER:
            return
        self.steps += 1
        groups = optimizer.param_groups
        if self.steps == 1:  # the model as it trains: with its adapters, wrapped or not
            self.names = {id(p): name for name, p in model.named_parameters()}
            grouped = {id(p) for group in groups for p in group["params"]}
            missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in grouped]
            if missing:
                raise ParametersFrozen(f"{len(missing)} trainable tensors are in no optimizer group, so nothing "
                                       f"trains them (first: {missing[0]}); the optimizer was built from other "
                                       "tensors than the model trains, which is a bug (please report it)")
        for index, group in enumerate(groups):
            if index in self.moved or not group.get("lr"):
                continue
            watched = [w for w in (watch(p, group["lr"]) for p in group["params"]) if w is not None][:TENSORS]
            if watched:
                self.pending[index] = watched

    def after(self, optimizer) -> None:
        import torch

        for index, watched in self.pending.items():
            if not any(not torch.equal(local(p).detach().flatten()[at], was) for p, at, was in watched):
                raise ParametersFrozen(describe(index, optimizer.param_groups[index], self.names, self.steps))
            self.moved.add(index)
        self.pending = {}
        if len(self.moved) == len(optimizer.param_groups):
            self.steps = GIVE_UP_AFTER


def local(tensor):
    """A DTensor's shard on this rank (FSDP), else the tensor."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local else tensor


def watch(param, lr: float):
    """(param, flat indices, their values) for the elements with the largest gradients that a step of ``lr``
    can visibly move; None if there are none."""
    import torch

    grad = param.grad
    if grad is None or not param.is_floating_point():
        return None
    values, grads = local(param).detach().flatten(), local(grad).detach().flatten()
    if grads.numel() == 0:
        return None
    at = torch.topk(grads.abs(), min(WATCHED * 4, grads.numel())).indices
    resolution = torch.finfo(values.dtype).eps * values[at].abs().float() * 4
    at = at[(grads[at].abs() > 1e-6) & (resolution < lr)][:WATCHED]
    return None if at.numel() == 0 else (param, at, values[at].clone())


def describe(index: int, group: dict, names: dict[int, str], step: int) -> str:
    params = group["params"]
    first = next((names[id(p)] for p in params if id(p) in names), "?")
    return (f"optimizer parameter group {index} (lr {group['lr']:.3g}, {len(params)} tensors, first: {first}) did not "
            f"change in optimizer step {step} although it has gradients and a learning rate; nothing trains it, "
            "which is a bug (please report it)")


def trainer_callback():
    """A TrainerCallback running the check around the Trainer's optimizer steps."""
    from transformers import TrainerCallback

    check = FirstUpdateCheck()

    class CheckFirstUpdate(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, optimizer=None, model=None, **kwargs):
            check.before(optimizer, model)

        def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            check.after(optimizer)

    return CheckFirstUpdate()
