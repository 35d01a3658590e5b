"""recipekit.tracking: report_to, the local stores under output_dir, and a real run read back from them."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from recipekit import tracking
from tests.conftest import logged_losses, read_metrics, run_launcher
from tests.recipes.test_sft import sft_args

CANARY = "wandb_CANARY_5e1d7a"  # a W&B key's value, which must never be written anywhere


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_DIR", "WANDB_PROJECT", "WANDB_MODE",
                 "WANDB_API_KEY", "TENSORBOARD_LOGGING_DIR"):
        monkeypatch.setenv(name, "")  # recorded, so that whatever the test sets is undone afterwards
        monkeypatch.delenv(name)
    monkeypatch.setattr(tracking, "_DEFAULTS", {})


def test_report_to_names_trackers_and_refuses_what_cannot_work():
    assert tracking.trackers("tensorboard") == ["tensorboard"]
    assert tracking.trackers(["wandb", "mlflow", "wandb"]) == ["wandb", "mlflow"] and tracking.trackers("none") == []
    assert tracking.check(["tensorboard", "none"]) == ["report_to: none cannot be combined with a tracker"]
    assert tracking.check([]) == ["report_to: must name a tracker, or be none"]
    assert tracking.check(["tensorboard", "wandb", "mlflow"]) == []
    if importlib.util.find_spec("trackio") is None:
        assert tracking.check("trackio") == ["report_to: trackio needs the trackio package, which is not installed "
                                             "here (pip install trackio)"]


def test_without_a_server_or_a_key_the_runs_stay_under_output_dir(clean_env, tmp_path):
    out = tmp_path / "run"
    assert tracking.configure(["mlflow", "wandb"], str(out), "sft", "sft: run") == ["mlflow", "wandb"]
    assert os.environ["MLFLOW_TRACKING_URI"] == f"sqlite:///{out / 'mlflow.db'}"
    assert os.environ["MLFLOW_EXPERIMENT_NAME"] == "sft" and (out / "mlflow.db").is_file()
    assert (os.environ["WANDB_DIR"], os.environ["WANDB_MODE"]) == (str(out), "offline")
    tracking.finish({"hit_rate_after": 0.5, "recipe": "sft", "resumed": False})  # numbers only
    import mlflow

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("sft").experiment_id])
    assert run.info.run_name == "sft: run" and run.data.metrics == {"final/hit_rate_after": 0.5}
    assert client.get_experiment_by_name("sft").artifact_location == (out / "mlartifacts").as_uri()
    # The next run of this process (an optuna trial) moves what this module set, never what the user set.
    os.environ["WANDB_PROJECT"] = "mine"
    tracking.configure(["wandb"], str(tmp_path / "next"), "sft", "sft: next")
    assert os.environ["WANDB_DIR"] == str(tmp_path / "next") and os.environ["WANDB_PROJECT"] == "mine"


def test_a_server_and_a_key_given_by_env_are_used_as_they_are(clean_env, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", CANARY)  # k8s --wandb-secret puts it here
    tracking.configure(["wandb"], str(tmp_path), "dpo", "dpo: run")
    assert "WANDB_MODE" not in os.environ  # online, with the key wandb reads from its env var


def wandb_records(path: Path):
    """The protobuf records of a W&B run file: after a 7-byte header, 32 KiB blocks of chunks, each a 4-byte
    checksum, a 2-byte little-endian length and a type (1 whole record, 2 first, 3 middle, 4 last part)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, parts = 7, b""
    while position + 7 <= len(data):
        room = 32768 - position % 32768
        if room < 7:  # a block's tail too short for a chunk header is padding
            position += room
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        parts += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def test_a_real_run_is_read_back_from_mlflow_and_wandb_and_the_key_is_nowhere(tmp_path, tiny_model, small_hotel):
    import mlflow

    out = tmp_path / "out"
    args = sft_args(out, tiny_model, small_hotel, "max_steps=3", "eval_answer_field=null", "merge_adapter=false",
                    "report_to=[tensorboard, mlflow, wandb]")
    result = run_launcher(*args, env={"WANDB_API_KEY": CANARY, "WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    losses = logged_losses(read_metrics(out))
    assert len(losses) == 3 and list((out / "runs").rglob("events.out.tfevents*"))

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("sft").experiment_id])
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(step, pytest.approx(loss)) for step, loss in
                                                    zip((1, 2, 3), losses)]
    # One run holds the training, the evaluation after it and the run's final numbers.
    assert "eval_loss" in run.data.metrics and run.info.status == "FINISHED"
    assert run.data.metrics["final/eval_loss_after"] == pytest.approx(read_metrics(out)["eval_loss_after"])

    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    rows = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for record in wandb_records(run_file) if record.WhichOneof("record_type") == "history"]
    logged = [(row["train/global_step"], row["train/loss"]) for row in rows if "train/loss" in row]
    assert logged == [(step, pytest.approx(loss)) for step, loss in zip((1, 2, 3), losses)]
    runs = [r.run for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run"]
    assert runs and runs[0].project == "ft-recipes"

    assert CANARY not in result.stdout + result.stderr
    assert [p for p in out.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()] == []
