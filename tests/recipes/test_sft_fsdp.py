"""The sft-fsdp recipe: full-weight SFT under FSDP2, 2 processes on CPU (gloo), tiny model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import heap_kept_for_reuse, logged_losses, read_metrics, run_launcher
from tests.recipes.test_sft import sft


pytestmark = pytest.mark.slow(minutes=1)  # trains real models; make test starts the longest first


def fsdp(out, tiny_model, small_hotel, *extra, nproc: int = 2):
    return sft(out, tiny_model, small_hotel, "eval_answer_field=null", *extra, nproc=nproc, recipe="sft-fsdp")


def reply_loss(model_dir, eval_file: str) -> float:
    """Mean loss per reply token of a saved model on the eval rows, with plain transformers and no packing."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipekit.sft_data import IGNORE_INDEX, SFTDataOptions, tokenize

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = tokenize(load_dataset("json", data_files=eval_file, split="train"), AutoTokenizer.from_pretrained(model_dir),
                    SFTDataOptions(seq_length=256), "chat")
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            labels = torch.tensor([row["labels"]])
            n = int((labels[:, 1:] != IGNORE_INDEX).sum())
            total += model(input_ids=torch.tensor([row["input_ids"]]), labels=labels).loss.item() * n
            count += n
    return total / count


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, tiny_model, small_hotel):
    """8 steps on 2 ranks with gradient checkpointing, checkpoints at steps 4 and 8; shared by the tests below."""
    out = tmp_path_factory.mktemp("fsdp") / "two-ranks"
    result = fsdp(out, tiny_model, small_hotel, "eval_answer_field=answer_key", "gradient_checkpointing=true")
    return out, result, read_metrics(out)


def test_two_ranks_train_and_the_export_is_the_trained_model(two_rank_run, small_hotel):
    from transformers import AutoModelForCausalLM

    from recipekit import models

    out, result, metrics = two_rank_run
    assert metrics["world_size"] == 2 and metrics["global_step"] == 8 and metrics["resumed_from"] is None
    losses = logged_losses(metrics)
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.3
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"] - 0.3
    assert 0.0 <= metrics["hit_rate_after"] <= 1.0 and "eval loss:" in result.stdout
    assert heap_kept_for_reuse(result) == 1  # rank 0's log: freed memory reused while the loop trains on CPU
    # One progress line per step for the job, from rank 0, with the rate of both ranks' tokens and the ETA.
    lines = [line[9:] for line in result.stderr.splitlines() if ": step " in line]
    assert [line.split()[3] for line in lines] == [f"{step}/8" for step in range(1, 9)]
    assert all(line.startswith("INFO recipes.sft-fsdp: ") and " tokens/s " in line and " ETA " in line
               for line in lines)
    card = (out / "model" / "README.md").read_text()
    assert f"| held-out eval loss | {metrics['eval_loss_before']:.4f} | {metrics['eval_loss_after']:.4f} |" in card
    assert "library_name: transformers" in card
    assert "(for tests) with all its weights fine-tuned, trained by the `sft-fsdp` recipe" in card

    ckpt = out / "checkpoint-8"  # sharded DCP: one file per rank plus the metadata
    assert (ckpt / "COMPLETE").is_file() and (ckpt / ".metadata").is_file()
    assert sorted(p.name for p in ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (out / ".staging").exists()

    # The consolidated export loads with plain transformers and scores the eval replies as training measured
    # them (packed there, one by one here), far from the untrained model.
    assert AutoModelForCausalLM.from_pretrained(out / "model").config.num_hidden_layers == 2
    exported = reply_loss(out / "model", small_hotel["eval"])
    assert abs(exported - metrics["eval_loss_after"]) < 1e-3 * metrics["eval_loss_after"]
    base = reply_loss(models.prepare_tiny(), small_hotel["eval"])
    assert abs(base - metrics["eval_loss_before"]) < 1e-3 * base
    assert (out / "loss.png").stat().st_size > 0 and "packing: true" in (out / "resolved_config.yaml").read_text()


def test_two_ranks_match_one_process_with_the_same_global_batch(two_rank_run, tmp_path, tiny_model, small_hotel):
    """FSDP shards every weight, so there is no replica to compare: its invariant is that the ranks together
    take the step one process would. 2 ranks x 2 rows against 1 process x 4 rows, the same rows in the same
    order: only the gradient reductions add in another order, float32 rounding apart. So the losses agree
    to 1e-5, and each tensor's training update (final minus initial weights) to 1e-3 of its size (measured:
    2e-5). A run on half the rows of each step, as a rank on its own would take, is 0.75 of it away."""
    from safetensors.torch import load_file

    from recipekit import models
    from tests.recipes.test_fault_tolerance import final_weights

    first_dir, _, two_ranks = two_rank_run
    out = tmp_path / "one-process"
    fsdp(out, tiny_model, small_hotel, "gradient_checkpointing=true", "batch_size=4", nproc=1)
    one_process = read_metrics(out)
    assert logged_losses(one_process) == pytest.approx(logged_losses(two_ranks), rel=1e-5)
    assert one_process["eval_loss_after"] == pytest.approx(two_ranks["eval_loss_after"], rel=1e-5)
    initial = load_file(next(Path(models.prepare_tiny()).glob("*.safetensors")))
    weights, reference = final_weights(first_dir), final_weights(out)
    assert weights.keys() == reference.keys() and initial.keys() <= weights.keys()
    gap = max(float((weights[k] - reference[k]).norm() / (reference[k] - initial[k]).norm()) for k in initial)
    assert gap <= 1e-3, f"2-rank and 1-process training updates differ by up to {gap} of their size"


def test_checkpoint_of_two_ranks_resumes_in_one_process(two_rank_run, tmp_path, tiny_model, small_hotel):
    first_dir, _, first = two_rank_run
    out = tmp_path / "reshard"
    shutil.copytree(first_dir, out)
    result = fsdp(out, tiny_model, small_hotel, "max_steps=10", "bf16=true", "save_steps=2", "heap_reuse=false",
                  nproc=1)
    assert heap_kept_for_reuse(result) == 0  # heap_reuse: false leaves glibc's malloc as it is
    metrics = read_metrics(out)
    assert metrics["world_size"] == 1 and metrics["resumed_from"] == str(out / "checkpoint-8")
    assert metrics["global_step"] == 10 and metrics["eval_loss_before"] == first["eval_loss_before"]
    steps = [row["step"] for row in metrics["log_history"] if "loss" in row]
    losses = logged_losses(metrics)
    assert steps == list(range(1, 11)) and losses[:8] == logged_losses(first)
    # Step 9 starts from the trained weights (an untrained start would be back at the step-1 loss).
    assert losses[8] < losses[0] - 0.3 and metrics["eval_loss_after"] < first["eval_loss_after"]
    assert sorted(p.name for p in (out / "checkpoint-10").glob("*.distcp")) == ["__0_0.distcp"]


# SIGTERM → checkpoint → exit 143 → exact resume: tests/recipes/test_fault_tolerance.py (2 processes).


def test_string_completions_train_in_the_hand_written_loop(tmp_path, tiny_model, small_hotel):
    """Prompt/completion strings: tokenized without a chat template, trained on the completion only."""
    import json

    from tests.recipes.test_sft import FORMATS, write_rows

    make_row = FORMATS["prompt_completion"][1]
    rows = [make_row(json.loads(line)["messages"]) for line in Path(small_hotel["train"]).read_text().splitlines()]
    data = write_rows(tmp_path / "pc.jsonl", rows[:24])
    out = tmp_path / "out"
    fsdp(out, tiny_model, {"train": data, "eval": data}, "max_steps=3", "save_steps=10", nproc=1)
    metrics = read_metrics(out)
    assert (metrics["dataset_format"], metrics["data_kind"]) == ("prompt_completion", "completion")
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]


def test_bad_config_is_refused_before_anything_loads():
    result = run_launcher("run", "recipes/sft-fsdp", "--nproc", "2", "--set", "load_in_4bit=true",
                          "--set", "bf16=false", "--set", "fp16=true")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "load_in_4bit: quantized weights cannot be trained in full under FSDP" in result.stderr
    assert "fp16: not supported here" in result.stderr


def test_missing_column_is_refused_before_anything_loads(small_hotel):
    result = run_launcher("run", "recipes/sft-fsdp", "--nproc", "2", "--set", f"dataset_name={small_hotel['train']}",
                          "--set", "dataset_text_field=question")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "dataset_text_field: column 'question' not found" in result.stderr


@pytest.mark.gpu
def test_bf16_on_gpus_with_nccl(tmp_path, tiny_model, small_hotel):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU: run `make test-gpu` on a GPU machine")
    out = tmp_path / "gpu"
    fsdp(out, tiny_model, small_hotel, "bf16=true", nproc=min(2, torch.cuda.device_count()))
    metrics = read_metrics(out)
    losses = logged_losses(metrics)
    assert metrics["device"].startswith("cuda") and losses[-1] < losses[0]
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
