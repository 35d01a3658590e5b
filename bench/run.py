"""`make bench`: the sft recipe against TRL's own `trl sft`, in one run, on this machine.

    python -m bench.run                          # CPU: SmolLM2-135M LoRA and full FT on the hotel data
    python -m bench.run --suite gpu              # GPU: Llama-3.2-1B-shaped full FT (also under FSDP2 and
                                                 #      ZeRO-2) + LoRA at seq 2048, 8B-shaped QLoRA
    python -m bench.run --suite gpu --shape tiny --peak-tflops 1   # the GPU path on a CPU, tiny model
    python -m bench.run --suite ablation         # CPU: what each of the recipe's choices buys
    python -m bench.run --suite scaling          # CPU: sequence length 256-2048, 1 and 2 processes
    python -m bench.run --dry-run                # print the commands, run nothing

Every row is its own process (or torchrun group), started one after another, so each gets the
whole machine and its own peak memory. Every side gets the same model, data, sequence length,
optimizer steps, LoRA settings and threads. The peer runs twice: with its defaults, and tuned as an
expert would tune it for this work (packed padding-free batches of the recipe's size, no gradient
checkpointing, bf16). On a CPU the run also measures the machine's matmul throughput at the
model's shapes (bench/matmul.py), the limit the CPU MFU is taken against. Results go to
bench/results/<host>-<date>[-<suite>].json and .md (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import flops, matmul

# Set by the runner for the training process it starts; read by bench/probe.py inside it.
OUT_ENV = "BENCH_PROBE_OUT"  # where the probe writes its JSON
LAUNCHED_ENV = "BENCH_LAUNCHED_AT"  # time.time() just before the runner started this process

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
SFT = REPO / "recipes" / "sft"
SFT_ZERO2, SFT_FSDP = REPO / "recipes" / "sft-zero2", REPO / "recipes" / "sft-fsdp"  # the GPU suite's engines
HOTEL_TRAIN = REPO / "recipekit" / "datasets" / "hotel" / "train.jsonl"
SUITES = ("cpu", "gpu", "ablation", "scaling")
DEFAULT_STEPS = {"cpu": 30, "gpu": 30, "ablation": 20, "scaling": 4}
SCALING_LENGTHS = (256, 512, 1024, 2048)
SCALING_PROCESSES = (1, 2)
INTERRUPTING_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # stop the runner, and with it the running row
MATMUL_LIMIT = "matmul-limit"  # the row that holds the machine's measured matmul throughput
LIMIT_TOOL = "torch.matmul, packed weights"  # frozen weights: the faster of the two (bench/matmul.py)
ZERO2_FSDP_TOLERANCE = 0.10  # the GPU goal: ZeRO-2's tokens/s within this fraction of FSDP's
NOISY_SHARE = 0.05  # other processes' share of all CPUs during a row above which the table warns

# Random-weight models built from a config (throughput does not depend on the weights' values).
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, rope_theta=500000.0,
                         max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, vocab_size=128256, rope_theta=500000.0,
                         max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=49152, max_position_embeddings=4096,
                 tie_word_embeddings=True),
}


@dataclass
class Scenario:
    name: str  # row id, unique in a run
    tool: str  # the recipe's name (ours: sft, or sft-fsdp and sft-zero2 on a GPU) or "trl sft" (the peer)
    lora: bool
    argv: list[str]  # after `python`
    baselines: dict[str, str] = field(default_factory=dict)  # {"defaults"|"tuned": peer row compared with}
    note: str = ""
    env: dict[str, str] = field(default_factory=dict)
    processes: int = 1  # more than one: started under torchrun on this machine
    seq_length: int | None = None  # set where rows of one run differ in it (the scaling suite)


def recipe_defaults(recipe: Path = SFT) -> dict[str, Any]:
    return yaml.safe_load((recipe / "config.yaml").read_text())


def torchrun(processes: int, module_argv: list[str]) -> list[str]:
    """``module_argv`` (``-m module ...``) under torchrun with ``processes`` local processes, or as it is for one."""
    if processes == 1:
        return module_argv
    return ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *module_argv]


def ours(name: str, workdir: Path, data_dir: Path, model: str, seq_length: int, steps: int, lora: bool,
         extra: tuple[str, ...] = (), baselines: dict[str, str] | None = None, note: str = "", env=None,
         processes: int = 1, recipe: Path = SFT) -> Scenario:
    """A recipe (sft unless told) with its shipped config; only what must match the peer (and no eval/export)
    is set. The LoRA keys are set where the recipe has them; one without them (sft-fsdp) trains in full."""
    overrides = [f"model_name={model}", f"dataset_name={data_dir}", "dataset_split=train", "eval_split=null",
                 f"seq_length={seq_length}", f"max_steps={steps}", f"output_dir={workdir / name}", "resume=false",
                 "save_steps=1000000000"]
    if "use_peft" in recipe_defaults(recipe):
        overrides += ["merge_adapter=false", f"use_peft={str(lora).lower()}", "peft_top_layers=null"]
    elif lora:
        raise ValueError(f"{recipe.name} has no LoRA keys: it trains every weight")
    overrides += extra
    argv = ["-m", "bench.ours", str(recipe / "train.py"), "--config", str(recipe / "config.yaml")]
    for item in overrides:
        argv.append(f"--set={item}")
    return Scenario(name, recipe.name, lora, torchrun(processes, argv), dict(baselines or {}), note, env or {},
                    processes)


def peer(name: str, workdir: Path, data_dir: Path, model: str, seq_length: int, steps: int, lora: bool,
         cuda: bool, tuned_batch: int | None = None, processes: int = 1) -> Scenario:
    """`trl sft` told only the model, data, length, steps and LoRA settings; everything else is its default.

    With ``tuned_batch``, tuned as an expert would for this work: ``tuned_batch`` packed blocks per
    batch, laid out padding-free (one row, no padding), no gradient checkpointing (the activations
    of a small model fit), bf16 (on a CPU with avx512_bf16 or AMX its matmuls outrun float32's; the
    matmul-limit row measures both).
    """
    argv = ["-m", "bench.peer", "--model_name_or_path", model, "--dataset_name", str(data_dir),
            "--output_dir", str(workdir / name), "--max_length", str(seq_length), "--max_steps", str(steps)]
    if not cuda:
        argv.append("--use_cpu")  # TrainingArguments refuses its own bf16 default on a CPU without it
    if tuned_batch:
        argv += ["--packing", "true", "--padding_free", "true", "--gradient_checkpointing", "false",
                 "--bf16", "true", "--per_device_train_batch_size", str(tuned_batch)]
    if lora:
        lora_cfg = recipe_defaults()
        argv += ["--use_peft", "--lora_r", str(lora_cfg["peft_lora_r"]), "--lora_alpha", str(lora_cfg["peft_lora_alpha"]),
                 "--lora_dropout", str(lora_cfg["peft_lora_dropout"]),
                 "--lora_target_modules", str(lora_cfg["peft_target_modules"])]
    note = "tuned: packed, padding-free, no gradient checkpointing, bf16" if tuned_batch else "defaults"
    return Scenario(name, "trl sft", lora, torchrun(processes, argv), note=note, processes=processes)


def three_rows(kind: str, lora: bool, both: dict[str, Any], cuda: bool, batch: int,
               extra: tuple[str, ...] = ()) -> list[Scenario]:
    """The peer with its defaults, the peer tuned (``batch`` packed blocks), and the recipe compared with both."""
    defaults, tuned = f"trl-sft-{kind}", f"trl-sft-{kind}-tuned"
    return [peer(defaults, lora=lora, cuda=cuda, **both),
            peer(tuned, lora=lora, cuda=cuda, tuned_batch=batch, **both),
            ours(f"sft-{kind}", lora=lora, extra=extra, baselines={"defaults": defaults, "tuned": tuned}, **both)]


def limit_scenario(model: str, rows: int) -> Scenario:
    """The machine's matmul throughput at ``model``'s shapes with ``rows`` rows (bench/matmul.py)."""
    return Scenario(MATMUL_LIMIT, LIMIT_TOOL, False, ["-m", "bench.matmul", model, str(rows)],
                    note="dense matmuls at the model's weight shapes, one micro-batch of rows (TFLOP/s: LoRA's "
                         "frozen weights, each matmul's faster kernel / full fine-tuning, torch.matmul)")


def plan(suite: str, workdir: Path, data_dir: Path, model: str, seq_length: int, steps: int, cuda: bool,
         qlora_model: str | None = None, qlora_shape: str | None = None) -> list[Scenario]:
    both = dict(workdir=workdir, data_dir=data_dir, model=model, seq_length=seq_length, steps=steps)
    batch = int(recipe_defaults()["batch_size"])
    if suite == "cpu":
        return [*three_rows("lora", True, both, cuda, batch),
                *three_rows("full", False, both, cuda, batch, extra=("learning_rate=2e-5",))]
    if suite == "scaling":
        # One packed block per process and step, so a step's row is one sequence length long. The tuned
        # peer is the one to beat; the defaults peer is left out to keep the run short on 2 cores.
        rows = []
        for length in SCALING_LENGTHS:
            for processes in SCALING_PROCESSES:
                at, suffix = {**both, "seq_length": length}, f"-{length}-x{processes}"
                tuned = f"trl-sft-lora-tuned{suffix}"
                rows += [peer(tuned, lora=True, cuda=cuda, tuned_batch=1, processes=processes, **at),
                         ours(f"sft-lora{suffix}", lora=True, extra=("batch_size=1",), baselines={"tuned": tuned},
                              processes=processes, **at)]
                for row in rows[-2:]:
                    row.seq_length = length
        return rows
    if suite == "ablation":
        # One row per choice of the recipe, and per CPU path (recipekit.cpu_speedups) that applies to sft
        # training, switched back off; the frozen layers computed once only act from the second epoch, so
        # they are measured in a pair of rows of their own.
        vs = {"defaults": "trl-sft-lora", "shipped": "sft-lora"}
        two_epochs = ("peft_top_layers=15", "max_steps=-1", "num_train_epochs=2")  # the later --set wins
        rows = [
            peer("trl-sft-lora", lora=True, cuda=cuda, **both),
            ours("sft-lora", lora=True, baselines={"defaults": "trl-sft-lora"}, note="as shipped", **both),
            ours("no-packing", lora=True, extra=("packing=false",), baselines=vs,
                 note="padded batches of whole examples instead of packed blocks", **both),
            ours("full-logits", lora=True, baselines=vs, env={"BENCH_FULL_LOGITS": "1"},
                 note="cpu path trained_positions off: LM head on every position, not only where a label follows",
                 **both),
            ours("trl-loss", lora=True, baselines=vs, env={"BENCH_TRL_LOSS": "1"},
                 note="cpu path plain_loss off: TRL's own loss (fused log-probs + entropy metrics)", **both),
            ours("no-doc-attention", lora=True, baselines=vs, env={"BENCH_NO_DOC_ATTENTION": "1"},
                 note="cpu path document_attention off: stock SDPA over the whole packed row with a block mask",
                 **both),
            ours("no-weight-copies", lora=True, baselines=vs, env={"BENCH_NO_WEIGHT_COPIES": "1"},
                 note="cpu path frozen_weight_copies off: the frozen weights cast to bf16 in every forward", **both),
            ours("no-packed-weights", lora=True, baselines=vs, env={"BENCH_NO_PACKED_WEIGHTS": "1"},
                 note="cpu path packed_frozen_weights off: the kept bf16 copies in the plain layout", **both),
            ours("no-fused-lora", lora=True, baselines=vs, env={"BENCH_NO_FUSED_LORA": "1"},
                 note="cpu path fused_lora off: PEFT's own LoRA forward", **both),
            ours("no-heap-reuse", lora=True, baselines=vs, env={"BENCH_NO_HEAP_REUSE": "1"},
                 note="cpu path heap_reuse off: glibc's malloc with its defaults (a fresh mmap per large tensor)",
                 **both),
            ours("grad-ckpt", lora=True, extra=("gradient_checkpointing=true",), baselines=vs,
                 note="gradient checkpointing on (TRL's default)", **both),
            ours("fp32", lora=True, extra=("bf16=false",), baselines=vs, note="no bf16 autocast", **both),
            ours("top-15-layers", lora=True, extra=two_epochs, baselines={"defaults": "trl-sft-lora"},
                 note="adapters on the top 15 of 30 layers (`make demo`), two epochs", **both),
            ours("no-frozen-prefix", lora=True, extra=two_epochs, baselines={"shipped": "top-15-layers"},
                 env={"BENCH_NO_FROZEN_PREFIX": "1"},
                 note="cpu path frozen_prefix off: the frozen bottom layers run again in the second epoch", **both),
        ]
        return rows
    # gpu: full fine-tuning and LoRA; packed batches of 4 x seq_length, bf16, no checkpointing
    fast = ("batch_size=4", "bf16=true", "packing=true", "gradient_checkpointing=false")
    full = (*fast, "learning_rate=2e-5")
    rows = [*three_rows("full", False, both, cuda, 4, extra=full),
            *three_rows("lora", True, both, cuda, 4, extra=fast),
            # The same full fine-tuning under each sharding engine of its own recipe, on one device: the
            # ZeRO-2 row is compared with the FSDP row (the goal: within 10%).
            ours("sft-fsdp", lora=False, extra=full, recipe=SFT_FSDP, note="FSDP2, its own training loop", **both),
            ours("sft-zero2", lora=False, extra=full, recipe=SFT_ZERO2, baselines={"fsdp": "sft-fsdp"},
                 note="DeepSpeed ZeRO-2 engine under the Trainer", **both)]
    if qlora_model:
        rows.append(ours("sft-qlora", lora=True, extra=(*fast, "load_in_4bit=true", f"model_name={qlora_model}"),
                         note=f"QLoRA (nf4) of the {qlora_shape} shape: the peak-memory row", **both))
    return rows


# ---------------------------------------------------------------------------------------- models


def random_model(shape: str) -> str:
    """A Llama with random weights in the given shape and the embedded tokenizer, built once into the cache."""
    from recipekit import models

    def build(out: Path) -> None:
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(models.prepare_tokenizer())
        dims = dict(SHAPES[shape])
        dims["vocab_size"] = max(dims["vocab_size"], len(tokenizer))
        config = LlamaConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, **dims)
        torch.manual_seed(0)
        big = shape == "llama-3.1-8b"  # bf16 on disk halves 32 GB; the recipe upcasts or quantizes on load
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16 if big else torch.float32)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)

    return str(models._publish(build, models.cache_dir() / f"bench-{shape}"))


# ---------------------------------------------------------------------------------------- running


def busy_cpu_seconds() -> float | None:
    """CPU time spent by everything on this machine so far (Linux /proc/stat), or None elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def merge_ranks(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One probe record from those of the ranks of a torchrun group (rank 0 first): tokens summed per step,
    rank 0's clock (the ranks step together), the largest process's peak memory and the sum of all."""
    merged = dict(records[0])
    if len(records) > 1:
        merged["steps"] = [{**step, **{key: None if any(r["steps"][i][key] is None for r in records)
                                       else sum(r["steps"][i][key] for r in records)
                                       for key in ("tokens", "doc_len_sq", "loss_tokens")}}
                           for i, step in enumerate(records[0]["steps"])]
        merged["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in records)
    merged["processes"] = len(records)
    merged["peak_rss_sum_bytes"] = sum(r["peak_rss_bytes"] for r in records)
    return merged


def rank_outputs(probe_out: Path) -> list[Path]:
    """Where the probe of each rank writes (bench/probe.py): rank 0 at ``probe_out``, rank r beside it."""
    return [probe_out, *sorted(probe_out.parent.glob(f"{probe_out.stem}.rank*{probe_out.suffix}"),
                               key=lambda p: int(p.stem.rsplit(".rank", 1)[1]))]


class Interrupted(Exception):
    """SIGINT (Ctrl-C) or SIGTERM reached the runner while rows ran."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupt(signum, frame):
    raise Interrupted(signum)


class RowFailed(Exception):
    """A row's process failed, timed out or trained too few steps to time: why, its log and how the log ends."""

    def __init__(self, why: str, log: Path):
        super().__init__(why)
        self.why, self.log = why, log
        self.tail = log.read_text(errors="replace")[-4000:] if log.is_file() else ""

    def record(self) -> dict[str, str]:
        return {"why": self.why, "log": str(self.log), "log_tail": self.tail}


def run_scenario(scenario: Scenario, workdir: Path, threads: int, timeout: int) -> dict[str, Any]:
    probe_out = workdir / f"{scenario.name}.probe.json"
    log_path = workdir / f"{scenario.name}.log"
    # A torchrun group shares the threads: one process per core rather than each fighting for all.
    threads = max(1, threads // scenario.processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           OUT_ENV: str(probe_out), **scenario.env}
    command = [sys.executable, *scenario.argv]
    print(f"[bench] {scenario.name}: {shlex.join(command)}", flush=True)
    busy_before, own_before = busy_cpu_seconds(), children_cpu_seconds()
    env[LAUNCHED_ENV] = repr(time.time())
    started = time.monotonic()
    with open(log_path, "w") as log:
        # Its own session: the row's processes are stopped as a group, and a Ctrl-C meant for the runner
        # reaches them only through the runner. A stop signal that comes while the process starts waits
        # until it has started, so it is never left running unseen.
        deferred: list[int] = []
        previous = {sig: signal.signal(sig, lambda signum, frame: deferred.append(signum)) for sig in INTERRUPTING_SIGNALS}
        try:
            proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        except BaseException:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            raise
        try:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for signum in deferred:
                os.kill(os.getpid(), signum)  # now, with the handlers the runner has
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if proc.returncode is None:  # timed out, or the runner itself was interrupted
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    wall = time.monotonic() - started
    busy_after, own = busy_cpu_seconds(), children_cpu_seconds() - own_before
    if code != 0 or not probe_out.is_file():
        raise RowFailed(f"timed out after {timeout} s" if code is None else
                        f"exit code {code}" if code != 0 else "it wrote no probe record", log_path)
    record = merge_ranks([json.loads(path.read_text()) for path in rank_outputs(probe_out)])
    if "steps" in record and len(record["steps"]) < 2:
        raise RowFailed(f"trained {len(record['steps'])} optimizer step(s); tokens/s is timed after step 1, "
                        "so it needs at least 2", log_path)
    record["wall_s"] = wall
    record["cpu_s"] = own
    # CPU time other processes took while this row ran: a busy machine shows up here, not silently.
    record["foreign_cpu_s"] = None if busy_before is None else max(0.0, busy_after - busy_before - own)
    return record


def best_of_runs(rows: list[Scenario], runs: dict[str, list[dict[str, Any]]], peak: float | None,
                 failures: dict[str, list[dict[str, str]]] | None = None) -> dict[str, dict[str, Any]]:
    """One result row per scenario from its runs: the matmul limit's fastest run (the limit is what the
    machine can do), each training row's median run by tokens/s, with every run's tokens/s kept. A row none
    of whose runs succeeded becomes a failed row; a row that never ran (an interrupted run) is left out."""
    failures = failures or {}
    done: dict[str, dict[str, Any]] = {}
    for scenario in rows:
        failed = failures.get(scenario.name, [])
        if not runs.get(scenario.name):
            if failed:
                done[scenario.name] = failed_row(scenario, failed)
            continue
        if scenario.name == MATMUL_LIMIT:
            limits = [limit_row(scenario, record) for record in runs[scenario.name]]
            row = max(limits, key=lambda row: row["limits_tflops"]["bfloat16"]["full"])
            print(f"[bench] {scenario.name}: {row['limits_tflops']} TFLOP/s", flush=True)
        else:
            limit = done.get(MATMUL_LIMIT)
            summaries = sorted((summarize(scenario, record, peak, limit if limit and limit["kind"] == MATMUL_LIMIT
                                          else None) for record in runs[scenario.name]),
                               key=lambda row: row["tokens_per_s"])
            row = summaries[(len(summaries) - 1) // 2]
            row["tokens_per_s_runs"] = [summary["tokens_per_s"] for summary in summaries]
            print(f"[bench] {scenario.name}: {row['tokens_per_s']:,.0f} tokens/s", flush=True)
        row["failed_runs"] = failed
        done[scenario.name] = row
    return done


def failed_row(scenario: Scenario, failures: list[dict[str, str]]) -> dict[str, Any]:
    """The result row of a scenario none of whose runs succeeded: how each failed, the last one in ``error``."""
    return {"name": scenario.name, "kind": "failed", "tool": scenario.tool, "lora": scenario.lora,
            "note": scenario.note, "baselines": scenario.baselines, "processes": scenario.processes,
            "seq_length": scenario.seq_length, "command": shlex.join(["python", *scenario.argv]),
            "error": f"{failures[-1]['why']}; log: {failures[-1]['log']}", "failed_runs": failures,
            "foreign_cpu_share": None}


def summarize(scenario: Scenario, probe: dict[str, Any], peak: float | None,
              limit: dict[str, Any] | None = None) -> dict[str, Any]:
    """One result row from a probe record: steady tokens/s (after step 1), TTFS, memory, MFU (on a CPU:
    of the measured matmul ``limit``, the matmul-limit row)."""
    steps = probe["steps"]
    first, last = steps[0], steps[-1]
    seconds = last["at"] - first["at"]
    tokens = last["tokens"] - first["tokens"]
    doc_len_sq = last["doc_len_sq"] - first["doc_len_sq"]
    model_flops = flops.model_flops(probe["model"], tokens, doc_len_sq, scenario.lora)
    cuda_peak, foreign = probe.get("cuda_max_allocated_bytes"), probe["foreign_cpu_s"]
    on_gpu = probe["device"].startswith("cuda")
    cpu_limit = None if on_gpu else matmul.limit_for(limit, bool(probe["settings"].get("bf16")), scenario.lora)
    return {
        "name": scenario.name, "kind": "training", "tool": scenario.tool, "lora": scenario.lora,
        "note": scenario.note, "baselines": scenario.baselines, "processes": probe["processes"],
        "seq_length": scenario.seq_length, "command": shlex.join(["python", *scenario.argv]),
        "steps": len(steps), "timed_steps": len(steps) - 1, "timed_s": seconds,
        "tokens_total": last["tokens"], "tokens_timed": tokens,
        "tokens_per_s": tokens / seconds,
        "loss_tokens_per_s": None if last["loss_tokens"] is None or first["loss_tokens"] is None
        else (last["loss_tokens"] - first["loss_tokens"]) / seconds,
        "tokens_per_step": last["tokens"] / len(steps),
        "time_to_first_step_s": first["at"] - probe["launched_at"],
        "peak_memory_bytes": cuda_peak if on_gpu else probe["peak_rss_bytes"],
        "peak_memory_kind": "cuda_max_allocated" if on_gpu else "rss",
        "peak_rss_bytes": probe["peak_rss_bytes"], "peak_rss_sum_bytes": probe["peak_rss_sum_bytes"],
        "cuda_max_allocated_bytes": cuda_peak,
        "model_tflops_per_s": model_flops / seconds / 1e12,
        "flops_per_token": model_flops / tokens if tokens else None,
        "mfu": flops.mfu(model_flops, seconds, peak),
        "matmul_limit_tflops": cpu_limit, "cpu_mfu": flops.mfu(model_flops, seconds, cpu_limit),
        "process_wall_s": probe["wall_s"], "process_cpu_s": probe["cpu_s"], "foreign_cpu_s": foreign,
        "foreign_cpu_share": None if foreign is None else foreign / (probe["wall_s"] * (os.cpu_count() or 1)),
        "device": probe["device"], "torch_threads": probe["torch_threads"],
        "settings": probe["settings"], "model": probe["model"],
    }


def environment(threads: int) -> dict[str, Any]:
    import importlib.metadata as md

    import psutil
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else \
        platform.processor()
    versions = {}
    for package in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    # Local changes under the measured code make the commit alone an incomplete record.
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "bench", "recipekit", "recipes"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return {
        "host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu": cpu, "logical_cpus": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
        "memory_bytes": psutil.virtual_memory().total, "threads": threads,
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "versions": versions, "git_commit": commit or None, "git_dirty": bool(dirty) if commit else None,
    }


# ---------------------------------------------------------------------------------------- reporting


def note(row: dict[str, Any]) -> str:
    """The row's note, and with several runs, what each measured (the row shows the median)."""
    runs, failed = row.get("tokens_per_s_runs") or [], len(row.get("failed_runs") or [])
    parts = [row["note"]] if row["note"] else []
    if len(runs) >= 2:
        parts.append(f"median of {len(runs)} runs: " + ", ".join(f"{value:,.0f}" for value in runs) + " tokens/s")
    if failed:
        parts.append(f"{failed} more run(s) FAILED")
    return "; ".join(parts)


def share(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def gib(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**30:.2f} GiB"


def limit_row(scenario: Scenario, record: dict[str, Any]) -> dict[str, Any]:
    """The matmul-limit row from bench/matmul.py's record."""
    foreign = record["foreign_cpu_s"]
    return {"name": scenario.name, "kind": MATMUL_LIMIT, "tool": LIMIT_TOOL, "lora": None, "note": scenario.note,
            "command": shlex.join(["python", *scenario.argv]), "rows": record["rows"], "repeats": record["repeats"],
            "limits_tflops": record["limits_tflops"], "timings": record["timings"],
            "process_wall_s": record["wall_s"], "foreign_cpu_s": foreign,
            "foreign_cpu_share": None if foreign is None else foreign / (record["wall_s"] * (os.cpu_count() or 1))}


def markdown(result: dict[str, Any]) -> str:
    env, rows = result["environment"], result["rows"]
    device = env["cuda_device"] or f"{env['cpu']}, {env['threads']} threads"
    kinds = [kind for kind in ("defaults", "tuned", "shipped", "fsdp")
             if any(kind in row.get("baselines", {}) for row in rows if row["kind"] == "training")]
    lines = [
        f"### `{result['suite']}` suite: {env['host']}, {result['date']}",
        "",
        f"{device}; torch {env['versions']['torch']}, transformers {env['versions']['transformers']}, "
        f"trl {env['versions']['trl']}, peft {env['versions']['peft']}. Model `{result['model']}`, "
        f"sequence length {result['seq_length']}, {result['steps']} optimizer steps per row "
        f"(tokens/s timed after step 1)"
        + (f", each row the median of {result['repeat']} rounds" if result.get("repeat", 1) > 1 else "")
        + f". Load average {result['load_before'][0]:.2f} before, "
        f"{result['load_after'][0]:.2f} after; {result['wall_s'] / 60:.1f} min in all.",
        "",
        "| row | tool | LoRA | seq | processes | tokens/s | " + "".join(f"vs {kind} | " for kind in kinds)
        + "time to first step | peak memory | model TFLOP/s | MFU | tokens/step | other load | note |",
        "|---|---|---|---:|---:|---:|" + "---:|" * len(kinds) + "---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        if row["kind"] == MATMUL_LIMIT:
            limits = row["limits_tflops"]
            text = ", ".join(f"{dtype} {limits[dtype]['frozen']:.3f} frozen / {limits[dtype]['full']:.3f} full"
                             for dtype in ("bfloat16", "float32") if dtype in limits)
            lines.append(f"| {row['name']} | `{row['tool']}` | – | – | 1 | – | " + "– | " * len(kinds) + f"– | – | {text} | 100% | "
                         f"{row['rows']:,} | {share(row['foreign_cpu_share'])} | {row['note']} |")
            continue
        if row["kind"] == "failed":
            lines.append(f"| {row['name']} | `{row['tool']}` | {'yes' if row['lora'] else 'no'} | "
                         f"{row.get('seq_length') or result['seq_length']} | {row['processes']} | FAILED | "
                         + "– | " * len(kinds) + f"– | – | – | – | – | – | {row['error']} |")
            continue
        ratios = row.get("ratios") or {}
        vs = "".join(f"{ratios[kind]:.2f}× | " if ratios.get(kind) else "– | " for kind in kinds)
        if row["mfu"] is not None:
            mfu = f"{100 * row['mfu']:.1f}%"
        elif row.get("cpu_mfu") is not None:
            mfu = f"{100 * row['cpu_mfu']:.1f}% of limit"
        else:
            mfu = "–"
        memory = gib(row["peak_memory_bytes"]) + (" RSS" if row["peak_memory_kind"] == "rss" else " CUDA")
        seq = row.get("seq_length") or result["seq_length"]
        lines.append(f"| {row['name']} | `{row['tool']}` | {'yes' if row['lora'] else 'no'} | {seq} | "
                     f"{row['processes']} | {row['tokens_per_s']:,.0f} | {vs}"
                     f"{row['time_to_first_step_s']:.1f} s | {memory} | {row['model_tflops_per_s']:.3f} | {mfu} | "
                     f"{row['tokens_per_step']:,.0f} | {share(row['foreign_cpu_share'])} | {note(row)} |")
    lines += ["", *(f"- {goal}" for goal in result["goals"])]
    failed = [row["name"] for row in rows if row.get("failed_runs")]
    if failed:
        lines.append(f"- FAILED runs: {', '.join(failed)}; how each failed is in the JSON (`failed_runs`), "
                     "their logs in the kept work dir")
    if result.get("not_run"):
        lines.append(f"- INTERRUPTED: {', '.join(result['not_run'])} did not run (or not every round)")
    busy = [row["name"] for row in rows if (row["foreign_cpu_share"] or 0) > NOISY_SHARE]
    if busy:
        lines.append(f"- WARNING: other processes used more than {100 * NOISY_SHARE:.0f}% of the CPUs during "
                     f"{', '.join(busy)}; rerun on an idle machine before trusting these rows")
    lines.append("")
    lines.append(f"Command: `{result['command']}`")
    return "\n".join(lines) + "\n"


def goals(suite: str, rows: dict[str, dict[str, Any]]) -> list[str]:
    def failed(name: str) -> str | None:
        row = rows.get(name)
        return f"{name} FAILED ({row['error']}): goal not judged" if row and row["kind"] == "failed" else None

    def ratio(name: str, kind: str, target: float) -> str:
        if failure := failed(name):
            return failure
        row = rows.get(name)
        value = (row.get("ratios") or {}).get(kind) if row else None
        if not value:
            return f"{name} vs the {kind} peer: not measured in this run"
        verdict = "met" if value >= target else "NOT met"
        return f"{name}: {value:.2f}× the {kind} peer's tokens/s (goal ≥ {target}×): {verdict}"

    def mfu(name: str, target: float, key: str = "mfu", of: str = "the device's peak") -> str:
        if failure := failed(name):
            return failure
        row = rows.get(name)
        if not row:
            return f"{name} MFU: not measured in this run"
        if row.get(key) is None:
            return f"{name} MFU: not measured ({of} is not known in this run)"
        if row[key] > 1.0:  # no row can outrun the limit: the limit's own measurement was disturbed
            return (f"{name}: {100 * row[key]:.1f}% of {of}, which is impossible: that measurement was "
                    "disturbed; goal not judged, rerun on an idle machine")
        verdict = "met" if row[key] >= target else "NOT met"
        return f"{name}: {100 * row[key]:.1f}% of {of} (goal ≥ {100 * target:.0f}%): {verdict}"

    if suite == "cpu":
        return [ratio("sft-lora", "tuned", 2.0), mfu("sft-lora", 0.5, "cpu_mfu", "the measured matmul limit"),
                ratio("sft-full", "tuned", 1.6), ratio("sft-lora", "defaults", 1.5), ratio("sft-full", "defaults", 1.5)]
    if suite == "ablation":
        return [ratio("sft-lora", "defaults", 1.5)]
    if suite == "scaling":
        return []
    if not any(row["device"].startswith("cuda") for row in rows.values() if row["kind"] == "training"):
        return ["no GPU in this run: the GPU suite ran on the CPU to exercise its code path; "
                "its goals (MFU, ratio ≥ 1.8×, ZeRO-2 within 10% of FSDP, QLoRA ≤ 10 GB) apply to a GPU run only"]
    out = [ratio("sft-full", "tuned", 1.8), ratio("sft-lora", "tuned", 1.8), mfu("sft-full", 0.45),
           mfu("sft-lora", 0.40)]
    zero2 = rows.get("sft-zero2")
    if zero2 and (zero2.get("ratios") or {}).get("fsdp"):
        value = zero2["ratios"]["fsdp"]
        out.append(f"sft-zero2: {value:.2f}× sft-fsdp's tokens/s (goal: within 10%): "
                   f"{'met' if abs(value - 1) <= ZERO2_FSDP_TOLERANCE else 'NOT met'}")
    if "sft-qlora" in rows:
        peak = rows["sft-qlora"]["peak_memory_bytes"]
        out.append(f"sft-qlora: peak {gib(peak)} (goal ≤ 10 GB): {'met' if peak <= 10e9 else 'NOT met'}")
    return out


def plot_scaling(result: dict[str, Any], path: Path) -> None:
    """tokens/s and peak memory per process against sequence length, one line per tool and process count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in result["rows"] if row["kind"] == "training"]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(10, 4.8))
    for tool, processes in sorted({(row["tool"], row["processes"]) for row in rows}):
        line = sorted((row for row in rows if (row["tool"], row["processes"]) == (tool, processes)),
                      key=lambda row: row["seq_length"])
        label = f"{'recipe (sft)' if tool == 'sft' else 'trl sft, tuned'}, {processes} process" + \
            ("es" if processes > 1 else "")
        style = dict(marker="o", linestyle="-" if tool == "sft" else "--")
        lengths = [row["seq_length"] for row in line]
        speed.plot(lengths, [row["tokens_per_s"] for row in line], label=label, **style)
        memory.plot(lengths, [row["peak_memory_bytes"] / 2**30 for row in line], label=label, **style)
        busy = [row for row in line if (row.get("foreign_cpu_share") or 0) > NOISY_SHARE]
        speed.scatter([row["seq_length"] for row in busy], [row["tokens_per_s"] for row in busy], s=160,
                      facecolors="none", edgecolors="black", label="_busy")
    if any((row.get("foreign_cpu_share") or 0) > NOISY_SHARE for row in rows):
        speed.scatter([], [], s=160, facecolors="none", edgecolors="black",
                      label=f"other load > {100 * NOISY_SHARE:.0f}% of the CPUs")
    for axes, title in ((speed, "tokens/s (all processes)"), (memory, "peak RSS per process (GiB)")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(list(SCALING_LENGTHS), [str(n) for n in SCALING_LENGTHS])
        axes.set_xlabel("sequence length (tokens)")
        axes.set_title(title)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
    fig.legend(*speed.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    env = result["environment"]
    fig.suptitle(f"{result['model']}, LoRA, {env['cpu']} ({env['logical_cpus']} CPUs), {result['date']}", fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def unused_stem(out: Path, stem: str) -> str:
    """``stem``, or ``stem-2``, ``stem-3``, ...: the first whose result files do not exist yet (a second
    run on the same day never overwrites the first)."""
    candidate, n = stem, 1
    while any((out / f"{candidate}{suffix}").exists() for suffix in (".json", ".md", ".png")):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "host"


# ---------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=SUITES, default="cpu")
    parser.add_argument("--steps", type=int, help="optimizer steps per row (default: 30 cpu/gpu, 20 ablation)")
    parser.add_argument("--model", help="model alias or checkpoint dir (default: smollm2-135m-instruct on cpu, "
                        "a random Llama-3.2-1B shape on gpu)")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="gpu suite: build a random model of this shape")
    parser.add_argument("--qlora-shape", choices=sorted(SHAPES),
                        help="gpu suite: add a QLoRA row on this shape (default: llama-3.1-8b when CUDA is there)")
    parser.add_argument("--seq-length", type=int, help="default: the recipe's 256 on cpu, 2048 on gpu")
    parser.add_argument("--only", help="comma-separated row names to run (peers of kept rows are kept)")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: from the GPU's name)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every row (default: all CPUs)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per row")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of every row; each row reports its median run (the limit its best)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, outputs)")
    parser.add_argument("--dry-run", action="store_true", help="print the rows' commands and exit")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat: at least 1")
    if args.steps is not None and args.steps < 2:
        parser.error("--steps: at least 2 (step 1 is excluded from tokens/s)")
    for name, value in (("--threads", args.threads), ("--timeout", args.timeout)):
        if value is not None and value < 1:
            parser.error(f"{name}: at least 1")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        parser.error("--peak-tflops: a positive number of TFLOP/s")
    if args.seq_length is not None:
        from recipekit.config import check_bounds

        problem = check_bounds("--seq-length", args.seq_length, recipe_bounds("seq_length"))
        if problem:
            parser.error(f"{problem} (the recipe's own bounds)")
    if args.shape and args.suite != "gpu":
        parser.error("--shape: only with --suite gpu")
    if args.model:
        from recipekit import models

        for problem in models.check_name("--model", args.model):
            parser.error(problem)
    return args


def recipe_bounds(key: str) -> dict[str, Any]:
    """The sft recipe's numeric bounds on a config key (its schema's ``min``, ``max`` and ``above``)."""
    import dataclasses

    from recipekit.sft_data import SFTDataOptions

    (option,) = [f for f in dataclasses.fields(SFTDataOptions) if f.name == key]
    return dict(option.metadata)


def select(rows: list[Scenario], only: str | None) -> list[Scenario]:
    if not only:
        return rows
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    unknown = wanted - {row.name for row in rows}
    if unknown:
        raise SystemExit(f"error: --only: unknown row(s) {', '.join(sorted(unknown))}; "
                         f"this suite has {', '.join(row.name for row in rows)}")
    wanted |= {peer for row in rows if row.name in wanted for peer in row.baselines.values()}
    return [row for row in rows if row.name in wanted or row.name == MATMUL_LIMIT]


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    steps = args.steps or DEFAULT_STEPS[args.suite]
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    if args.suite == "gpu":
        seq_length = args.seq_length or 2048
        model = args.model or ("<random " + (args.shape or "llama-3.2-1b") + ">")
        qlora_shape = args.qlora_shape or ("llama-3.1-8b" if cuda else None)
    else:
        seq_length = args.seq_length or int(recipe_defaults()["seq_length"])
        model = args.model or "smollm2-135m-instruct"
        qlora_shape = None

    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{args.suite}-"))
    keep = args.keep
    try:
        rows = planned_rows(args, workdir, model, seq_length, steps, cuda, qlora_shape)
        if args.dry_run:
            for row in rows:
                print(f"{row.name}: {' '.join(f'{k}={v}' for k, v in row.env.items())} "
                      f"{shlex.join(['python', *row.argv])}")
            return 0
        peak = args.peak_tflops or flops.peak_tflops(torch.cuda.get_device_name() if cuda else None)
        started, load_before = time.monotonic(), os.getloadavg()
        runs, failures, not_run, stopped_by = run_rounds(rows, args.repeat, workdir, threads, args.timeout)
        keep = keep or any(failures.values())  # the failed rows' logs
        done = best_of_runs(rows, runs, peak, failures)
    finally:
        if keep:
            print(f"[bench] work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if not done:
        print("[bench] interrupted before any row ran: nothing to write")
        return 128 + (stopped_by or signal.SIGINT)
    for row in done.values():
        if row["kind"] == "training":
            row["ratios"] = {kind: row["tokens_per_s"] / done[peer]["tokens_per_s"]
                             for kind, peer in row["baselines"].items()
                             if done.get(peer, {}).get("kind") == "training"}

    date = time.strftime("%Y-%m-%d")
    result = {
        "schema": 1, "suite": args.suite, "date": date, "command": shlex.join(["python", "-m", "bench.run",
                                                                                 *(argv or sys.argv[1:])]),
        "model": model, "seq_length": seq_length, "steps": steps, "repeat": args.repeat, "peak_tflops": peak,
        "load_before": list(load_before), "load_after": list(os.getloadavg()),
        "wall_s": time.monotonic() - started, "environment": environment(threads),
        "flops_convention": flops.__doc__.strip(), "rows": list(done.values()), "not_run": not_run,
    }
    result["goals"] = goals(args.suite, done)
    stem = unused_stem(args.out, slug(result["environment"]["host"]) + f"-{date}"
                       + ("" if args.suite == "cpu" else f"-{args.suite}"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result)
    (args.out / f"{stem}.md").write_text(table)
    if args.suite == "scaling":
        plot_scaling(result, args.out / f"{stem}.png")
    print(table)
    print(f"[bench] wrote {args.out / stem}.json and .md")
    if stopped_by:
        return 128 + stopped_by
    return 1 if any(failures.values()) else 0


def planned_rows(args: argparse.Namespace, workdir: Path, model: str, seq_length: int, steps: int, cuda: bool,
                 qlora_shape: str | None) -> list[Scenario]:
    """The suite's rows (``--only`` applied), the matmul limit first on a CPU, with the data in ``workdir``."""
    data_dir = workdir / "hotel"  # the embedded train split, byte for byte, as the only file of a dataset dir
    data_dir.mkdir()
    shutil.copyfile(HOTEL_TRAIN, data_dir / "train.jsonl")
    model_path = model
    if args.suite == "gpu" and not args.model:
        model_path = "<built on run>" if args.dry_run else random_model(args.shape or "llama-3.2-1b")
    elif not args.dry_run:
        from recipekit import models

        model_path = models.resolve(model)  # the peer needs a path; prepared once, outside the timings
    qlora_path = None
    if qlora_shape:
        qlora_path = "<built on run>" if args.dry_run else random_model(qlora_shape)
    rows = select(plan(args.suite, workdir, data_dir, model_path, seq_length, steps, cuda, qlora_path, qlora_shape),
                  args.only)
    if not cuda and args.suite in ("cpu", "ablation"):
        rows.insert(0, limit_scenario(model_path, int(recipe_defaults()["batch_size"]) * seq_length))
    return rows


def run_rounds(rows: list[Scenario], repeat: int, workdir: Path, threads: int, timeout: int
               ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, str]]], list[str], int | None]:
    """Every row ``repeat`` times, in rounds (all rows in turn, then again: load slows a round, not a row).
    A failed run is recorded and the rest go on; SIGINT (Ctrl-C) or SIGTERM stops the running row and the
    rounds, and keeps what was measured. Returns each row's probe records, each row's failures, the rows
    left short by an interruption, and the signal that interrupted (None)."""
    runs: dict[str, list[dict[str, Any]]] = {row.name: [] for row in rows}
    failures: dict[str, list[dict[str, str]]] = {row.name: [] for row in rows}
    stopped_by = None
    previous = {sig: signal.signal(sig, interrupt) for sig in INTERRUPTING_SIGNALS}
    try:
        for round_number in range(repeat):
            for scenario in rows:  # the matmul limit, where there is one, comes first
                try:
                    runs[scenario.name].append(run_scenario(scenario, workdir, threads, timeout))
                except RowFailed as failure:
                    failures[scenario.name].append(failure.record())
                    print(f"[bench] {scenario.name}: run {round_number + 1} of {repeat} FAILED ({failure.why}); "
                          f"its log {failure.log} ends:\n{failure.tail}", flush=True)
                    continue
                print(f"[bench] {scenario.name}: run {round_number + 1} of {repeat} done", flush=True)
    except Interrupted as stop:
        stopped_by = stop.signum
        print(f"[bench] interrupted by {stop}: the running row was stopped, and no more rows run", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    not_run = [row.name for row in rows if len(runs[row.name]) + len(failures[row.name]) < repeat]
    return runs, failures, not_run, stopped_by


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # before the rounds (which keep what they measured) or after them
        sys.exit(130)
