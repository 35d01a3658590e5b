"""The project's container images: names and default tags, from one version source.

``make images`` tags what it builds with these names (it reads the same ``launcher.__version__``),
and the cluster backends use ``default_image()`` when no image is given. See images/README.md.
"""

from __future__ import annotations

from launcher import __version__

REGISTRY = "ghcr.io/ft-recipes"
NAME = "ft-recipes"
CUDA = "12.8"
VARIANTS = ("cuda", "cpu")


def tag(variant: str = "cuda") -> str:
    """The tag of one variant of this release: ``<version>-cuda<CUDA>`` or ``<version>-cpu``."""
    if variant not in VARIANTS:
        raise ValueError(f"image variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    return f"{__version__}-cuda{CUDA}" if variant == "cuda" else f"{__version__}-cpu"


def default_image(variant: str = "cuda") -> str:
    """The image reference jobs run by default, e.g. ``ghcr.io/ft-recipes/ft-recipes:0.1.0-cuda12.8``."""
    return f"{REGISTRY}/{NAME}:{tag(variant)}"
