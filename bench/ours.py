"""Our side of the benchmark: a recipe's own entry point, with the probe added to its trainer.

    python -m bench.ours recipes/sft/train.py --config recipes/sft/config.yaml --set max_steps=20

Arguments after the recipe path are the recipe's own (--config/--set), so this is exactly
``launcher run`` minus the launcher process; the recipe's ``train`` gets one extra callback.
For the ablation rows, each of these switches one CPU optimization back off:
BENCH_TRL_LOSS=1 (TRL's own loss instead of the plain one), BENCH_FULL_LOGITS=1 (LM head on every
position), BENCH_NO_DOC_ATTENTION=1 (stock SDPA with the packed block mask).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from recipekit import entry, hf


def switch_off_for_ablation() -> None:
    from transformers import Trainer

    if os.environ.get("BENCH_TRL_LOSS") == "1":
        hf.PlainLossOnCPUMixin.compute_loss = lambda self, *args, **kwargs: super(
            hf.PlainLossOnCPUMixin, self).compute_loss(*args, **kwargs)
    if os.environ.get("BENCH_FULL_LOGITS") == "1":
        hf.PlainLossOnCPUMixin._loss_on_trained_positions = lambda self, model, inputs, num_items: \
            Trainer.compute_loss(self, model, inputs, False, num_items)
    if os.environ.get("BENCH_NO_DOC_ATTENTION") == "1":
        hf.use_document_attention = lambda: None


def train_with_probe(train, *args, **kwargs):
    # Imported only now, once entry.run has parsed the config: transformers' Trainer modules import
    # peft, and so bitsandbytes unless entry.run has left it out, as it does under `launcher run`.
    from bench.probe import Probe

    switch_off_for_ablation()
    return train(*args, callbacks=(Probe(),), **kwargs)


def main(argv: list[str]) -> None:
    recipe_file = Path(argv[0]).resolve()
    recipe = entry.import_recipe(recipe_file)
    recipe.train = functools.partial(train_with_probe, recipe.train)
    entry.run(recipe.main, recipe.Config, f"benchmark of {recipe_file.parent.name}", str(recipe_file), argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
