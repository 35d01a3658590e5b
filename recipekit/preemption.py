"""Stopping on a signal: SIGTERM/SIGUSR1 mean "save a checkpoint at the next step boundary, then stop".

A recipe makes one ``StopOnSignal`` when training starts and hands it to whatever trains: its own
loop asks ``agreed()`` after every step, a transformers Trainer gets ``trainer_callback()``, and
either way ``stopped`` then says, on every rank alike, that the run stopped on a signal and must
end with ``Preempted`` (exit 143, so the scheduler retries and the rerun resumes).
"""

from __future__ import annotations

import logging
import signal

from recipekit import distributed

log = logging.getLogger("recipekit")


class StopOnSignal:
    """Installs the SIGTERM/SIGUSR1 handlers; ``received`` is the signal this rank got (None if none),
    ``stopped`` whether ``agreed()`` has found one on any rank."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: int | None = None
        self.stopped = False
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received is None:
            log.warning("received %s: will save a checkpoint at the end of this step and stop",
                        signal.Signals(signum).name)
        self.received = signum

    def agreed(self) -> bool:
        """Whether any rank got a signal (collective: call on every rank at the same point)."""
        self.stopped = self.stopped or distributed.any_rank(self.received is not None)
        return self.stopped

    def trainer_callback(self):
        """A TrainerCallback that asks ``agreed()`` after every step, and on a signal saves and stops."""
        from transformers import TrainerCallback

        stop = self

        class SaveAndStop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if stop.agreed():
                    control.should_save = True
                    control.should_training_stop = True
                return control

        return SaveAndStop()
