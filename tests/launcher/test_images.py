"""launcher/images.py: the default image tags, from the one version source that `make images` reads too."""

from __future__ import annotations

import pytest

import launcher
from launcher import images


def test_default_images_are_the_release_tags():
    assert images.default_image() == f"ghcr.io/ft-recipes/ft-recipes:{launcher.__version__}-cuda12.8"
    assert images.default_image("cuda") == images.default_image()
    assert images.default_image("cpu") == f"ghcr.io/ft-recipes/ft-recipes:{launcher.__version__}-cpu"


def test_an_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="cuda, cpu"):
        images.default_image("rocm")
