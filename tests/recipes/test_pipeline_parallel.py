"""The pipeline-parallel recipe, run for real through ``launcher run`` on the tiny model (2 layers → 2 stages)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import (REPO, TINY_SEQ_LENGTH, heap_kept_for_reuse, load_recipe, logged_losses, read_metrics,
                            run_launcher)

pytestmark = pytest.mark.slow(minutes=2)  # trains real models; make test starts the longest first


def launcher_args(output_dir: Path, tiny_model: str, small_hotel: dict, *extra: str, nproc: int = 2) -> list[str]:
    """``launcher run`` of the recipe on the tiny model and a slice of the hotel data (``extra`` overrides win)."""
    overrides = [f"model_name={tiny_model}", f"dataset_name={small_hotel['train']}",
                 f"eval_dataset_name={small_hotel['eval']}", f"output_dir={output_dir}", "max_steps=8",
                 "learning_rate=3e-3", "batch_size=4", "n_microbatches=2", f"seq_length={TINY_SEQ_LENGTH}",
                 "logging_steps=1", "save_steps=4", "bf16=false", "eval_answer_field=null", *extra]
    return ["run", "recipes/pipeline-parallel", "--nproc", str(nproc), *(a for o in overrides for a in ("--set", o))]


def pipeline(output_dir: Path, tiny_model: str, small_hotel: dict, *extra: str, nproc: int = 2):
    """Run the recipe (see launcher_args); fail with its output."""
    result = run_launcher(*launcher_args(output_dir, tiny_model, small_hotel, *extra, nproc=nproc))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return read_metrics(output_dir)


def reference_first_step_loss(small_hotel: dict, seed: int, rows: int, seq_length: int) -> float:
    """The first batch's loss computed by plain transformers on the whole model, independently of the pipeline."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipekit import models, sft_data

    recipe = load_recipe("pipeline-parallel")
    path = models.resolve(models.TINY_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    cfg = recipe.Config(seq_length=seq_length)
    train = datasets.load_dataset("json", data_files=small_hotel["train"], split="train")
    tokenized = sft_data.tokenize(train, tokenizer, cfg, "chat")
    first = tokenized.select(recipe.stream_indices(len(tokenized), seed, 0, rows)).to_list()
    batch = sft_data.collate(first, tokenizer.pad_token_id, length=seq_length)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        return float(model(**batch).loss)  # token mean over labels != -100, prompt tokens masked


CONSTANT = ("lr_scheduler_type=constant", "warmup_ratio=0")  # the same LR at every step, whatever max_steps is


def test_sigterm_resume_and_both_schedules_match_the_single_process_run(tmp_path, tiny_model, small_hotel):
    """One story, three runs: 1f1b on 2 stages is stopped by SIGTERM (checkpoint of every stage, exit 143) and
    rerun under gpipe (the same 4 rows a step, as 2 accumulated batches of 2 rows in microbatches of 1): it resumes,
    finishes and exports. A single-process run of as many steps must produce the very same losses, steps of both
    schedules alike, and the export must reproduce the pipeline's eval loss with plain transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "1f1b"
    args = launcher_args(out, tiny_model, small_hotel, "max_steps=400", "save_steps=1000", *CONSTANT)
    proc = subprocess.Popen([sys.executable, "-u", "-m", "launcher.cli", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines, deadline = [], time.time() + 300
    for line in proc.stdout:
        lines.append(line)
        if "step 2/400" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=300)
    output = "".join(lines) + rest
    assert proc.returncode == 143, output[-3000:]
    assert heap_kept_for_reuse(output) == 1  # rank 0's log: freed memory reused while the stages train on CPU
    saved = [p for p in out.glob("checkpoint-*") if (p / "COMPLETE").is_file()]
    assert len(saved) == 1, output[-3000:]
    stopped = json.loads((saved[0] / "trainer_state.json").read_text())["global_step"]
    assert 2 <= stopped < 400 and saved[0].name == f"checkpoint-{stopped}"
    assert sorted(p.name for p in saved[0].glob("stage-*.pt")) == ["stage-0.pt", "stage-1.pt"]
    assert not (out / "model").exists() and not (out / ".staging").exists()
    assert "stopped: checkpoint saved at step" in output

    steps = stopped + 2
    resumed = pipeline(out, tiny_model, small_hotel, f"max_steps={steps}", "schedule=gpipe", "batch_size=2",
                       "gradient_accumulation_steps=2", "replica_check_steps=1", *CONSTANT)
    assert resumed["resumed_from"] == str(saved[0]) and resumed["global_step"] == steps
    # The two stages' copies of the tied embedding / LM head were compared, and equal, after every step.
    assert resumed["replicas_checked_at_steps"] == list(range(stopped + 1, steps + 1))
    assert resumed["world_size"] == 2 and resumed["layers_per_stage"] == [1, 1] and resumed["schedule"] == "gpipe"
    assert [row["step"] for row in resumed["log_history"] if "loss" in row] == list(range(1, steps + 1))

    one = run_launcher(*launcher_args(tmp_path / "one", tiny_model, small_hotel, f"max_steps={steps}",
                                      "save_steps=1000", "eval_split=null", "heap_reuse=false", *CONSTANT, nproc=1))
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    assert heap_kept_for_reuse(one) == 0  # heap_reuse: false leaves glibc's malloc as it is, and no loss changes
    single = read_metrics(tmp_path / "one")
    assert single["world_size"] == 1 and single["layers_per_stage"] == [2]
    assert single["first_step_loss"] == pytest.approx(
        reference_first_step_loss(small_hotel, seed=42, rows=4, seq_length=TINY_SEQ_LENGTH), rel=1e-5)
    # Gradients of the tied embedding / LM head are summed across the two stages and the clipping norm
    # is global, and the loss is normalised by the label tokens of the whole step, so every update equals
    # the single-process one: the 1f1b steps before the SIGTERM and the gpipe steps after the resume.
    assert logged_losses(resumed) == pytest.approx(logged_losses(single), rel=1e-5)
    evals = [row["eval_loss"] for row in resumed["log_history"] if "eval_loss" in row]
    assert len(evals) == 2 and evals[1] < evals[0]  # before (kept in the checkpoint) and after training

    # The gathered export is the trained model: its own forward reproduces the pipeline's eval loss.
    assert (out / "loss.png").stat().st_size > 0 and "schedule: gpipe" in (out / "resolved_config.yaml").read_text()
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_path())
    assert not torch.equal(model.model.layers[1].mlp.up_proj.weight, base.model.layers[1].mlp.up_proj.weight)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    assert export_eval_loss(model, tokenizer, small_hotel["eval"], TINY_SEQ_LENGTH) == pytest.approx(
        resumed["eval_loss_after"], rel=1e-4)


def tiny_path() -> str:
    from recipekit import models

    return models.resolve(models.TINY_MODEL)


def export_eval_loss(model, tokenizer, eval_file: str, seq_length: int) -> float:
    """Token-mean loss over the eval rows with plain transformers (sum over rows / label tokens)."""
    import datasets
    import torch

    from recipekit import sft_data

    cfg = load_recipe("pipeline-parallel").Config(seq_length=seq_length)
    rows = sft_data.tokenize(datasets.load_dataset("json", data_files=eval_file, split="train"), tokenizer, cfg,
                             "chat").to_list()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for row in rows:
            batch = sft_data.collate([row], tokenizer.pad_token_id)
            count = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * count
            tokens += count
    return total / tokens


def test_string_completions_train_through_the_stages(tmp_path, tiny_model, small_hotel):
    """Prompt/completion strings: tokenized without a chat template, trained on the completion only."""
    from tests.recipes.test_sft import FORMATS, write_rows

    make_row = FORMATS["prompt_completion"][1]
    rows = [make_row(json.loads(line)["messages"]) for line in Path(small_hotel["train"]).read_text().splitlines()]
    data = write_rows(tmp_path / "pc.jsonl", rows[:24])
    metrics = pipeline(tmp_path / "out", tiny_model, {"train": data, "eval": data}, "max_steps=3", "save_steps=10")
    assert (metrics["dataset_format"], metrics["data_kind"]) == ("prompt_completion", "completion")
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]


def test_bad_pipeline_settings_fail_before_any_model_loads(tmp_path):
    result = run_launcher("run", "recipes/pipeline-parallel", "--nproc", "2", "--set", "batch_size=6",
                          "--set", "n_microbatches=4", "--set", "packing=true")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "n_microbatches: batch_size 6 is not divisible by n_microbatches 4" in result.stderr
    assert "packing: not supported here" in result.stderr

    result = run_launcher("run", "recipes/pipeline-parallel", "--set", "schedule=pipedream")
    assert result.returncode == 2 and "schedule: expected one of 'gpipe', '1f1b'" in result.stderr

    from transformers import GPT2Config

    GPT2Config(n_layer=2).save_pretrained(tmp_path / "gpt2")  # a config alone: nothing to load, refused first
    result = run_launcher("run", "recipes/pipeline-parallel", "--set", f"model_name={tmp_path / 'gpt2'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model_name: " in result.stderr and "is a 'gpt2' model" in result.stderr
