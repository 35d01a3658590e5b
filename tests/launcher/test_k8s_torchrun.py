"""launcher/k8s_torchrun.py: the training pods' command exits with the worker's code, not torchrun's 1.

Run as the pod runs it (python -m launcher.k8s_torchrun SCRIPT ..., rendezvous from the PET_* env
the operator sets), with 2 local workers of a stand-in script that exits with a chosen code, or
waits and turns SIGTERM into 143 as the recipes do.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from launcher.k8s_torchrun import exit_code
from tests.conftest import REPO

WORKER = """
import os, signal, sys, time
def stop(signum, frame):
    print(f"rank {os.environ['RANK']} checkpointed after signal {signum}", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGUSR1, stop)
code = int(os.environ["WORKER_EXIT"].split(",")[int(os.environ["RANK"])])
if code < 0:
    os.kill(os.getpid(), -code)
if code == 999:
    print("ready", flush=True)
    time.sleep(60)
sys.exit(code)
"""


def keeper(tmp_path, codes: str) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "WORKER_EXIT": codes, "PET_NNODES": "1", "PET_NPROC_PER_NODE": "2", "PET_NODE_RANK": "0",
           "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "launcher.k8s_torchrun", str(script)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode, out


@pytest.mark.parametrize("codes, expected", [("0,2", 2), ("143,0", 143), ("0,-9", 137)])
def test_the_pod_exits_with_the_failed_workers_code(tmp_path, codes, expected):
    code, out = finish(keeper(tmp_path, codes))
    assert code == expected, out[-3000:]
    if expected:
        assert f"exited with {expected}; the pod exits with it" in out


def test_sigterm_reaches_the_workers_which_checkpoint_and_exit_143(tmp_path):
    proc = keeper(tmp_path, "999,999")
    lines = []
    deadline = time.monotonic() + 90
    # Count words, not lines: with PYTHONUNBUFFERED the two workers' "ready" and "\n" are separate
    # writes, so both can land on one line ("readyready").
    while "".join(lines).count("ready") < 2 and time.monotonic() < deadline:
        lines.append(proc.stdout.readline())
    proc.send_signal(signal.SIGTERM)  # what the kubelet sends the container's PID 1
    code, out = finish(proc)
    out = "".join(lines) + out
    assert code == 143, out[-3000:]
    assert "rank 0 checkpointed after signal 15" in out and "rank 1 checkpointed after signal 15" in out


def test_exit_code_follows_the_shell_convention():
    assert [exit_code(c) for c in (0, 1, 2, 143, -9, -15, 300)] == [0, 1, 2, 143, 137, 143, 1]
