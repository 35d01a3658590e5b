"""The local backend: the stop signals `launcher run` passes on.

The recipes themselves run in tests/recipes/; here a stand-in recipe under real torchrun shows
what reaches the training processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

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
