"""The local backend: the command `launcher run` starts, and the stop signals it passes on.

The recipes themselves run in tests/recipes/; here a stand-in recipe under real torchrun shows
what reaches the training processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher import local, recipes
from launcher.appspec import AppSpec
from tests.conftest import REPO, kill_tree, processes_mentioning

STAND_IN = """'''A stand-in recipe: checks nothing, then waits for a stop signal as the recipes do.'''
import os, signal, sys, time
if "--check" in sys.argv:
    if os.environ.get("STAND_IN_CHECK_WAITS"):  # a check still reading the data; Ctrl-C ends it as the recipes' does
        signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(130))
        open(os.environ["STAND_IN_CHECK_WAITS"], "w").close()  # it waits now
        time.sleep(120)
    sys.exit(0)
def stop(signum, frame):
    print(f"rank {os.environ.get('RANK', '-')} checkpointed after signal {signum}", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGUSR1, stop)
interrupts = []
def interrupted(signum, frame):  # the recipes exit 130 on Ctrl-C; a second SIGINT would come within the second
    interrupts.append(signum)
    if len(interrupts) == 1:
        time.sleep(1)
        print(f"rank {os.environ.get('RANK', '-')} interrupted {len(interrupts)} time(s)", flush=True)
        sys.exit(130)
signal.signal(signal.SIGINT, interrupted)
print("ready", flush=True)
time.sleep(120)
"""


def app(nproc: int = 1, **fields) -> AppSpec:
    sft = recipes.load("sft")
    return AppSpec(sft, sft.name, nproc_per_node=nproc, **fields)


def test_one_process_runs_the_entry_point_itself():
    request = local.LocalBackend().dryrun(app(config="my.yaml", overrides=("seed=3",)))
    assert request.argv == [sys.executable, str(recipes.load("sft").entry), "--config", "my.yaml", "--set=seed=3"]
    assert request.check is None and request.env == {"OMP_NUM_THREADS": str(os.cpu_count() or 1)}


def test_several_processes_run_under_torchrun_after_one_check():
    request = local.LocalBackend().dryrun(app(nproc=2))
    entry, config = str(recipes.load("sft").entry), str(recipes.load("sft").config)
    assert request.argv == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            entry, "--config", config]
    assert request.check == [sys.executable, entry, "--config", config, "--check"]
    assert request.text.startswith(f"{sys.executable} -m torch.distributed.run ")


def launched(tmp_path, nproc: int, **env: str) -> subprocess.Popen:
    """``launcher run`` of the stand-in recipe in a process group of its own, as a terminal starts it."""
    (tmp_path / "train.py").write_text(STAND_IN)
    (tmp_path / "config.yaml").write_text("seed: 1\n")
    return subprocess.Popen([sys.executable, "-m", "launcher.cli", "run", str(tmp_path), "--nproc", str(nproc)],
                            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1", **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def started(tmp_path, nproc: int) -> tuple[subprocess.Popen, str]:
    """``launched``, once every training process waits."""
    proc = launched(tmp_path, nproc)
    seen, deadline = "", time.monotonic() + 120
    while seen.count("ready") < nproc and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    return proc, seen


def finished(proc: subprocess.Popen, seen: str) -> str:
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    return seen + out


def test_sigterm_to_the_launcher_reaches_each_worker_which_exits_143(tmp_path):
    proc, seen = started(tmp_path, 2)
    proc.send_signal(signal.SIGTERM)
    out = finished(proc, seen)
    assert proc.returncode == 143, out[-3000:]
    assert "rank 0 checkpointed after signal 15" in out and "rank 1 checkpointed after signal 15" in out


@pytest.mark.parametrize("nproc", [1, 2])
def test_ctrl_c_reaches_each_training_process_once_and_the_run_exits_130(tmp_path, nproc):
    """SIGINT to the launcher's whole process group, as a terminal's Ctrl-C sends it: the README's code 130, not
    click's "Aborted!" (1) or torchrun's agent stopping its workers itself (1)."""
    proc, seen = started(tmp_path, nproc)
    os.killpg(proc.pid, signal.SIGINT)
    out = finished(proc, seen)
    assert proc.returncode == 130, out[-3000:]
    ranks = ["-"] if nproc == 1 else ["0", "1"]
    assert all(f"rank {rank} interrupted 1 time(s)" in out for rank in ranks), out[-3000:]
    assert "Aborted" not in out


def state(pid: int) -> str:
    """The process state letter from /proc (T: stopped)."""
    return (Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split() or ["?"])[0]


def states_become(pids: list[int], wanted: set[str]) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(state(pid) in wanted for pid in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("nproc", [1, 2])
def test_ctrl_z_pauses_every_training_process_with_the_launcher_and_fg_continues_them(tmp_path, nproc):
    """SIGTSTP to the launcher's process group, as a terminal's Ctrl-Z sends it, then SIGCONT, as ``fg`` sends it:
    the training processes, in a session of their own, stop and go on with the launcher instead of training on
    while the shell reports the job stopped."""
    proc, seen = started(tmp_path, nproc)
    training = processes_mentioning(str(tmp_path / "train.py"))
    assert len(training) == (1 if nproc == 1 else 3), training  # torchrun's agent and its two workers
    os.killpg(proc.pid, signal.SIGTSTP)
    assert states_become([proc.pid, *training], {"T"}), {pid: state(pid) for pid in [proc.pid, *training]}
    os.killpg(proc.pid, signal.SIGCONT)
    assert states_become([proc.pid, *training], {"S", "R"}), {pid: state(pid) for pid in [proc.pid, *training]}
    os.killpg(proc.pid, signal.SIGINT)
    out = finished(proc, seen)
    assert proc.returncode == 130, out[-3000:]


def test_ctrl_c_while_the_check_runs_exits_130_and_starts_no_training(tmp_path):
    """With several processes the launcher checks the config before torchrun starts; a Ctrl-C in those seconds
    ends the check and the run with 130 too, not click's "Aborted!" and 1."""
    waiting = tmp_path / "check-waits"
    proc = launched(tmp_path, 2, STAND_IN_CHECK_WAITS=str(waiting))
    deadline = time.monotonic() + 60
    while not waiting.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    out = finished(proc, "")
    assert proc.returncode == 130, out[-3000:]
    assert "Aborted" not in out and "Traceback" not in out and "ready" not in out, out[-3000:]
    assert processes_mentioning(str(tmp_path / "train.py")) == []


def test_a_closed_terminal_ends_every_training_process_and_the_run_exits_129(tmp_path):
    """SIGHUP to the launcher's process group, as a terminal sends it when it closes: the training processes, in
    a session of their own, get it from the launcher, and none is left running."""
    proc, seen = started(tmp_path, 2)
    os.killpg(proc.pid, signal.SIGHUP)
    out = finished(proc, seen)
    assert proc.returncode == 128 + signal.SIGHUP, out[-3000:]
    assert processes_mentioning(str(tmp_path / "train.py")) == []
