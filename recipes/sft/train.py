"""Supervised fine-tuning (SFT) of a causal LM with TRL's SFTTrainer: LoRA, QLoRA or full.

    launcher run recipes/sft                                  # embedded model + hotel data, CPU
    launcher run recipes/sft --set use_peft=false             # full fine-tuning
    launcher run recipes/sft --set load_in_4bit=true          # QLoRA
    launcher run recipes/sft --nproc 2                        # DDP under torchrun
    python recipes/sft/train.py --config my.yaml --set learning_rate=1e-4

Chat data (a column of message lists) is trained on the final assistant reply only; plain text
data is trained on every token. Outputs: model/ (adapter or full model + tokenizer), merged/
(adapter merged into its base), metrics.json, loss.png, resolved_config.yaml, runs/ (TensorBoard).
The training itself is recipekit.sft's, which sft-zero2 and the optuna search run too.
"""

from __future__ import annotations

from dataclasses import dataclass

from recipekit import entry, sft, sft_data
from recipekit.preemption import StopOnSignal


@dataclass
class Config(sft.Options):
    """The keys of one SFT run (recipekit.sft.Options)."""


def main(cfg: Config, check_only: bool) -> None:
    # Validate: everything about the input is checked before a model is loaded.
    token, splits = entry.prepare(cfg, sft_data.load)
    if check_only:
        return

    # Build, train from the newest complete checkpoint, then evaluate and save.
    run = sft.build(cfg, splits, token, StopOnSignal(), recipe="sft")
    metrics = sft.train(run)
    sft.save(run, metrics)


if __name__ == "__main__":
    entry.run(main, Config, "Supervised fine-tuning with TRL SFTTrainer", __file__)
