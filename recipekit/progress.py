"""Training progress as one line per logging step, printed by rank 0 alone, so a job of any number of
nodes logs each step once:

    step 40/111 (36%)  loss 0.4127  lr 2.71e-03  grad_norm 0.812  1,850 tokens/s  elapsed 0:01:02  ETA 0:01:50

The rate is the tokens of every rank since the line before (their attention masks: padding does not
count); the ETA is the time per step so far, times the steps left. Evaluations get a line of their
own. The Trainer's own printer (a dict per log, from the first process of every node) is replaced.
Attached to a terminal, a live bar (tqdm) counts the steps between the lines; a log file gets only
the lines.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta


def duration(seconds: float) -> str:
    return str(timedelta(seconds=round(max(seconds, 0.0))))


def step_line(step: int, total: int, logs: dict, tokens_per_s: float | None, elapsed: float, eta: float | None) -> str:
    parts = [f"step {step}/{total} ({100 * step / max(total, 1):.0f}%)"]
    for key, shown in (("loss", "loss {:.4f}"), ("learning_rate", "lr {:.2e}"), ("grad_norm", "grad_norm {:.3f}")):
        if isinstance(logs.get(key), (int, float)):
            parts.append(shown.format(logs[key]))
    if tokens_per_s is not None:
        parts.append(f"{tokens_per_s:,.0f} tokens/s")
    parts.append(f"elapsed {duration(elapsed)}")
    if eta is not None:
        parts.append(f"ETA {duration(eta)}")
    return "  ".join(parts)


def eval_line(step: int, logs: dict) -> str:
    shown = "  ".join(f"{key} {value:.4f}" for key, value in logs.items()
                      if key.startswith("eval_") and isinstance(value, float) and not key.endswith(
                          ("_runtime", "_per_second")))
    return f"eval at step {step}: {shown}"


def live_bar(total: int, initial: int, stream=None):
    """A tqdm bar of the steps when ``stream`` (stdout) is a terminal, else None."""
    stream = stream or sys.stdout
    if not stream.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", file=stream, dynamic_ncols=True, leave=False)


class Meter:
    """The rate and ETA of the lines: tokens counted since the line before, time per step since the first."""

    def __init__(self, first_step: int):
        self.started = self.last = time.monotonic()
        self.first_step, self.tokens = first_step, 0

    def add(self, tokens: float) -> None:
        self.tokens += tokens

    def line(self, step: int, total: int, logs: dict) -> str:
        now = time.monotonic()
        rate = self.tokens / (now - self.last) if self.tokens and now > self.last else None
        done = step - self.first_step
        eta = (now - self.started) / done * (total - step) if done else None
        self.last, self.tokens = now, 0
        return step_line(step, total, logs, rate, now - self.started, eta)


def trainer_callback():
    """A TrainerCallback printing the progress lines on the job's first process only."""
    from transformers import TrainerCallback

    class ProgressLine(TrainerCallback):
        def __init__(self):
            self.meter = self.bar = None
            self.tokens_seen = 0

        def on_step_begin(self, args, state, control, **kwargs):
            if self.meter is None:  # after any evaluation before the first step
                self.meter, self.tokens_seen = Meter(state.global_step), state.num_input_tokens_seen
                if state.is_world_process_zero:
                    self.bar = live_bar(state.max_steps, state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

        def show(self, line: str) -> None:
            if self.bar is not None:
                self.bar.write(line)  # above the bar, which stays at the bottom
            else:
                print(line, flush=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            if "loss" in logs and self.meter is not None:
                self.meter.add(state.num_input_tokens_seen - self.tokens_seen)  # every rank's, gathered
                self.tokens_seen = state.num_input_tokens_seen
                self.show(self.meter.line(state.global_step, state.max_steps, logs))
            elif "eval_loss" in logs:
                self.show(eval_line(state.global_step, logs))
            elif "train_runtime" in logs:
                done = state.global_step - (self.meter.first_step if self.meter else 0)
                self.show(f"trained {done} steps in {duration(logs['train_runtime'])}"
                          f"  train_loss {logs.get('train_loss', float('nan')):.4f}")

    return ProgressLine()
