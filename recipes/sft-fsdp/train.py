"""Full-weight SFT under FSDP2 (torch fully_shard) with a plain PyTorch training loop.

    launcher run recipes/sft-fsdp --nproc 2                  # 2 processes: gloo on CPU, NCCL on GPUs
    launcher run recipes/sft-fsdp                            # one process (a 1-rank FSDP group)
    torchrun --nproc_per_node 4 recipes/sft-fsdp/train.py --config recipes/sft-fsdp/config.yaml

Every rank holds one shard of the fp32 weights, gradients and AdamW states; each decoder layer
is all-gathered just before it runs (in bf16 when `bf16: true`) and gradients are
reduce-scattered in fp32. Chat data is trained on the final assistant reply only, plain text on
every token. Checkpoints are sharded torch.distributed.checkpoint (DCP) directories that any
world size can resume. Outputs: model/ (an ordinary transformers checkpoint + tokenizer),
metrics.json, loss.png, resolved_config.yaml.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipekit import (checkpoint, cpu_speedups, distributed, entry, hub, loading, loop, models, optim, outputs,
                       progress, sft_data, updates)
from recipekit.config import option
from recipekit.errors import DataError, Preempted
from recipekit.preemption import StopOnSignal
from recipekit.schema import ModelOptions, TrainingOptions
from recipekit.data import IGNORE_INDEX
from recipekit.sft_data import SFTDataOptions

log = logging.getLogger("recipes.sft-fsdp")
RECIPE = "sft-fsdp"


@dataclass
class Config(SFTDataOptions, TrainingOptions, ModelOptions):
    reshard_after_forward: bool = option(True, help="free each layer's gathered weights after its forward and "
                                         "gather them again for backward (less memory, more communication)")

    def check(self) -> list[str]:
        problems = self.check_model() + self.check_training() + self.check_data()
        if self.load_in_4bit or self.load_in_8bit:
            problems.append("load_in_4bit: quantized weights cannot be trained in full under FSDP; "
                            "use recipes/sft for QLoRA")
        if self.fp16:
            problems.append("fp16: not supported here (it needs loss scaling); use bf16: true")
        if self.replica_check_steps:
            problems.append("replica_check_steps: sft-fsdp shards every weight across the ranks, so there are no "
                            "replicas to compare; leave it at 0")
        return problems


def main(cfg: Config, check_only: bool) -> None:
    # Validate: config and data are checked before any model is loaded.
    token, splits = entry.prepare(cfg, sft_data.load)
    if check_only:
        return
    try:
        train(cfg, splits, token, StopOnSignal())
    finally:
        distributed.shutdown()


# --- data: a world-size independent order ---------------------------------------------------------------

def rank_batches(num_items: int, cfg: Config, epoch: int, position: int) -> list[list[int]]:
    """This rank's micro-batches for the rest of ``epoch``, starting at ``position`` of the epoch's order.

    The order is one permutation per epoch, drawn from seed + epoch, whatever the world size. Like
    DistributedSampler, the rest of it is padded with its head so every rank gets as many items,
    and rank r takes every world_size-th item; k micro-batches per rank consume exactly the next
    k * batch_size * world_size items, so a checkpoint's position means the same at any world size.
    """
    import torch

    ws = distributed.world_size()
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(cfg.seed + epoch)).tolist()
    rest = order[position:]
    rest += (order * ws)[:(-len(rest)) % ws]
    mine = rest[distributed.rank()::ws]
    return [mine[i:i + cfg.batch_size] for i in range(0, len(mine), cfg.batch_size)]


def steps_per_epoch(num_items: int, cfg: Config) -> int:
    per_rank = math.ceil(num_items / distributed.world_size())
    return math.ceil(math.ceil(per_rank / cfg.batch_size) / cfg.gradient_accumulation_steps)


# --- model, loss, evaluation ---------------------------------------------------------------------------------

def decoder_layers(model) -> list:
    from transformers.modeling_layers import GradientCheckpointingLayer

    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer) or type(m).__name__ in names]


def shard(model, cfg: Config, device):
    """Activation checkpointing and fully_shard on every decoder layer, then on the root."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=dict(cfg.gradient_checkpointing_kwargs))
    model.to(device)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if cfg.bf16 else None, reduce_dtype=torch.float32)
    layers = decoder_layers(model)
    if not layers:
        log.warning("no decoder layers found in %s: sharding the whole model as one unit", type(model).__name__)
    for layer in layers:
        fully_shard(layer, mp_policy=policy, reshard_after_forward=cfg.reshard_after_forward)
    fully_shard(model, mp_policy=policy, reshard_after_forward=cfg.reshard_after_forward)
    return model


def summed_loss(model, batch):
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    return loop.next_token_loss_sum(logits, batch["labels"])


def eval_loss(model, items, cfg: Config, pad_id: int, device) -> float:
    """Mean loss per labelled token over the eval items, split across ranks (all ranks call it)."""
    import torch

    ws, blank = distributed.world_size(), {"input_ids": [pad_id], "labels": [IGNORE_INDEX], "position_ids": [0]}
    padded = items + [blank] * ((-len(items)) % ws)  # equal batch counts: FSDP needs every rank in every forward
    mine = padded[distributed.rank()::ws]
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(mine), cfg.batch_size):
            batch = sft_data.collate_items(mine[start:start + cfg.batch_size], pad_id, device)
            total += summed_loss(model, batch).item()
            count += loop.label_tokens(batch["labels"])
    model.train()
    total, count = distributed.all_sum(total, count)
    return total / max(count, 1)


# --- checkpoints ----------------------------------------------------------------------------------------------

def rng_state() -> dict:
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_checkpoint(model, optimizer, scheduler, state: dict, cfg: Config) -> None:
    """Sharded DCP model + optimizer, scheduler, trainer state and per-rank RNG, published atomically."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    with checkpoint.staged(cfg.output_dir, state["step"], cfg.save_total_limit) as staged:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(staged))
        torch.save(rng_state(), staged / f"rng-rank{distributed.rank()}.pt")
        if distributed.is_main():
            torch.save(scheduler.state_dict(), staged / "scheduler.pt")
            outputs.write_atomic(staged / "trainer_state.json", json.dumps(state, indent=1) + "\n")


def load_checkpoint(path: Path, model, optimizer, scheduler, cfg: Config) -> dict:
    """Restore what save_checkpoint wrote; DCP reshards the weights when the world size changed."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.load({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    state = json.loads((path / "trainer_state.json").read_text())
    rng = path / f"rng-rank{distributed.rank()}.pt"
    if state["world_size"] == distributed.world_size() and rng.is_file():
        saved = torch.load(rng, weights_only=True)
        random.setstate(saved["python"])
        torch.set_rng_state(saved["torch"])
        if "cuda" in saved and torch.cuda.is_available():
            torch.cuda.set_rng_state(saved["cuda"])
    else:
        log.warning("checkpoint written by %d processes, resuming with %d: data continues from the same "
                    "position, RNG streams are reseeded", state["world_size"], distributed.world_size())
        torch.manual_seed(cfg.seed + state["step"] * 1000 + distributed.rank())
        random.seed(cfg.seed + state["step"] * 1000 + distributed.rank())
    return state


def export(model, tokenizer, model_path: str, cfg: Config, token: str | None, device):
    """Gather the full weights to rank 0 and save an ordinary transformers checkpoint in output_dir/model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    final, exported = Path(cfg.output_dir) / outputs.FINAL_DIR, None
    if distributed.is_main():
        exported = loading.load_model(model_path, cfg, cfg, token)
        exported.load_state_dict(full)
        staged = Path(cfg.output_dir) / checkpoint.STAGING / outputs.FINAL_DIR
        shutil.rmtree(staged, ignore_errors=True)
        exported.save_pretrained(staged)
        tokenizer.save_pretrained(staged)
        shutil.rmtree(final, ignore_errors=True)
        staged.rename(final)
        if not any(staged.parent.iterdir()):
            staged.parent.rmdir()
        exported.to(device)
    distributed.barrier()
    return final, exported


# --- training -------------------------------------------------------------------------------------------------

def train(cfg: Config, splits: sft_data.SFTData, token: str | None, stop: StopOnSignal) -> dict:
    import torch

    # Build: process group (a 1-rank group without torchrun), tokens, model, shards, optimizer, schedule.
    device = distributed.init_group()
    loop.seed_everything(cfg.seed)
    ws, model_path = distributed.world_size(), models.resolve(cfg.model_name)
    tokenizer = loading.load_tokenizer(model_path, cfg, token, chat=splits.kind == "chat")
    with distributed.main_first():  # rank 0 tokenizes (and fills the datasets cache) first
        train_items, eval_items = [sft_data.pack_items(sft_data.tokenize(split, tokenizer, cfg, splits.kind), cfg)
                                   if split is not None else [] for split in (splits.train, splits.eval)]
    if not train_items:
        raise DataError(f"dataset_name: no tokens in the {splits.format} rows of {cfg.dataset_name!r}")
    pad_id = tokenizer.pad_token_id

    model = loading.load_model(model_path, cfg, cfg, token).to(device)
    resume_from = checkpoint.resume_point(cfg, splits.train)
    state: dict[str, Any] = {"step": 0, "epoch": 0, "position": 0, "world_size": ws, "log_history": []}
    if resume_from is None:  # on the unsharded model: generation runs on rank 0 alone
        state["hit_rate_before"] = sft_data.hit_rate(model, tokenizer, splits.hit_rows, cfg, cfg,
                                                     loading.train_dtype(cfg), adapter=False)
        distributed.barrier()
    model = shard(model, cfg, device)
    optimizer, first_update = optim.adamw(model, cfg), updates.FirstUpdateCheck()
    per_epoch = steps_per_epoch(len(train_items), cfg)
    total = cfg.total_steps(per_epoch)
    scheduler = loop.scheduler(cfg.lr_scheduler_type, optimizer, math.ceil(cfg.warmup_ratio * total), total)
    if resume_from is not None:
        state = load_checkpoint(resume_from, model, optimizer, scheduler, cfg)
        log.info("resumed at step %d (epoch %d, item %d of %d)", state["step"], state["epoch"],
                 state["position"], len(train_items))
        state["world_size"] = ws
    elif eval_items:
        state["eval_loss_before"] = eval_loss(model, eval_items, cfg, pad_id, device)
        state["log_history"].append({"step": 0, "eval_loss": state["eval_loss_before"]})
    log.info("%d train items (%s), %d per optimizer step on %d ranks; %d steps/epoch, training to step %d",
             len(train_items), "packed" if cfg.packing else "one example each",
             cfg.batch_size * cfg.gradient_accumulation_steps * ws, ws, per_epoch, total)

    # Train: each optimizer step takes up to gradient_accumulation_steps micro-batches of the current epoch.
    model.train()
    started, window, run_losses, saved_at = time.time(), [], [], state["step"]
    meter = progress.Meter(state["step"])
    # Freed memory reused, not unmapped, on a CPU; the loop's observers (a benchmark's probe) see every step.
    with (cpu_speedups.heap_kept_for_reuse(device, cfg.heap_reuse),
          loop.observed(model, device, vars(cfg)) as step_observed):
        while state["step"] < total:
            batches = rank_batches(len(train_items), cfg, state["epoch"], state["position"])
            if not batches:  # a checkpoint taken on a longer dataset, at the end of this epoch
                state.update(epoch=state["epoch"] + 1, position=0)
                continue
            for start in range(0, len(batches), cfg.gradient_accumulation_steps):
                group = batches[start:start + cfg.gradient_accumulation_steps]
                micro = [sft_data.collate_items([train_items[i] for i in ids], pad_id, device) for ids in group]
                tokens, seen = distributed.all_sum(sum(loop.label_tokens(b["labels"]) for b in micro),
                                                   sum(len(train_items[i]["input_ids"]) for ids in group for i in ids))
                meter.add(seen)
                step_loss = 0.0
                for k, batch in enumerate(micro):
                    model.set_requires_gradient_sync(k == len(micro) - 1)
                    loss = summed_loss(model, batch)
                    # FSDP averages gradients over ranks: scale so the step's gradient is the global per-token mean.
                    (loss * ws / max(tokens, 1)).backward()
                    step_loss += loss.item()
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf"))
                first_update.before(optimizer, model)
                optimizer.step()
                first_update.after(optimizer)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                (loss_sum,) = distributed.all_sum(step_loss)
                run_losses.append(loss_sum / max(tokens, 1))
                window.append(run_losses[-1])
                last_in_epoch = start + cfg.gradient_accumulation_steps >= len(batches)
                state.update(step=state["step"] + 1, epoch=state["epoch"] + last_in_epoch,
                             position=0 if last_in_epoch else state["position"] + len(group) * cfg.batch_size * ws)
                step = state["step"]
                step_observed([train_items[i] for ids in group for i in ids])
                if step % cfg.logging_steps == 0 or step in (1, total):
                    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
                    epoch = state["epoch"] + state["position"] / len(train_items)
                    row = {"step": step, "epoch": round(epoch, 4), "loss": sum(window) / len(window),
                           "learning_rate": scheduler.get_last_lr()[0], "grad_norm": float(norm)}
                    state["log_history"].append(row)
                    window = []
                    log.info(meter.line(step, total, row))
                if step % cfg.save_steps == 0 or step == total:
                    save_checkpoint(model, optimizer, scheduler, state, cfg)
                    saved_at = step
                if stop.agreed():
                    if saved_at != step:
                        save_checkpoint(model, optimizer, scheduler, state, cfg)
                    raise Preempted(f"checkpoint saved at step {step}")
                if step >= total:
                    break
    runtime = time.time() - started

    # Evaluate and save.
    metrics: dict[str, Any] = {
        **outputs.run_facts(RECIPE, resume_from, device), **sft_data.facts(splits), "global_step": state["step"],
        "steps_per_epoch": per_epoch,
        "train_runtime_s": round(runtime, 1), "train_loss": sum(run_losses) / len(run_losses) if run_losses else None,
        "eval_loss_before": state.get("eval_loss_before"), "hit_rate_before": state.get("hit_rate_before")}
    if eval_items:
        metrics["eval_loss_after"] = eval_loss(model, eval_items, cfg, pad_id, device)
        state["log_history"].append({"step": state["step"], "eval_loss": metrics["eval_loss_after"]})
    final, exported = export(model, tokenizer, model_path, cfg, token, device)
    metrics["model"] = str(final)
    if distributed.is_main():
        metrics["hit_rate_after"] = sft_data.hit_rate(exported, tokenizer, splits.hit_rows, cfg, cfg,
                                                      loading.train_dtype(cfg), adapter=True)
    question = sft_data.sample_question(splits)
    outputs.finish(cfg, RECIPE, metrics, state["log_history"],
                   functools.partial(sft_data.print_summary, question=question), question=question)
    hub.push(cfg, exported, tokenizer, token)
    distributed.barrier()
    return metrics


if __name__ == "__main__":
    entry.run(main, Config, "Full-weight SFT under FSDP2 with a plain PyTorch loop", __file__)
