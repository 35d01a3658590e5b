"""launcher/signals.py: the one way stop signals reach the training processes (launcher run, the k8s pods)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from launcher import signals

WAITER = ("import signal, sys, time; signal.signal(signal.SIGUSR1, lambda *a: sys.exit(143)); "
          "print('ready', flush=True); time.sleep(60)")


def test_a_process_without_workers_gets_the_signal_itself_and_the_old_handler_returns():
    before = signal.getsignal(signal.SIGUSR1)
    proc = subprocess.Popen([sys.executable, "-c", WAITER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        with signals.forwarded(proc, to_workers=True) as received:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert proc.wait(timeout=30) == 143
        assert received == [signal.SIGUSR1]
    finally:
        proc.kill()
    assert signal.getsignal(signal.SIGUSR1) is before


def test_children_are_read_from_proc():
    proc = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                             "subprocess.run([sys.executable, '-c', 'import time; time.sleep(30)'])"])
    try:
        for _ in range(200):
            found = signals.children(proc.pid)
            if found:
                break
            time.sleep(0.05)
        assert len(found) == 1 and found[0] != proc.pid
    finally:
        for pid in signals.children(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.kill()
