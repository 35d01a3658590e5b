"""Preemption and crashes, for real: signals and SIGKILL sent to running recipes on the tiny model."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_SEQ_LENGTH, kill_tree, read_metrics

pytestmark = pytest.mark.slow(minutes=3)  # trains real models; make test starts the longest first


TINY_RUN = ["eval_split=null", "bf16=false", "batch_size=2", f"seq_length={TINY_SEQ_LENGTH}", "learning_rate=3e-3",
            "logging_steps=1", "save_steps=2", "save_total_limit=null"]


def launch(recipe: str, output_dir: Path, tiny_model: str, small_hotel: dict, *extra: str, nproc: int = 1):
    args = [sys.executable, "-m", "launcher.cli", "run", f"recipes/{recipe}", "--nproc", str(nproc)]
    for item in [f"model_name={tiny_model}", f"dataset_name={small_hotel['train']}", f"output_dir={output_dir}",
                 *TINY_RUN, *extra]:
        args += ["--set", item]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: int = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"run ended early ({proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.01)


def final_weights(output_dir: Path) -> dict:
    """Every tensor of the final model/ (a LoRA adapter or a full checkpoint)."""
    from safetensors.torch import load_file

    weights = {}
    for path in sorted((output_dir / "model").glob("*.safetensors")):
        weights.update(load_file(path))
    assert weights, f"no safetensors in {output_dir / 'model'}"
    return weights


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        scale = a[name].abs().max().item() or 1.0
        assert (a[name] - b[name]).abs().max().item() <= 1e-6 * scale, name


@pytest.mark.parametrize("recipe,nproc", [("sft", 1), ("sft-fsdp", 2)])
def test_sigterm_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_model, small_hotel, recipe, nproc):
    steps = ["max_steps=24"]
    reference = tmp_path / "reference"
    code, out = finish(launch(recipe, reference, tiny_model, small_hotel, *steps, nproc=nproc))
    assert code == 0, out[-3000:]

    stopped = tmp_path / "stopped"
    proc = launch(recipe, stopped, tiny_model, small_hotel, *steps, nproc=nproc)
    wait_for(lambda: (stopped / "checkpoint-4" / "COMPLETE").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc)
    assert code == 143, out[-3000:]
    assert "exiting with 143" in out
    saved = sorted(int(p.name.split("-")[1]) for p in stopped.glob("checkpoint-*") if (p / "COMPLETE").exists())
    assert saved and 4 <= saved[-1] < 24 and not (stopped / "model").exists()

    code, out = finish(launch(recipe, stopped, tiny_model, small_hotel, *steps, nproc=nproc))
    assert code == 0, out[-3000:]
    resumed, uninterrupted = read_metrics(stopped), read_metrics(reference)
    assert resumed["resumed_from"] == str(stopped / f"checkpoint-{saved[-1]}")
    # Every step logged once: the ones before the checkpoint come back from it, the rest are new.
    assert [row["step"] for row in resumed["log_history"] if "loss" in row] == list(range(1, 25))
    last = lambda m: [r["loss"] for r in m["log_history"] if "loss" in r][-1]  # noqa: E731
    assert last(resumed) == pytest.approx(last(uninterrupted), rel=1e-6)
    assert_same_weights(final_weights(stopped), final_weights(reference))


def test_sigkill_while_writing_a_checkpoint_resumes_from_the_previous_complete_one(tmp_path, tiny_model,
                                                                                  small_hotel):
    out_dir = tmp_path / "killed"
    proc = launch("sft", out_dir, tiny_model, small_hotel, "max_steps=12", "save_steps=1")
    staging = out_dir / ".staging"
    # Kill as soon as a checkpoint after the first complete one is being written.
    wait_for(lambda: (out_dir / "checkpoint-1" / "COMPLETE").exists() and staging.is_dir()
             and any(p.name != "checkpoint-1" for p in staging.iterdir()), proc)
    kill_tree(proc.pid)  # the launcher and the recipe, which has a session of its own
    proc.communicate(timeout=60)
    complete = sorted(int(p.name.split("-")[1]) for p in out_dir.glob("checkpoint-*") if (p / "COMPLETE").exists())
    half_written = [p for p in staging.iterdir()] if staging.is_dir() else []
    assert complete and half_written, "the kill did not land while a checkpoint was being written"

    code, out = finish(launch("sft", out_dir, tiny_model, small_hotel, "max_steps=12", "save_steps=1"))
    assert code == 0, out[-3000:]
    metrics = read_metrics(out_dir)
    assert metrics["resumed_from"] == str(out_dir / f"checkpoint-{complete[-1]}")
    assert metrics["global_step"] == 12
