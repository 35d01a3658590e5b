"""The optuna recipe: TPE search over sft runs, run for real through ``launcher run`` on the tiny model."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY_SEQ_LENGTH, read_metrics, run_launcher

pytestmark = pytest.mark.slow(minutes=1.5)  # trains real models; make test starts the longest first


TINY_TRIALS = ["bf16=false", "max_steps=4", "eval_every_steps=2", "learning_rate=3e-3", "batch_size=2",
               f"seq_length={TINY_SEQ_LENGTH}", "logging_steps=1", "save_steps=100", "tpe_n_startup_trials=2"]
BASE_VALUES = {"learning_rate": 3e-3, "peft_lora_r": 16, "peft_lora_alpha": 32, "peft_lora_dropout": 0.0,
               "weight_decay": 0.0, "warmup_ratio": 0.05, "batch_size": 2, "lr_scheduler_type": "cosine"}


def overrides(output_dir: Path, tiny_model: str, small_hotel: dict, *extra: str) -> list[str]:
    args = []
    for item in [f"model_name={tiny_model}", f"dataset_name={small_hotel['train']}",
                 f"eval_dataset_name={small_hotel['eval']}", f"output_dir={output_dir}", *TINY_TRIALS, *extra]:
        args += ["--set", item]
    return args


def launch(output_dir: Path, tiny_model: str, small_hotel: dict, *extra: str,
           env: dict | None = None) -> subprocess.Popen:
    """``launcher run recipes/optuna`` in the background: one search worker."""
    return subprocess.Popen([sys.executable, "-m", "launcher.cli", "run", "recipes/optuna",
                             *overrides(output_dir, tiny_model, small_hotel, *extra)],
                            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: int = 300) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_worker(proc)
        proc.kill()
        raise AssertionError(f"worker timed out:\n{proc.communicate()[0][-3000:]}") from None
    return proc.returncode, out


def kill_worker(proc: subprocess.Popen) -> None:
    """SIGKILL the search process the launcher started (no handler, no checkpoint: a lost node)."""
    for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
        os.kill(int(pid), signal.SIGKILL)


def complete_checkpoints(trial_dir: Path) -> list[int]:
    return sorted(int(p.parent.name.split("-")[1]) for p in trial_dir.glob("checkpoint-*/COMPLETE"))


def wait_for_checkpoint(trial_dir: Path, proc: subprocess.Popen, after: int = 0, timeout: float = 120) -> int:
    """The step of the first complete checkpoint in trial_dir past step `after`."""
    deadline = time.monotonic() + timeout
    while not [s for s in complete_checkpoints(trial_dir) if s > after]:
        if proc.poll() is not None:
            raise AssertionError(f"worker ended early ({proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            kill_worker(proc)
            proc.kill()
            raise AssertionError(f"timed out waiting for a checkpoint in {trial_dir}")
        time.sleep(0.01)
    return max(complete_checkpoints(trial_dir))


def load_trials(storage, study_name: str = "sft-search"):
    import optuna

    if isinstance(storage, Path):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(str(storage)))
    return optuna.load_study(study_name=study_name, storage=storage).get_trials()


def test_two_concurrent_workers_share_one_journal_and_the_best_config_is_an_sft_config(tmp_path, tiny_model,
                                                                                       small_hotel):
    from optuna.trial import TrialState

    out = tmp_path / "study"
    workers = [launch(out, tiny_model, small_hotel, "n_trials=3", "prune=false", env={"OMP_NUM_THREADS": "1"})
               for _ in range(2)]  # one core each
    for code, log in [finish(worker) for worker in workers]:
        assert code == 0, log[-3000:]

    trials = load_trials(out / "study.journal")  # ONE journal holds every worker's trials
    assert 3 <= len(trials) <= 4 and all(t.state == TrialState.COMPLETE for t in trials)  # 4: both started a 3rd
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert all("heartbeat" in t.system_attrs for t in trials)  # the journal's heartbeats were recorded
    baseline = [t for t in trials if t.user_attrs.get("baseline")]
    assert len(baseline) == 1 and baseline[0].params == BASE_VALUES
    searched = [json.dumps(t.params, sort_keys=True) for t in trials if t is not baseline[0]]
    assert len(set(searched)) == len(searched)  # each trial samples with its own seed, across workers too
    assert all(set(t.intermediate_values) == {2, 4} for t in trials)  # eval every 2 steps, then the final one
    assert all((out / f"trial-{t.number}" / "model" / "adapter_config.json").is_file() for t in trials)

    metrics = read_metrics(out)
    best = min(trials, key=lambda t: t.value)
    assert metrics["best_trial"] == best.number and metrics["baseline_trial"] == baseline[0].number
    assert metrics["best_eval_loss"] == best.value and metrics["baseline_eval_loss"] == baseline[0].value
    assert json.loads((out / "best_params.json").read_text()) == best.params
    with open(out / "trials.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(trials)
    assert (out / "optimization_history.png").stat().st_size > 0
    assert (out / "param_importances.png").stat().st_size > 0

    validated = run_launcher("validate", "recipes/sft", "--config", str(out / "best_config.yaml"))
    assert validated.returncode == 0, validated.stderr[-2000:]
    best_config = yaml.safe_load(validated.stdout)
    assert best_config["output_dir"] == str(out / "best")
    assert {key: best_config[key] for key in best.params} == best.params


def test_preempted_and_killed_workers_leave_failed_trials_that_the_next_worker_resumes_then_prunes(
        tmp_path, tiny_model, small_hotel):
    from optuna.trial import TrialState

    out = tmp_path / "faults"
    journal = out / "study.journal"
    run = ["n_trials=2", "max_steps=8", "save_steps=2", "save_total_limit=1", "heartbeat_interval=1",
           "grace_period=2", "pruner_n_startup_trials=1",
           "search_space={learning_rate: {low: 1.0e-8, high: 3.0e-3, log: true}}"]

    # 1. SIGTERM (preemption): the trial saves a checkpoint, fails, and is re-enqueued; the worker exits 143.
    first = launch(out, tiny_model, small_hotel, *run)
    wait_for_checkpoint(out / "trial-0", first)
    first.send_signal(signal.SIGTERM)  # the launcher forwards it to the search process
    code, log = finish(first)
    assert code == 143 and "exiting with 143" in log, log[-3000:]
    stopped, requeued = load_trials(journal)
    assert stopped.state == TrialState.FAIL and requeued.state == TrialState.WAITING
    assert requeued.params == stopped.params and requeued.system_attrs["failed_trial"] == 0
    (preempted_at,) = complete_checkpoints(out / "trial-0")

    # 2. The next worker resumes that checkpoint and is SIGKILLed (a lost node): its trial stays RUNNING.
    second = launch(out, tiny_model, small_hotel, *run)
    killed_at = wait_for_checkpoint(out / "trial-1", second, after=preempted_at)
    kill_worker(second)
    finish(second)
    assert complete_checkpoints(out / "trial-0") == []  # moved into trial-1, which continued from it
    assert [t.state for t in load_trials(journal)] == [TrialState.FAIL, TrialState.RUNNING]
    assert killed_at < 8

    # 3. Past grace_period the next worker fails the silent trial, retries it from its newest checkpoint,
    #    then runs a sampled trial whose far lower learning rate the median pruner stops at once.
    time.sleep(2)
    code, log = finish(launch(out, tiny_model, small_hotel, *run))
    assert code == 0, log[-3000:]
    trials = load_trials(journal)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE,
                                         TrialState.PRUNED], [(t.state, t.params) for t in trials]
    _, dead, retry, pruned = trials
    assert retry.params == {"learning_rate": 3e-3} and retry.user_attrs["baseline"]  # the baseline, retried
    assert retry.system_attrs["failed_trial"] == 0 and retry.system_attrs["retry_history"] == [0, 1]
    assert retry.user_attrs["worker"] != dead.user_attrs["worker"]
    resumed = read_metrics(out / "trial-2")
    assert resumed["resumed_from"] == str(out / "trial-2" / f"checkpoint-{killed_at}")
    assert resumed["global_step"] == 8
    assert max(pruned.intermediate_values) < 8 and not (out / f"trial-{pruned.number}" / "model").exists()
    metrics = read_metrics(out)
    assert metrics["trial_states"] == {"COMPLETE": 1, "PRUNED": 1, "FAIL": 2} and metrics["baseline_trial"] == 2
    assert [t["retry_of"] for t in metrics["trials"]] == [None, 0, 1, None]


def test_bad_input_is_refused_before_anything_loads_and_a_database_url_is_only_used_by_reference(tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution

    result = run_launcher("run", "recipes/optuna", "--set", "search_space.learning_rate={low: 0.1, high: 0.01}",
                          "--set", "search_space.lerning_rate={low: 1, high: 2}",
                          "--set", "search_space.batch_size={choices: [0, 2]}",
                          "--set", "search_space.output_dir={choices: [a, b]}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert "error: search_space.learning_rate: low must be below high, got low=0.1, high=0.01" in lines
    assert "error: search_space.lerning_rate: unknown sft key; did you mean learning_rate?" in lines
    assert "error: search_space.batch_size: must be >= 1, got 0" in lines
    assert "error: search_space.output_dir: not searchable (the same in every trial)" in lines

    canary = "pw_CANARY_93b1f0"
    refused = run_launcher("run", "recipes/optuna", "--set", f"storage=postgresql://search:{canary}@db/optuna")
    assert refused.returncode == 2 and "error: storage: the URL holds a password" in refused.stderr
    assert canary not in refused.stdout + refused.stderr

    # A database given by reference (env var): a study that already has its n_trials finished trials.
    # The worker joins it, runs nothing (no model is loaded) and writes the summaries; the URL appears
    # in no output.
    out, canary = tmp_path / "db", "db-CANARY-4e1d"
    url = f"sqlite:///{tmp_path / canary}.sqlite"
    study = optuna.create_study(study_name="sft-search", storage=url)
    space = {"learning_rate": FloatDistribution(1e-4, 1e-2, log=True)}
    for value, lr in ((2.5, 3e-3), (2.0, 6e-3)):
        study.add_trial(optuna.trial.create_trial(params={"learning_rate": lr}, distributions=space, value=value,
                                                  user_attrs={"baseline": lr == 3e-3}))
    result = run_launcher("run", "recipes/optuna", "--set", f"output_dir={out}", "--set", "n_trials=2",
                          "--set", "search_space={learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}}",
                          "--set", "storage_secret=OPTUNA_TEST_DB", env={"OPTUNA_TEST_DB": url})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(out)
    assert metrics["storage"] == "the URL in storage_secret OPTUNA_TEST_DB" and metrics["worker_trials"] == []
    assert (metrics["best_trial"], metrics["baseline_trial"], metrics["improvement_over_baseline"]) == (1, 0, 0.5)
    assert yaml.safe_load((out / "best_config.yaml").read_text())["learning_rate"] == 6e-3
    assert canary not in result.stdout + result.stderr
    assert [p for p in out.rglob("*") if p.is_file() and canary.encode() in p.read_bytes()] == []
