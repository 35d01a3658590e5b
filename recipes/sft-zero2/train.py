"""SFT under DeepSpeed ZeRO-2: optimizer states and gradients sharded across data-parallel ranks.

    launcher run recipes/sft-zero2 --nproc 2                     # 2 processes, CPU (DS_ACCELERATOR=cpu)
    launcher run recipes/sft-zero2                               # one process: one GPU, or the CPU
    launcher run recipes/sft-zero2 --nproc 2 --set offload_optimizer=true
    torchrun --nproc_per_node 4 recipes/sft-zero2/train.py --config recipes/sft-zero2/config.yaml

The training itself is the sft recipe's, recipekit.sft (same keys, data handling and outputs);
this recipe adds the DeepSpeed engine. It runs as one process or under torchrun, never under the
ssh-based `deepspeed` launcher, so it runs the same in a Kubernetes pod and under srun. `zero2.json`
next to this file is the DeepSpeed config; its "auto" values are filled from the recipe config and
the resolved copy is written to `<output_dir>/deepspeed_config.json`. Checkpoints are saved and
resumed by the DeepSpeed engine's own save/load (inside the usual atomic checkpoint-N directories).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from recipekit import deepspeed_ops, distributed, entry, outputs, sft, sft_data
from recipekit.config import option
from recipekit.errors import UsageError
from recipekit.preemption import StopOnSignal

ZERO_CONFIG = Path(__file__).resolve().with_name("zero2.json")


@dataclass
class Config(sft.Options):
    uses_deepspeed: ClassVar[bool] = True  # every other recipe runs with DeepSpeed left out of its imports
    offload_optimizer: bool = option(False, help="keep optimizer states in CPU memory (ZeRO-Offload)")
    zero_config: str = option(str(ZERO_CONFIG), help="DeepSpeed config; 'auto' values are filled from this config")

    def check(self) -> list[str]:
        problems = super().check()
        if self.load_in_4bit or self.load_in_8bit:
            problems.append("load_in_4bit: bitsandbytes quantization is not supported under ZeRO-2; use recipes/sft")
        for key, on in (("layer_lr_decay", self.layer_lr_decay != 1.0), ("lr_multipliers", bool(self.lr_multipliers))):
            if on:
                problems.append(f"{key}: per-parameter learning rates are not supported here (DeepSpeed builds the "
                                "optimizer); use recipes/sft")
        if not Path(self.zero_config).is_file():
            problems.append(f"zero_config: file not found: {self.zero_config}")
        return problems


def deepspeed_config(cfg: Config) -> dict:
    """zero2.json with every "auto" replaced by the value this run uses."""
    try:
        ds = json.loads(Path(cfg.zero_config).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"zero_config: cannot read {cfg.zero_config} as JSON ({type(exc).__name__})") from None
    zero = ds.setdefault("zero_optimization", {})
    if zero.get("stage", 2) != 2:
        raise UsageError(f"zero_config: this recipe runs ZeRO stage 2, the file sets stage {zero['stage']}")
    zero["offload_optimizer"] = {"device": "cpu" if cfg.offload_optimizer else "none"}
    filled = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "train_batch_size": cfg.batch_size * cfg.gradient_accumulation_steps * distributed.world_size(),
        "gradient_clipping": cfg.max_grad_norm,
    }
    ds.update({key: value for key, value in filled.items() if ds.get(key, "auto") == "auto"})
    ds.setdefault("bf16", {})["enabled"] = cfg.bf16
    ds.setdefault("fp16", {})["enabled"] = cfg.fp16
    params = ds.get("optimizer", {}).get("params", {})
    for key, value in (("lr", cfg.learning_rate), ("weight_decay", cfg.weight_decay)):
        if params.get(key) == "auto":
            params[key] = value
    return ds


def main(cfg: Config, check_only: bool) -> None:
    # Validate: config, data and the DeepSpeed file, before any model is loaded.
    token, splits = entry.prepare(cfg, sft_data.load)
    ds = deepspeed_config(cfg)
    if check_only:
        return

    # DeepSpeed picks its accelerator at import time; without a GPU it must be told to use the CPU.
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    deepspeed_ops.choose_adam(ds, on_cpu=os.environ.get("DS_ACCELERATOR") == "cpu")
    deepspeed_ops.prepare(ds)
    # DeepSpeed needs a process group and torchrun's rank variables (else it looks for an MPI launcher):
    # one process started without torchrun gets a group of its own.
    distributed.init_group_with_rank_env()
    if distributed.is_main():
        outputs.write_atomic(Path(cfg.output_dir) / "deepspeed_config.json", json.dumps(ds, indent=2) + "\n")

    # Build the trainer on the engine, train from the newest complete checkpoint, then evaluate and save.
    run = sft.build(cfg, splits, token, StopOnSignal(), recipe="sft-zero2", deepspeed=ds)
    metrics = sft.train(run)
    sft.save(run, metrics)


if __name__ == "__main__":
    entry.run(main, Config, "SFT under DeepSpeed ZeRO-2", __file__)
