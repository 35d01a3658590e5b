"""recipekit.loop: the hand-written loops' schedules follow transformers' curves, step by step; observers see each step."""

from __future__ import annotations

import typing

import pytest

from recipekit import loop
from recipekit.schema import Scheduler


# Every schedule at these (warmup, total), except a polynomial one that is all warmup, where
# transformers divides by total - warmup (see the test after this one).
SCHEDULE_CASES = [(name, warmup, total) for name in typing.get_args(Scheduler)
                  for warmup, total in [(0, 12), (3, 12), (12, 12), (0, 1)]
                  if not (name == "polynomial" and warmup == total)]


@pytest.mark.parametrize("name,warmup,total", SCHEDULE_CASES)
def test_every_schedule_matches_transformers_get_scheduler(name, warmup, total):
    import torch
    from transformers import get_scheduler

    def lrs(make):
        # Two param groups at different rates, as layer-wise learning rates make them.
        weight, bias = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(1))
        optimizer = torch.optim.SGD([{"params": [weight]}, {"params": [bias], "lr": 0.5}], lr=3e-3)
        schedule, seen = make(optimizer), []
        for _ in range(total + 2):  # and past the end, where the decaying schedules hold their floor
            seen += [group["lr"] for group in optimizer.param_groups]
            optimizer.step()
            schedule.step()
        return seen, schedule

    ours, our_schedule = lrs(lambda opt: loop.scheduler(name, opt, warmup, total))
    theirs, their_schedule = lrs(lambda opt: get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total))
    assert ours == pytest.approx(theirs, rel=1e-12, abs=1e-15)
    # A checkpoint's scheduler state (sft-fsdp's saved with transformers' schedulers before) loads into either.
    our_state, their_state = our_schedule.state_dict(), their_schedule.state_dict()
    assert {**our_state, "lr_lambdas": None} == {**their_state, "lr_lambdas": None}
    our_schedule.load_state_dict(their_state)
    their_schedule.load_state_dict(our_state)


def test_a_polynomial_schedule_that_is_all_warmup_ramps_up_then_holds_its_end():
    from recipekit.schema import POLYNOMIAL_LR_END

    factors = [loop.lr_factor("polynomial", step, warmup=4, total=4, lr_init=1.0) for step in range(6)]
    assert factors == [0.0, 0.25, 0.5, 0.75, 1.0, POLYNOMIAL_LR_END]


def test_seeding_repeats_python_numpy_and_torch_draws():
    import random

    import numpy as np
    import torch

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    loop.seed_everything(7)
    first = draws()
    loop.seed_everything(7)
    assert draws() == first
    loop.seed_everything(8)
    assert draws() != first


def test_a_polynomial_schedule_needs_a_learning_rate_above_its_end():
    from recipekit.schema import TrainingOptions

    problems = TrainingOptions(lr_scheduler_type="polynomial", learning_rate=1e-8).check_training()
    assert problems == ["learning_rate: the polynomial schedule decays to 1e-07, so the learning rate must be "
                        "larger; got 1e-08"]
    assert TrainingOptions(lr_scheduler_type="polynomial", learning_rate=1e-6).check_training() == []


def test_observers_see_every_step_and_the_end_only_of_a_loop_that_finished(monkeypatch):
    calls = []

    class Observer:
        def loop_begin(self, model, device, config):
            calls.append(("begin", model, device, config["seed"]))

        def loop_step_end(self, device, items):
            calls.append(("step", len(items)))

        def loop_end(self, steps):
            calls.append(("end", steps))

    monkeypatch.setattr(loop, "added_observers", [Observer, Observer])
    with loop.observed("model", "cpu", {"seed": 1}) as step_end:
        step_end([{}, {}])
        step_end([{}])
    assert calls == [("begin", "model", "cpu", 1)] * 2 + [("step", 2)] * 2 + [("step", 1)] * 2 + [("end", 2)] * 2
    calls.clear()
    with pytest.raises(RuntimeError), loop.observed("model", "cpu", {"seed": 1}) as step_end:
        step_end([{}])
        raise RuntimeError("preempted")
    assert ("end", 1) not in calls and calls[-1] == ("step", 1)
    monkeypatch.setattr(loop, "added_observers", [])
    with loop.observed("model", "cpu", {}) as step_end:  # nobody observing: the loop runs as it would
        step_end([{}])
