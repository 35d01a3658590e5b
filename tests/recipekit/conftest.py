"""Fixtures of the recipekit tests."""

from __future__ import annotations

import signal

import pytest


@pytest.fixture
def stop():
    """A StopOnSignal whose handlers are taken down again afterwards."""
    from recipekit.preemption import StopOnSignal

    saved = {sig: signal.getsignal(sig) for sig in StopOnSignal.SIGNALS}
    yield StopOnSignal()
    for sig, handler in saved.items():
        signal.signal(sig, handler)
