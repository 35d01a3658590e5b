"""recipekit.progress: one line per logging step on a real Trainer, and a live bar only on a terminal."""

from __future__ import annotations

import fcntl
import io
import os
import struct
import sys
import termios

from recipekit import progress
from tests.recipekit.test_trainers import make_trainer, tiny_lm


def test_a_step_line_holds_step_total_loss_rate_and_eta():
    line = progress.step_line(40, 111, {"loss": 0.41271, "learning_rate": 2.7e-3, "grad_norm": 0.8}, 1850.4, 62.4,
                              110.0)
    assert line == ("step 40/111 (36%)  loss 0.4127  lr 2.70e-03  grad_norm 0.800  1,850 tokens/s  "
                    "elapsed 0:01:02  ETA 0:01:50")
    assert progress.step_line(1, 8, {}, None, 0.2, None) == "step 1/8 (12%)  elapsed 0:00:00"


def test_logs_get_one_line_per_logging_step_and_no_bar(tmp_path, tiny_model, stop, capsys):
    make_trainer(tmp_path, tiny_lm(tiny_model), stop, max_steps=4, logging_steps=2).train()
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "4/4"]  # the first step, then every 2
    assert all("  loss " in line and " tokens/s  elapsed " in line and "  ETA " in line for line in lines)
    assert "trained 4 steps in " in out and "{'loss'" not in out and "\r" not in out


def test_a_terminal_gets_a_live_bar_under_the_same_lines(tmp_path, tiny_model, stop, monkeypatch):
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    terminal = io.TextIOWrapper(io.FileIO(follower, "w"), write_through=True)
    monkeypatch.setattr(sys, "stdout", terminal)
    make_trainer(tmp_path, tiny_lm(tiny_model), stop, max_steps=3, logging_steps=1).train()
    terminal.close()
    shown = b""
    while chunk := _read(leader):
        shown += chunk
    os.close(leader)
    text = shown.decode()
    assert "3/3" in text and ("step/s" in text or "s/step" in text)  # tqdm's bar and rate
    assert [line.split()[1] for line in text.replace("\r", "\n").splitlines() if line.startswith("step ")] == \
        ["1/3", "2/3", "3/3"]


def _read(fd: int) -> bytes:
    import select

    if not select.select([fd], [], [], 0.5)[0]:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal's other end is closed
        return b""


def test_only_the_first_process_prints(tmp_path, tiny_model, stop, capsys, monkeypatch):
    trainer = make_trainer(tmp_path, tiny_lm(tiny_model), stop, max_steps=2, logging_steps=1)
    monkeypatch.setattr(type(trainer), "is_world_process_zero", lambda self: False)
    trainer.train()
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith(("step ", "trained "))]
