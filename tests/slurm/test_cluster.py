"""Real jobs on the two-node local Slurm cluster, submitted with `launcher submit` as a user would.

- sft on 2 nodes x 1 process (CPU, gloo) with the tiny model evaluates, then trains with both
  nodes holding the same weights after every step, runs to the end, and its outputs load;
- the same job, preempted by SIGTERM alone (as Slurm preempts: the tasks and the batch shell get it),
  checkpoints, requeues itself, resumes from that checkpoint and ends at the same step as the
  uninterrupted job, with every step trained once;
- the failure contract (launcher/keeper.py, README "Exit codes"): a training worker killed with
  SIGKILL, in a one-node and in a two-node job, makes the job requeue, resume and complete, the
  log saying which exit code and why (the two-node one submitted with plain sbatch, from another
  directory, as the rendered script's header invites); a worker killed at every attempt stops the job after
  max_retries, FAILED; a time limit far shorter than the training is passed through time-limit
  continuations that leave the failure budget untouched;
- a search recipe with --workers 3 becomes a job array whose workers share the output dir.

The jobs are submitted at once: the test cluster's nodes offer 4 CPUs each (on 2 cores), and a
job takes one per node, so they run side by side.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_SEQ_LENGTH, read_metrics, run_launcher

# Real jobs, mostly waiting on the cluster, so make test starts them first; its workers split the
# suite by file, so one worker runs them all against one cluster.
pytestmark = pytest.mark.slow(minutes=6)

STEPS = 24
# The time-limited job: its first SLOW_ATTEMPTS attempts take half a second a step, too slow to train
# TIME_LIMITED_STEPS in one minute; then the steps left take seconds (so the test ends soon).
TIME_LIMITED_STEPS = 300
SLOW_ATTEMPTS = 3
TINY = ["eval_answer_field=null", "bf16=false", "batch_size=2", f"seq_length={TINY_SEQ_LENGTH}", "logging_steps=1",
        "save_steps=4", "save_total_limit=null", f"max_steps={STEPS}", "replica_check_steps=1"]


def submit(*args: str) -> str:
    result = run_launcher("submit", *args, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"^submitted job (\d+)", result.stdout, re.M)
    assert match and "log:" in result.stdout, result.stdout
    return match.group(1)


def submit_training(name: str, root: Path, tiny_model: str, small_hotel: dict) -> str:
    sets = [f"model_name={tiny_model}", f"dataset_name={small_hotel['train']}",
            f"eval_dataset_name={small_hotel['eval']}", *TINY]
    return submit("recipes/sft", "--profile", "local", "--nodes", "2", "--job-name", name,
                  "--output-root", str(root), *[arg for item in sets for arg in ("--set", item)])


def job_fields(job_id: str) -> list[dict[str, str]]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]


def wait_done(job_id: str, timeout: float = 900) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = job_fields(job_id)
        if jobs and all(job["JobState"] in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                            "OUT_OF_MEMORY") for job in jobs):
            return jobs
        time.sleep(1)
    subprocess.run(["scancel", job_id])
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job_fields(job_id)}")


def log_of(job_id: str) -> str:
    return "\n".join(Path(job["StdOut"]).read_text(errors="replace") for job in job_fields(job_id))


LATE_SIGNAL_WAIT = "== the training step ended with 143 before any signal reached this shell: waiting up to 10 s"


def preempt_when(job_id: str, ready, errors: list) -> None:
    """SIGTERM as Slurm's preemption sends it, once ``ready()``: to the tasks of the job's steps, and then to its
    batch shell (not to the shell's children: srun would end the step on it).

    The batch shell's only once the step has ended with 143: Slurm delivers the two independently, and a step
    stopped by a preemption may end before the shell hears of it. That late order must still count as a
    preemption, not a node's failure (the time-limit test has the shell signalled first, by Slurm itself)."""
    try:
        deadline = time.monotonic() + 900
        while not ready():
            assert time.monotonic() < deadline, "no checkpoint before the deadline"
            time.sleep(0.05)
        signal_job = ["scancel", "--signal=TERM", job_id]
        result = subprocess.run(signal_job, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        log = Path(job_fields(job_id)[0]["StdOut"])
        ended_by = time.monotonic() + 120  # then the shell is signalled anyway, and the test says what followed
        while LATE_SIGNAL_WAIT not in log.read_text(errors="replace") and time.monotonic() < ended_by:
            time.sleep(0.1)
        result = subprocess.run([*signal_job, "--batch"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    except Exception as exc:  # noqa: BLE001 - reported by the test that joins this thread
        errors.append(exc)


# On PYTHONPATH in a job's env, this runs in its training processes: the worker of rank
# SABOTAGE_RANK kills itself with SIGKILL after optimizer step SABOTAGE_STEP (once per job with
# SABOTAGE_ONCE naming a marker file); with SABOTAGE_SLEEP every optimizer step takes that long, as
# long as the job's attempts.log (SABOTAGE_ATTEMPTS) holds fewer than SABOTAGE_SLOW_ATTEMPTS lines.
SABOTAGE = """
import os

if "LOCAL_RANK" in os.environ and ("SABOTAGE_RANK" in os.environ or "SABOTAGE_SLEEP" in os.environ):
    import signal, time
    from torch.optim.optimizer import register_optimizer_step_post_hook

    steps = [0]

    def attempts_so_far():
        try:
            return len(open(os.environ["SABOTAGE_ATTEMPTS"]).read().splitlines())
        except FileNotFoundError:
            return 0

    def sabotage(optimizer, args, kwargs):
        steps[0] += 1
        if "SABOTAGE_SLEEP" in os.environ and attempts_so_far() < int(os.environ["SABOTAGE_SLOW_ATTEMPTS"]):
            time.sleep(float(os.environ["SABOTAGE_SLEEP"]))
        if os.environ.get("RANK") != os.environ.get("SABOTAGE_RANK") or steps[0] != int(os.environ.get("SABOTAGE_STEP", 0)):
            return
        once = os.environ.get("SABOTAGE_ONCE")
        if once:
            if os.path.exists(once):
                return
            open(once, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)

    register_optimizer_step_post_hook(sabotage)
"""


def sbatch_rendered(root: Path, name: str, *args: str) -> str:
    """``launcher render`` the job, then submit the file with plain ``sbatch`` from another directory."""
    result = run_launcher("render", *args, timeout=120)
    assert result.returncode == 0, result.stderr
    elsewhere = root / f"{name}-submitted-from"
    elsewhere.mkdir()
    (elsewhere / "job.sbatch").write_text(result.stdout)
    submitted = subprocess.run(["sbatch", "--parsable", "job.sbatch"], cwd=elsewhere, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip().split(";")[0]


def submit_sabotaged(name: str, root: Path, tiny_model: str, small_hotel: dict, nodes: int, nproc: int,
                     env: dict[str, str], *extra: str, plain_sbatch: bool = False) -> str:
    site = root / "sabotage"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SABOTAGE)
    sets = [f"model_name={tiny_model}", f"dataset_name={small_hotel['train']}", "eval_split=null",
            *TINY[:-2], "max_steps=8", "save_steps=2"]
    envs = {"PYTHONPATH": str(site), **env}
    args = ("recipes/sft", "--profile", "local", "--nodes", str(nodes), "--nproc-per-node", str(nproc),
            "--job-name", name, "--output-root", str(root),
            *[arg for key, value in envs.items() for arg in ("--env", f"{key}={value}")],
            *[arg for item in sets for arg in ("--set", item)], *extra)  # extra: the last word
    return sbatch_rendered(root, name, *args) if plain_sbatch else submit(*args)


@pytest.fixture(scope="module")
def training_jobs(slurm_cluster, tmp_path_factory, tiny_model, small_hotel):
    """Two identical sft jobs, the second preempted after its first checkpoint; and the failure-contract jobs."""
    root = tmp_path_factory.mktemp("slurm-out")
    jobs = {"plain": submit_training("plain", root, tiny_model, small_hotel),
            "preempted": submit_training("preempted", root, tiny_model, small_hotel)}
    kill = {"SABOTAGE_RANK": "1", "SABOTAGE_STEP": "3"}
    jobs["killed-1node"] = submit_sabotaged("killed-1node", root, tiny_model, small_hotel, 1, 2,
                                            {**kill, "SABOTAGE_ONCE": str(root / "killed-1node.once")})
    jobs["killed-2nodes"] = submit_sabotaged("killed-2nodes", root, tiny_model, small_hotel, 2, 1,
                                             {**kill, "SABOTAGE_ONCE": str(root / "killed-2nodes.once")},
                                             plain_sbatch=True)
    jobs["killed-always"] = submit_sabotaged("killed-always", root, tiny_model, small_hotel, 1, 2, kill,
                                             "--max-retries", "1")
    slow = {"SABOTAGE_SLEEP": "0.5", "SABOTAGE_SLOW_ATTEMPTS": str(SLOW_ATTEMPTS),
            "SABOTAGE_ATTEMPTS": str(root / "time-limited" / "attempts.log")}
    jobs["time-limited"] = submit_sabotaged("time-limited", root, tiny_model, small_hotel, 1, 1, slow,
                                            "--time", "1", "--signal-lead", "20",
                                            "--set", f"max_steps={TIME_LIMITED_STEPS}", "--set", "save_steps=10000")
    errors: list = []
    ready = lambda: (root / "preempted" / "checkpoint-4" / "COMPLETE").exists()  # noqa: E731
    watcher = threading.Thread(target=preempt_when, args=(jobs["preempted"], ready, errors), daemon=True)
    watcher.start()
    yield {"root": root, **jobs, "watcher": watcher, "errors": errors}
    subprocess.run(["scancel", *jobs.values()])


def test_sft_runs_on_two_nodes_in_sync_and_its_outputs_load(training_jobs):
    from peft import AutoPeftModelForCausalLM

    job_id, out = training_jobs["plain"], training_jobs["root"] / "plain"
    (job,) = wait_done(job_id)
    assert job["JobState"] == "COMPLETED", log_of(job_id)[-4000:]
    assert job["NodeList"] == "node[1-2]" and job["Restarts"] == "0"
    metrics = read_metrics(out)
    assert metrics["world_size"] == 2 and metrics["global_step"] == STEPS
    # Evaluated first, then data-parallel: the nodes' weights were compared after every step, and equal.
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
    assert metrics["replicas_checked_at_steps"] == list(range(1, STEPS + 1))
    # One copy of each progress line per job (rank 0's), though both nodes train and log.
    log = log_of(job_id)
    steps = re.findall(rf"^step (\d+)/{STEPS} \(", log, re.M)
    assert steps == [str(step) for step in range(1, STEPS + 1)], log[-4000:]
    assert "'grad_norm'" not in log and "rank 1 INFO" not in log  # no Trainer dicts, no other rank's info
    AutoPeftModelForCausalLM.from_pretrained(out / "model")
    # The resolved config sits next to the outputs, and is the one the recipe trained with.
    written = (out / "job-config.yaml").read_text()
    assert f"max_steps: {STEPS}" in written and f"output_dir: {out}" in written
    assert (out / "job.sbatch").read_text().startswith("#!/bin/bash")

    status = run_launcher("status", job_id)
    assert status.returncode == 0 and "COMPLETED" in status.stdout and f"log: {out}/slurm-{job_id}.out" in status.stdout
    logs = run_launcher("logs", job_id)
    assert logs.returncode == 0 and "== training step ended with exit code 0" in logs.stdout


def test_preempted_job_checkpoints_requeues_and_resumes_without_losing_a_step(training_jobs):
    job_id, out = training_jobs["preempted"], training_jobs["root"] / "preempted"
    (job,) = wait_done(job_id)
    training_jobs["watcher"].join(timeout=60)
    assert not training_jobs["errors"], training_jobs["errors"]
    log = log_of(job_id)
    assert job["JobState"] == "COMPLETED", log[-4000:]
    assert job["Restarts"] == "1"

    # SIGTERM reached the training processes on both nodes, and torchrun's agent did not stop them
    # first: they saved a checkpoint at the step they were in and exited 143; the job requeued itself
    # as a continuation, which uses none of the failure budget.
    assert log.count("received SIGTERM") >= 2, log[-4000:]  # both nodes (the shell repeats it every 10 s)
    stops = set(re.findall(r"stopped: checkpoint saved at step (\d+); exiting with 143", log))
    assert len(stops) == 1, log[-4000:]
    stopped_at = int(stops.pop())
    assert 4 <= stopped_at < STEPS
    assert LATE_SIGNAL_WAIT in log, log[-4000:]  # the step ended first; the shell's own signal came later
    assert "exit code 143: stopped after a checkpoint (TERM)" in log
    assert "== requeueing (continuation 1)" in log and "attempt 2 (0 failed, 1 continued)" in log

    # The rerun resumed from exactly that checkpoint and ended where the uninterrupted job did.
    metrics = read_metrics(out)
    plain = read_metrics(training_jobs["root"] / "plain")
    assert metrics["resumed_from"] == str(out / f"checkpoint-{stopped_at}")
    assert metrics["global_step"] == plain["global_step"] == STEPS
    steps = [row["step"] for row in metrics["log_history"] if "loss" in row]
    assert steps == list(range(1, STEPS + 1)), steps  # every step trained once: none lost, none repeated
    losses = [row["loss"] for row in metrics["log_history"] if "loss" in row]
    plain_losses = [row["loss"] for row in plain["log_history"] if "loss" in row]
    assert losses == pytest.approx(plain_losses, rel=1e-3)


def attempts_of(out: Path) -> list[list[str]]:
    """(kind, exit code) of each attempt, from the job's attempts.log."""
    return [line.split()[:2] for line in (out / "attempts.log").read_text().splitlines()]


@pytest.mark.parametrize("name", ["killed-1node", "killed-2nodes"])
def test_a_killed_worker_requeues_the_job_which_resumes_and_completes(training_jobs, name):
    job_id, out = training_jobs[name], training_jobs["root"] / name
    (job,) = wait_done(job_id)
    log = log_of(job_id)
    assert job["JobState"] == "COMPLETED" and job["Restarts"] == "1", log[-4000:]
    assert "keeper: worker rank 1 exited with 137 (killed by SIGKILL; retried)" in log, log[-4000:]
    assert re.search(r"== training step ended with exit code (137|170|143): a ", log), log[-4000:]
    assert "== requeueing (failure 1)" in log
    kinds = attempts_of(out)
    assert [kind for kind, _ in kinds] == ["failure", "finished"], kinds
    metrics = read_metrics(out)
    assert metrics["global_step"] == 8 and metrics["resumed_from"] == str(out / "checkpoint-2")
    if name == "killed-2nodes":  # submitted with plain sbatch: its log is where sbatch ran
        assert job["StdOut"] == str(training_jobs["root"] / f"{name}-submitted-from" / f"slurm-{job_id}.out")


def test_a_worker_killed_at_every_attempt_stops_the_job_after_max_retries(training_jobs):
    job_id, out = training_jobs["killed-always"], training_jobs["root"] / "killed-always"
    (job,) = wait_done(job_id)
    log = log_of(job_id)
    assert job["JobState"] == "FAILED" and job["ExitCode"] == "3:0", log[-4000:]
    assert job["Restarts"] == "1"  # max_retries 1: one requeue, then no more
    assert "== not requeued: the job failed 2 times and max_retries is 1" in log, log[-4000:]
    assert attempts_of(out) == [["failure", "137"], ["failure", "137"]]
    assert not (out / "model").exists()


def test_a_time_limit_far_shorter_than_the_training_is_passed_by_continuations(training_jobs):
    job_id, out = training_jobs["time-limited"], training_jobs["root"] / "time-limited"
    (job,) = wait_done(job_id, timeout=1200)
    log = log_of(job_id)
    assert job["JobState"] == "COMPLETED", log[-4000:]
    kinds = attempts_of(out)
    assert len(kinds) >= SLOW_ATTEMPTS + 1 and kinds[-1] == ["finished", "0"], kinds
    assert all(kind == ["continuation", "143"] for kind in kinds[:-1]), kinds
    assert "USR1: asking the training processes to checkpoint and stop" in log
    assert "0 failed" in log.split("== job")[-1]  # the last attempt still had its whole failure budget
    metrics = read_metrics(out)
    assert metrics["global_step"] == TIME_LIMITED_STEPS
    steps = [row["step"] for row in metrics["log_history"] if "loss" in row]
    assert steps == list(range(1, TIME_LIMITED_STEPS + 1))  # every step trained once across the attempts


FAKE_SEARCH = '''"""A stand-in search recipe: every worker appends to one journal in the shared output dir."""
import argparse, os, sys, time
import yaml

parser = argparse.ArgumentParser()
parser.add_argument("--config")
parser.add_argument("--set", action="append", default=[])
parser.add_argument("--check", action="store_true")
args = parser.parse_args()
cfg = yaml.safe_load(open(args.config))
for item in args.set:
    key, _, value = item.partition("=")
    cfg[key] = yaml.safe_load(value)
if args.check:
    sys.stdout.write(yaml.safe_dump(cfg, sort_keys=False))
    sys.exit(0)
with open(os.path.join(cfg["output_dir"], cfg["storage"]), "a") as journal:
    journal.write(f"trial by worker {os.environ['SLURM_ARRAY_TASK_ID']}\\n")
'''


def test_search_workers_become_a_job_array_sharing_one_journal(slurm_cluster, tmp_path):
    recipe = tmp_path / "recipes" / "fake-search"
    recipe.mkdir(parents=True)
    (recipe / "search.py").write_text(FAKE_SEARCH)
    (recipe / "config.yaml").write_text("storage: study.journal\noutput_dir: outputs/fake\n")
    job_id = submit(str(recipe), "--workers", "3", "--profile", "local", "--workdir", str(tmp_path),
                    "--venv", str(REPO / ".venv"), "--output-root", str(tmp_path / "out"))
    tasks = wait_done(job_id, timeout=300)
    assert sorted(job["ArrayTaskId"] for job in tasks) == ["0", "1", "2"]
    assert all(job["JobState"] == "COMPLETED" for job in tasks), log_of(job_id)
    journal = (tmp_path / "out" / "fake-search" / "study.journal").read_text().splitlines()
    assert sorted(journal) == [f"trial by worker {i}" for i in range(3)]
    logs = run_launcher("logs", job_id)
    assert logs.returncode == 0 and logs.stdout.count("== job ") == 3
    status = run_launcher("status", job_id)
    assert status.returncode == 0 and status.stdout.count("COMPLETED") == 3, status.stdout
