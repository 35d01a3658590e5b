"""Our side of the benchmark: a recipe's own entry point, with the probe added to its trainer.

    python -m bench.ours recipes/sft/train.py --config recipes/sft/config.yaml --set max_steps=20

Arguments after the recipe path are the recipe's own (--config/--set), so this is exactly
``launcher run`` minus the launcher process: the recipe file runs as its own main, and the
trainer it builds gets the probe after its own callbacks (``recipekit.trainers.added_callbacks``).
For the ablation rows, each of these switches one CPU speed path (``recipekit.cpu_speedups``) off:
BENCH_TRL_LOSS=1 (TRL's own loss instead of the plain one), BENCH_FULL_LOGITS=1 (LM head on every
position), BENCH_NO_DOC_ATTENTION=1 (stock SDPA with the packed block mask), BENCH_NO_FROZEN_PREFIX=1
(the frozen layers below the adapters run in every epoch), BENCH_NO_WEIGHT_COPIES=1 (frozen weights cast
at every forward), BENCH_NO_PACKED_WEIGHTS=1 (the kept copies in the plain layout), BENCH_NO_FUSED_LORA=1
(PEFT's own LoRA forward), BENCH_NO_HEAP_REUSE=1 (glibc's malloc with its defaults).
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from recipekit import cpu_speedups, loop, trainers

ABLATIONS = {"BENCH_TRL_LOSS": "plain_loss", "BENCH_FULL_LOGITS": "trained_positions",
             "BENCH_NO_DOC_ATTENTION": "document_attention", "BENCH_NO_FROZEN_PREFIX": "frozen_prefix",
             "BENCH_NO_WEIGHT_COPIES": "frozen_weight_copies",
             "BENCH_NO_PACKED_WEIGHTS": "packed_frozen_weights", "BENCH_NO_FUSED_LORA": "fused_lora",
             "BENCH_NO_HEAP_REUSE": "heap_reuse"}


def main(argv: list[str]) -> None:
    recipe_file = Path(argv[0]).resolve()
    cpu_speedups.switched_off.update(path for env, path in ABLATIONS.items() if os.environ.get(env) == "1")
    trainers.added_callbacks.append(make_probe)
    loop.added_observers.append(make_probe)
    sys.argv = [str(recipe_file), *argv[1:]]
    runpy.run_path(str(recipe_file), run_name="__main__")


def make_probe():
    # Imported only when the trainer is built, once entry.run has parsed the config: transformers' Trainer
    # modules import peft, and so bitsandbytes unless entry.run has left it out, as it does under `launcher run`.
    from bench.probe import Probe

    return Probe()


if __name__ == "__main__":
    main(sys.argv[1:])
