"""What a recipe process sets up before its ``main`` runs: logging, the libraries it leaves out of
its imports, and an exit without the interpreter's last garbage collections.

Leaving a library out and skipping the collections save start-up and shut-down time in every
process and rank; docs/benchmarks.md has the measurements.
"""

from __future__ import annotations

import atexit
import functools
import gc
import logging
import os
import sys
from typing import Any

from recipekit import distributed, models
from recipekit.schema import ModelOptions


def setup_logging() -> None:
    """Rank 0 logs from INFO up; every other rank only its warnings and errors, each line naming the rank
    (Python warnings included), so a job's log holds each progress line once."""
    main = distributed.is_main()
    where = "" if main else f"rank {distributed.rank()} "
    logging.basicConfig(level=logging.INFO if main else logging.WARNING, datefmt="%H:%M:%S",
                        format=f"%(asctime)s {where}%(levelname)s %(name)s: %(message)s")
    if not main:
        logging.captureWarnings(True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes warns on import about optional CPU kernels it downloads from a hub; irrelevant offline.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def leave_out_bitsandbytes(opts: ModelOptions) -> None:
    """Hide bitsandbytes from imports in a process that never loads a quantized model.

    peft imports it whenever it is installed, and bitsandbytes wraps its CPU kernels in
    torch.compile at import, which loads torch's dynamo and inductor in every process, every rank.
    peft and transformers then see it as not installed. A checkpoint saved quantized needs it, so
    a Hub model (whose config is not at hand) keeps it too.
    """
    if not opts.may_load_quantized() and models.saved_unquantized(opts.model_name):
        import_as_absent("bitsandbytes")


def leave_out_deepspeed(cfg: Any) -> None:
    """Hide DeepSpeed from imports unless the recipe's Config sets ``uses_deepspeed``.

    accelerate imports it whenever it is installed, just to recognise a DeepSpeed engine: some 400
    modules in every process and rank.
    """
    if not getattr(cfg, "uses_deepspeed", False):
        import_as_absent("deepspeed")


def import_as_absent(package: str) -> None:
    """Make ``package`` look not installed to this process (unless it is imported already)."""
    sys.modules.setdefault(package, None)  # a None entry makes find_spec and import say "absent"


@functools.cache
def skip_garbage_collection_at_exit() -> None:
    """At exit, take every object out of the interpreter's last garbage collections (``gc.freeze``).

    After importing trl the process holds about half a million objects, and walking them at
    shutdown costs every rank of every run CPU time with nothing left to free: outputs are written
    and files closed by then, and the OS reclaims the memory. Registered before ``main`` runs, so
    it runs after the handlers of the libraries ``main`` imports (last in, first out).
    """
    atexit.register(gc.freeze)
