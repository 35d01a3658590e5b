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

from launcher import local, recipes
from launcher.appspec import AppSpec
from tests.conftest import REPO

STAND_IN = """'''A stand-in recipe: checks nothing, then waits for a stop signal as the recipes do.'''
import os, signal, sys, time
if "--check" in sys.argv:
    sys.exit(0)
def stop(signum, frame):
    print(f"rank {os.environ.get('RANK', '-')} checkpointed after signal {signum}", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGUSR1, stop)
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


def test_sigterm_to_the_launcher_reaches_each_worker_which_exits_143(tmp_path):
    (tmp_path / "train.py").write_text(STAND_IN)
    (tmp_path / "config.yaml").write_text("seed: 1\n")
    proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "run", str(tmp_path), "--nproc", "2"], cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        seen, deadline = "", time.monotonic() + 120
        while seen.count("ready") < 2 and time.monotonic() < deadline:  # both workers waiting
            seen += proc.stdout.readline()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = seen + out
    assert proc.returncode == 143, out[-3000:]
    assert "rank 0 checkpointed after signal 15" in out and "rank 1 checkpointed after signal 15" in out
