"""Pipeline-parallel full fine-tuning: the decoder split into contiguous stages, one per rank.

    launcher run recipes/pipeline-parallel --nproc 2                    # 2 stages, gloo on CPU
    launcher run recipes/pipeline-parallel --nproc 2 --set schedule=gpipe
    launcher run recipes/pipeline-parallel                              # 1 stage: the single-process reference
    torchrun --nproc_per_node 4 recipes/pipeline-parallel/train.py --config recipes/pipeline-parallel/config.yaml

Rank r holds one contiguous slice of the decoder layers; the first stage also holds the token
embeddings, the last the final norm, the LM head and the loss. Every batch is cut into
`n_microbatches` microbatches that flow through torch.distributed.pipelining's GPipe or 1F1B
schedule, inside this file's own loop: AdamW per stage, global-norm clipping, atomic per-stage
checkpoints. At the end the stages are gathered into one ordinary HF checkpoint in model/.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.distributed as dist

from recipekit import (checkpoint, cpu_speedups, distributed, entry, hub, loading, loop, models, optim, outputs,
                       pipelining, progress, replicas, sft_data, updates)
from recipekit.config import option
from recipekit.data import IGNORE_INDEX
from recipekit.errors import Preempted, UsageError
from recipekit.preemption import StopOnSignal
from recipekit.schema import ModelOptions, TrainingOptions
from recipekit.sft_data import SFTDataOptions

log = logging.getLogger("recipes.pipeline-parallel")
RECIPE = "pipeline-parallel"


@dataclass
class Config(SFTDataOptions, TrainingOptions, ModelOptions):
    schedule: Literal["gpipe", "1f1b"] = option("1f1b", help="pipeline schedule: gpipe (all forwards, then all "
                                                "backwards) or 1f1b (interleaved; fewer live activations)")
    n_microbatches: int = option(4, help="microbatches each batch is cut into; batch_size must divide by it",
                                 min=1, max=65536)
    layers_per_stage: Optional[list[int]] = option(None, help="decoder layers on each stage, e.g. [18, 12]; "
                                                   "null = balance the stages' compute (the LM head included)")
    batch_size: int = option(8, help="rows per optimizer step (per pipeline, not per rank), cut into n_microbatches",
                             min=1, max=65536)
    packing: bool = option(False, help="must stay false: every microbatch is padded to seq_length (static shapes)")

    def check(self) -> list[str]:
        problems = self.check_model() + self.check_training() + self.check_data()
        if self.batch_size % self.n_microbatches:
            problems.append(f"n_microbatches: batch_size {self.batch_size} is not divisible by "
                            f"n_microbatches {self.n_microbatches}")
        if self.packing:
            problems.append("packing: not supported here (microbatches are padded to seq_length); set packing: false")
        if self.load_in_4bit or self.load_in_8bit:
            problems.append("load_in_4bit: quantized weights cannot be fully fine-tuned; set load_in_4bit and "
                            "load_in_8bit to false")
        if self.fp16:
            problems.append("fp16: not supported here (no loss scaling); use bf16: true or full precision")
        if self.layers_per_stage is not None and not all(n >= 1 for n in self.layers_per_stage):
            problems.append(f"layers_per_stage: every stage needs at least 1 layer, got {self.layers_per_stage}")
        return problems


def main(cfg: Config, check_only: bool) -> None:
    # Validate: config, data and the pipeline's shape, before any model weights are loaded.
    token, splits = entry.prepare(cfg, sft_data.load)
    world = distributed.world_size()
    if cfg.schedule == "1f1b" and cfg.n_microbatches < world:
        raise UsageError(f"n_microbatches: the 1f1b schedule needs at least one microbatch per stage "
                         f"({world}), got {cfg.n_microbatches}")
    if cfg.layers_per_stage is not None and len(cfg.layers_per_stage) != world:
        raise UsageError(f"layers_per_stage: {len(cfg.layers_per_stage)} entries for {world} stages (one per rank)")
    model_path = models.resolve(cfg.model_name, weights=not check_only)
    num_layers = check_model_shape(cfg, model_path, token, world)
    if check_only:
        return
    train(cfg, splits, model_path, token, num_layers, StopOnSignal())


def check_model_shape(cfg: Config, model_path: str, token: str | None, world: int) -> int:
    """The model family and layer count, read from its config.json alone; returns the layer count."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, token=token, trust_remote_code=cfg.trust_remote_code)
    if config.model_type not in pipelining.FAMILIES:
        raise UsageError(f"model_name: {cfg.model_name} is a {config.model_type!r} model; this recipe splits "
                         f"{', '.join(pipelining.FAMILIES)} decoders")
    layers = config.num_hidden_layers
    if world > layers:
        raise UsageError(f"model_name: {cfg.model_name} has {layers} decoder layers, fewer than the {world} "
                         "pipeline stages (world size); run with fewer processes")
    if cfg.layers_per_stage is not None and sum(cfg.layers_per_stage) != layers:
        raise UsageError(f"layers_per_stage: adds up to {sum(cfg.layers_per_stage)}, the model has {layers} layers")
    if world > 1 and config.tie_word_embeddings and (cfg.layer_lr_decay != 1.0 or cfg.lr_multipliers):
        raise UsageError("layer_lr_decay: per-parameter learning rates (layer_lr_decay, lr_multipliers) are not "
                         "supported when tied embeddings are split over several stages")
    return layers


def stream_indices(num_rows: int, seed: int, start: int, count: int) -> list[int]:
    """Rows ``start .. start+count`` of the training stream: epoch after epoch, each shuffled with seed + epoch."""
    orders = {epoch: torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
              for epoch in range(start // num_rows, (start + count - 1) // num_rows + 1)}
    return [orders[position // num_rows][position % num_rows] for position in range(start, start + count)]


def train(cfg: Config, splits: sft_data.SFTData, model_path: str, token: str | None, num_layers: int,
          stop: StopOnSignal) -> None:
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    # Build: process group, data, this rank's stage, its optimizer and the schedule.
    device = distributed.init_group()  # one process: a group of one, so the very same code path runs
    rank, world = dist.get_rank(), dist.get_world_size()
    loop.seed_everything(cfg.seed)
    tokenizer = loading.load_tokenizer(model_path, cfg, token, chat=splits.kind == "chat")
    with distributed.main_first():
        train_rows = sft_data.tokenize(splits.train, tokenizer, cfg, splits.kind)
        eval_rows = sft_data.tokenize(splits.eval, tokenizer, cfg, splits.kind) if splits.eval is not None else None
    collate = functools.partial(sft_data.collate, pad_id=tokenizer.pad_token_id, length=cfg.seq_length)

    lm = loading.load_model(model_path, cfg, cfg, token)
    resume_from = checkpoint.resume_point(cfg, splits.train)
    metrics = {**outputs.run_facts(RECIPE, resume_from, device), **sft_data.facts(splits), "schedule": cfg.schedule,
               "n_microbatches": cfg.n_microbatches}
    if resume_from is None:  # rank 0 answers the held-out questions with the whole model (the others wait)
        metrics["hit_rate_before"] = hit_rate(lm, tokenizer, splits, cfg, device)
    distributed.barrier()
    if cfg.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=cfg.gradient_checkpointing_kwargs)
    tied = lm.lm_head.weight is lm.model.embed_tokens.weight
    head_cost = lm.lm_head.weight.numel() / sum(p.numel() for p in lm.model.layers[0].parameters())
    counts = cfg.layers_per_stage or pipelining.split_layers(num_layers, world, head_cost)
    metrics["layers_per_stage"] = counts
    bounds = [sum(counts[:i]) for i in range(world + 1)]
    first, last = rank == 0, rank == world - 1
    autocast = torch.bfloat16 if cfg.bf16 else None
    stage = pipelining.Stage(lm, bounds[rank], bounds[rank + 1], first, last, autocast).to(device).train()
    log.info("stages (decoder layers per rank): %s; rank %d holds layers %d-%d", counts, rank,
             bounds[rank], bounds[rank + 1] - 1)
    full_model = lm if distributed.is_main() else None  # rank 0 reassembles the trained model into it
    del lm

    loss_fn = pipelining.TokenMeanLoss()
    pipe = PipelineStage(stage, rank, world, device)
    schedule_cls = ScheduleGPipe if cfg.schedule == "gpipe" else Schedule1F1B
    schedule = schedule_cls(pipe, cfg.n_microbatches, loss_fn=loss_fn, scale_grads=False)
    # The tied embedding / LM head lives on the first and the last stage: their gradients are summed.
    tie_group = dist.new_group([0, world - 1]) if tied and world > 1 else None
    owned = [p for name, p in stage.named_parameters() if not (tied and not first and name == "lm_head.weight")]
    tied_weight = (stage.model.embed_tokens if first else stage.lm_head).weight if tied and (first or last) else None
    checked: list[int] = []
    optimizer = optim.adamw(stage, cfg)  # layer-wise LR decay / multipliers, by the full model's names
    first_update = updates.FirstUpdateCheck()
    step_rows = cfg.batch_size * cfg.gradient_accumulation_steps
    total_steps = cfg.total_steps(len(train_rows) / step_rows)
    scheduler = loop.scheduler(cfg.lr_scheduler_type, optimizer, math.ceil(cfg.warmup_ratio * total_steps), total_steps)

    def run_batch(batch: dict, losses: list, backward: bool) -> None:
        args = (batch["input_ids"].to(device),) if first else ()
        target = batch["labels"].to(device) if last else None
        run = schedule.step if backward else schedule.eval
        kwargs = {"return_outputs": False} if backward else {}
        run(*args, target=target, losses=losses if last else None, **kwargs)

    def evaluate() -> float | None:
        if eval_rows is None:
            return None
        loss_fn.denominator = 1.0
        total, tokens = torch.zeros((), dtype=torch.float64), 0
        filler = {"input_ids": [tokenizer.pad_token_id], "labels": [IGNORE_INDEX]}  # fills the last batch
        with torch.no_grad():
            for start in range(0, len(eval_rows), cfg.batch_size):
                rows = eval_rows.select(range(start, min(start + cfg.batch_size, len(eval_rows)))).to_list()
                batch = collate(rows + [filler] * (cfg.batch_size - len(rows)))
                losses: list = []
                run_batch(batch, losses, backward=False)
                total += sum(float(x.detach()) for x in losses)
                tokens += loop.label_tokens(batch["labels"])
        return from_last_stage(float(total)) / max(tokens, 1)

    def from_last_stage(value: float) -> float:
        return distributed.all_sum(value if last else 0.0)[0]

    # Train, resuming from the newest complete checkpoint.
    state = {"global_step": 0, "samples_seen": 0, "log_history": []}
    if resume_from is not None:
        state = load_checkpoint(resume_from, stage, optimizer, scheduler, rank, counts)
    elif (before := evaluate()) is not None:
        metrics["eval_loss_before"] = before
        state["log_history"].append({"step": 0, "eval_loss": before})
    history, step, run_losses, started = state["log_history"], state["global_step"], [], time.time()
    meter = progress.Meter(step)
    with cpu_speedups.heap_kept_for_reuse(device, cfg.heap_reuse):  # freed memory reused, not unmapped, on a CPU
        while step < total_steps:
            indices = stream_indices(len(train_rows), cfg.seed, state["samples_seen"], step_rows)
            batch = collate(train_rows.select(indices).to_list())
            meter.add(int(batch["attention_mask"].sum()))
            loss_fn.denominator = max(loop.label_tokens(batch["labels"]), 1)
            losses: list = []
            for part in range(cfg.gradient_accumulation_steps):
                rows, part_losses = slice(part * cfg.batch_size, (part + 1) * cfg.batch_size), []
                run_batch({k: v[rows] for k, v in batch.items()}, part_losses, backward=True)
                losses += part_losses  # the schedule refills the list it is given on every call
            if tie_group is not None:
                dist.all_reduce((stage.model.embed_tokens if first else stage.lm_head).weight.grad, group=tie_group)
            grad_norm = pipelining.clip_global_grad_norm(owned, list(stage.parameters()), cfg.max_grad_norm, device)
            lr = scheduler.get_last_lr()[0]
            first_update.before(optimizer, stage)
            optimizer.step()
            first_update.after(optimizer)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step, state["samples_seen"] = step + 1, state["samples_seen"] + step_rows
            loss = from_last_stage(float(sum(float(x.detach()) for x in losses)))
            run_losses.append(loss)
            if step == 1 or step % cfg.logging_steps == 0 or step == total_steps:
                history.append({"step": step, "epoch": state["samples_seen"] / len(train_rows), "loss": loss,
                                "grad_norm": grad_norm, "learning_rate": lr})
                log.info(meter.line(step, total_steps, history[-1]))
            state["global_step"] = step
            stopping = stop.agreed()
            saving = stopping or step % cfg.save_steps == 0
            if tie_group is not None and (first or last) and replicas.due(step, cfg.replica_check_steps,
                                                                          saving or step == total_steps):
                # The two copies of the tied weight must stay equal, as replicas of data parallelism must.
                replicas.check([tied_weight], step, what="tied embedding / LM head", group=tie_group)
                checked.append(step)
            if saving:
                save_checkpoint(cfg, state, stage, optimizer, scheduler, rank, counts)
            if stopping:
                raise Preempted(f"checkpoint saved at step {step}")

    # Evaluate and save: the stages are gathered into one HF checkpoint on rank 0.
    runtime = time.time() - started
    first_logged = next((row["loss"] for row in history if row.get("step") == 1 and "loss" in row), None)
    metrics.update(global_step=step, train_runtime_s=runtime, first_step_loss=first_logged,
                   replicas_checked_at_steps=checked,
                   train_loss=sum(run_losses) / len(run_losses) if run_losses else None)
    after = evaluate()
    if after is not None:
        metrics["eval_loss_after"] = after
        history.append({"step": step, "eval_loss": after})
    final = Path(cfg.output_dir) / outputs.FINAL_DIR
    gathered = [None] * world if distributed.is_main() else None
    dist.gather_object({k: v.detach().cpu() for k, v in stage.state_dict().items()}, gathered, dst=0)
    if distributed.is_main():
        full_model.to("cpu")
        for part in gathered:
            result = full_model.load_state_dict(part, strict=False)
            if result.unexpected_keys:
                raise RuntimeError(f"stage parameters not in the model: {result.unexpected_keys[:3]}")
        absent = set(full_model.state_dict()) - set().union(*gathered) - ({"lm_head.weight"} if tied else set())
        if absent:
            raise RuntimeError(f"no stage holds {sorted(absent)[:3]}")
        full_model.save_pretrained(final)
        tokenizer.save_pretrained(final)
        metrics.update(hit_rate_after=hit_rate(full_model, tokenizer, splits, cfg, device), model=str(final))

    def summary(written: dict, output_dir: str) -> None:
        sft_data.print_summary(written, output_dir, sft_data.sample_question(splits))
        print(f"first-step loss {first_logged}; {step} steps in {runtime:.0f} s on {world} stage(s)")

    outputs.finish(cfg, RECIPE, metrics, history, summary, title=f"{RECIPE}: {cfg.model_name}, {world} stages",
                   question=sft_data.sample_question(splits))
    hub.push(cfg, full_model, tokenizer, token)
    distributed.barrier()
    distributed.shutdown()


def hit_rate(lm, tokenizer, splits: sft_data.SFTData, cfg: Config, device) -> float | None:
    """Held-out answer hit rate of the whole model, on rank 0 (None elsewhere); the model is left on the CPU."""
    if not splits.hit_rows or not distributed.is_main():
        return None
    rate = sft_data.hit_rate(lm.to(device), tokenizer, splits.hit_rows, cfg, cfg, loading.train_dtype(cfg),
                             adapter=False)
    lm.to("cpu").train()
    return rate


def save_checkpoint(cfg: Config, state: dict, stage, optimizer, scheduler, rank: int, counts: list[int]) -> None:
    """Every rank writes its stage; published once all have (atomic, see recipekit.checkpoint)."""
    with checkpoint.staged(cfg.output_dir, state["global_step"], cfg.save_total_limit) as staged:
        torch.save({"model": stage.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}, staged / f"stage-{rank}.pt")
        if distributed.is_main():
            meta = {**state, "layers_per_stage": counts, "world_size": len(counts)}
            outputs.write_atomic(staged / "trainer_state.json", json.dumps(meta, indent=2) + "\n")


def load_checkpoint(path: Path, stage, optimizer, scheduler, rank: int, counts: list[int]) -> dict:
    state = json.loads((path / "trainer_state.json").read_text())
    if state["layers_per_stage"] != counts:
        raise UsageError(f"resume: {path} holds stages of {state['layers_per_stage']} layers, this run splits the "
                         f"model as {counts}; rerun with --nproc {state['world_size']} and the same "
                         "layers_per_stage, or set resume: false / a new output_dir")
    saved = torch.load(path / f"stage-{rank}.pt", weights_only=True)
    stage.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    return state


if __name__ == "__main__":
    entry.run(main, Config, "Pipeline-parallel full fine-tuning with torch.distributed.pipelining", __file__)
