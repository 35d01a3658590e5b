"""Fixtures of the tests that run the built CPU image (``make test-images``)."""

from __future__ import annotations

import os

import pytest

from tests.images import engine

FREE_GIB = 8  # a rebuilt image layer with the venv (~3 GiB), a bundle of the image (~3.3 GiB), temporary files


@pytest.fixture(scope="session")
def cpu_image() -> str:
    """The CPU image, built (or brought up to date from the layer cache) by images/build.sh.

    Without podman the tests skip, saying what to install; with CI set they fail instead.
    """
    reason = engine.missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the image tests must run, but {reason}")
        pytest.skip(reason)
    engine.require_free_space(FREE_GIB)
    return engine.build_cpu_image()
