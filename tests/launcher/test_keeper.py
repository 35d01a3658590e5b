"""launcher/keeper.py: every training node's command exits with the contract's code, not torchrun's 1.

Run as a pod or a Slurm step runs it (python -m launcher.keeper SCRIPT ..., the rendezvous from the
PET_* env), with 2 local workers of a stand-in script that exits with a chosen code, or waits and
turns SIGTERM into 143 as the recipes do.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.attempts import FILE
from launcher.keeper import exit_code
from tests.conftest import REPO

WORKER = """
import os, signal, subprocess, sys, time
def stop(signum, frame):
    print(f"rank {os.environ['RANK']} checkpointed after signal {signum}", flush=True)
    if os.environ.get("WORKER_REPEATS_THE_SIGNAL") and os.environ["RANK"] == "0":
        agent = os.getppid()
        with open(f"/proc/{agent}/stat") as stat:
            node = int(stat.read().rsplit(")", 1)[1].split()[1])  # the agent's parent: the keeper
        subprocess.Popen([sys.executable, "-c", REPEATER, str(node), str(signum)], start_new_session=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGUSR1, stop)
code = int(os.environ["WORKER_EXIT"].split(",")[int(os.environ["RANK"])])
if code < 0:
    os.kill(os.getpid(), -code)
if code == 999:
    print("ready", flush=True)
    agent = os.getppid()
    for _ in range(600):  # until a signal, or the agent is killed (a pod killed whole takes every process)
        if os.getppid() != agent:
            break
        time.sleep(0.1)
sys.exit(code)
"""


# Sends signal argv[2] to pid argv[1] every 2 ms until that process has ended (a zombie counts as ended).
REPEATER = """
import os, sys, time
pid, signum = int(sys.argv[1]), int(sys.argv[2])
for _ in range(10000):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                break
        os.kill(pid, signum)
    except (OSError, ProcessLookupError):
        break
    time.sleep(0.002)
"""


def keeper(tmp_path, codes: str, **env: str) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(f"REPEATER = {REPEATER!r}\n{WORKER}")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "WORKER_EXIT": codes, "PET_NNODES": "1", "PET_NPROC_PER_NODE": "2", "PET_NODE_RANK": "0",
           "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", **env}
    return subprocess.Popen([sys.executable, "-m", "launcher.keeper", str(script)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_ready(proc: subprocess.Popen) -> None:
    """Until both workers said "ready" (counted as words: two writes can share a line)."""
    seen, deadline = "", time.monotonic() + 90
    while seen.count("ready") < 2 and time.monotonic() < deadline:
        seen += proc.stdout.readline()


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode, out


@pytest.mark.parametrize("codes, expected, why", [
    ("0,2", 2, "invalid config or data; not retried"), ("143,0", 143, "stopped by a signal after a checkpoint"),
    ("0,-9", 137, "killed by SIGKILL; retried"), ("170,0", 170, "lost the other ranks"),
    ("1,-9", 137, "killed by SIGKILL"),  # the killed worker explains the other's failure
])
def test_the_node_exits_with_the_code_that_explains_the_failure(tmp_path, codes, expected, why):
    code, out = finish(keeper(tmp_path, codes))
    assert code == expected, out[-3000:]
    assert f"exited with {expected} ({why}" in out


def test_a_signal_to_every_process_of_the_node_still_lets_the_workers_checkpoint(tmp_path):
    """Slurm's preemption signals every process of the step, torchrun's agent included: the agent must not
    stop its workers itself (it would kill them 30 s later, checkpoint or not)."""
    proc = keeper(tmp_path, "999,999")
    wait_ready(proc)
    os.killpg(proc.pid, signal.SIGTERM)
    code, out = finish(proc)
    assert code == 143, out[-3000:]
    assert "rank 0 checkpointed after signal 15" in out and "rank 1 checkpointed after signal 15" in out


def test_a_stop_signal_repeated_until_the_node_ends_leaves_the_workers_code(tmp_path):
    """Slurm's job script repeats the stop signal every 10 s until the step ends, so one can reach the keeper after
    its workers checkpointed and exited 143, while it records the attempt and exits. It must not die of it (138
    for SIGUSR1, which the job script would report as a stop before any checkpoint). Here rank 0, as it stops,
    starts a process that sends the keeper SIGUSR1 every 2 ms until the keeper has ended."""
    job_dir = tmp_path / "job"
    proc = keeper(tmp_path, "999,999", WORKER_REPEATS_THE_SIGNAL="1", FT_JOB_DIR=str(job_dir), FT_MAX_RETRIES="1",
                  FT_RECORD_ATTEMPTS="1")
    wait_ready(proc)
    proc.send_signal(signal.SIGUSR1)
    code, out = finish(proc)
    assert code == 143, out[-3000:]
    assert "rank 0 checkpointed after signal 10" in out and "rank 1 checkpointed after signal 10" in out
    assert kinds(job_dir) == [["started", "-"], ["continuation", "143"]]
    assert "got signal" not in out  # the finishing agent is left alone: no SIGINT once its workers have ended


def test_failures_are_recorded_and_a_spent_budget_stops_the_job(tmp_path):
    job_dir = tmp_path / "job"
    budget = {"FT_JOB_DIR": str(job_dir), "FT_MAX_RETRIES": "1", "FT_RECORD_ATTEMPTS": "1"}
    code, out = finish(keeper(tmp_path, "0,-9", **budget))
    assert code == 137, out[-3000:]
    assert kinds(job_dir) == [["started", "-"], ["failure", "137"]]
    code, out = finish(keeper(tmp_path, "0,-9", **budget))  # the second failure spends the one retry
    assert code == 3 and "the job failed 2 times and max_retries is 1" in out, out[-3000:]
    code, out = finish(keeper(tmp_path, "0,0", **budget))  # a recreated pod does not even start
    assert code == 3 and "rank" not in out, out[-3000:]
    assert kinds(job_dir) == [["started", "-"], ["failure", "137"]] * 2


def test_continuations_have_their_own_cap_and_leave_the_failure_budget_alone(tmp_path):
    job_dir = tmp_path / "job"
    budget = {"FT_JOB_DIR": str(job_dir), "FT_MAX_RETRIES": "0", "FT_MAX_CONTINUATIONS": "1",
              "FT_RECORD_ATTEMPTS": "1"}
    for _ in range(2):  # stopped after a checkpoint, twice: neither is a failure, though max_retries is 0
        code, out = finish(keeper(tmp_path, "143,143", **budget))
        assert code == 143, out[-3000:]
    code, out = finish(keeper(tmp_path, "0,0", **budget))  # the second continuation went past the cap
    assert code == 3 and "the job was continued 2 times and max_continuations is 1" in out, out[-3000:]
    assert kinds(job_dir) == [["started", "-"], ["continuation", "143"]] * 2


def kinds(job_dir) -> list[list[str]]:
    return [line.split()[:2] for line in (job_dir / FILE).read_text().splitlines()]


def test_an_attempt_killed_whole_counts_as_a_failure(tmp_path):
    """A pod killed with its keeper (the container's OOM kill, a lost node) writes no outcome: its start,
    on the PVC, is what the next pod counts."""
    job_dir = tmp_path / "job"
    budget = {"FT_JOB_DIR": str(job_dir), "FT_MAX_RETRIES": "0", "FT_RECORD_ATTEMPTS": "1"}
    proc = keeper(tmp_path, "999,999", **budget)
    wait_ready(proc)
    os.killpg(proc.pid, signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL
    code, out = finish(keeper(tmp_path, "0,0", **budget))
    assert code == 3 and "the job failed 1 times and max_retries is 0" in out, out[-3000:]


def test_an_output_volume_it_cannot_write_is_a_config_error_naming_the_pvc(tmp_path):
    read_only = tmp_path / "outputs"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:  # root writes a 0555 directory anyway; nobody creates directories in /proc
        read_only = Path("/proc/self")
    budget = {"FT_JOB_DIR": str(read_only / "job"), "FT_MAX_RETRIES": "3", "FT_OUTPUTS_PVC": "team-outputs"}
    code, out = finish(keeper(tmp_path, "0,0", **budget))
    assert code == 2, out[-3000:]
    assert f"cannot write {read_only / 'job'}" in out and "make PVC team-outputs" in out and "writable by uid" in out
    assert "rank" not in out  # refused before torchrun starts


def test_a_rendezvous_that_never_completes_is_retried(tmp_path):
    """A peer that never comes (a node that is not scheduled): the rendezvous times out, exit 170."""
    code, out = finish(keeper(tmp_path, "0,0", PET_NNODES="2", PET_RDZV_CONF="timeout=5"))
    assert code == 170, out[-3000:]
    assert "the rendezvous or the store failed" in out


def test_sigterm_reaches_the_workers_which_checkpoint_and_exit_143(tmp_path):
    proc = keeper(tmp_path, "999,999")
    wait_ready(proc)
    proc.send_signal(signal.SIGTERM)  # what the kubelet sends the container's PID 1
    code, out = finish(proc)
    assert code == 143, out[-3000:]
    assert "rank 0 checkpointed after signal 15" in out and "rank 1 checkpointed after signal 15" in out


def test_exit_code_follows_the_shell_convention():
    assert [exit_code(c) for c in (0, 1, 2, 143, -9, -15, 300)] == [0, 1, 2, 143, 137, 143, 1]
