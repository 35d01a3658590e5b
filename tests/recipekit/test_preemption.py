"""recipekit.preemption: a signal becomes "save, then stop", asked the same way by every recipe."""

from __future__ import annotations

import os
import signal

import pytest

from recipekit.preemption import StopOnSignal


@pytest.mark.parametrize("sig", StopOnSignal.SIGNALS)
def test_a_signal_is_agreed_on_and_stays_stopped(stop, sig):
    assert not stop.agreed() and not stop.stopped and stop.received is None
    os.kill(os.getpid(), sig)
    assert stop.received == sig
    assert stop.agreed() and stop.stopped
    stop.received = None
    assert stop.agreed()  # latched: a stopped run does not start again


def test_the_trainer_callback_saves_and_stops_after_a_signal(stop):
    from transformers import TrainerControl

    callback = stop.trainer_callback()
    control = callback.on_step_end(None, None, TrainerControl())
    assert not control.should_save and not control.should_training_stop and not stop.stopped
    os.kill(os.getpid(), signal.SIGTERM)
    control = callback.on_step_end(None, None, TrainerControl())
    assert control.should_save and control.should_training_stop and stop.stopped
