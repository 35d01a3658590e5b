"""Optuna studies that search workers share: the search space over a recipe config's keys, the
storage (a journal file with heartbeats, or a database), the Trainer callback that reports to a
trial and prunes it, and the study's plots.

The journal's heartbeats lean on optuna's private ``optuna.storages._heartbeat.BaseHeartbeat``;
tests/recipekit/test_studies.py pins it.
"""

from __future__ import annotations

import difflib
import logging
import time
import typing
import warnings
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from recipekit import config as configlib
from recipekit import outputs
from recipekit.errors import UsageError

log = logging.getLogger("recipekit.studies")


def parse_space(space: dict[str, Any], config_cls: type, base: dict[str, Any], not_searchable: set[str],
                baseline: bool, what: str) -> tuple[dict[str, tuple], list[str]]:
    """A search space over the keys of ``config_cls`` (``what`` names it in messages), checked value by
    value as that config reads it, inside the ``base`` config:
    {name: ("choices", [...]) | ("range", low, high, log, is_int)}, and one line per problem.
    With ``baseline``, every range and choice list must hold the base value."""
    if not space:
        return {}, [f"search_space: declare at least one {what} key to search"]
    hints = typing.get_type_hints(config_cls)
    context = {} if config_cls(**base).check() else base  # each value is checked inside a valid config

    def value(name: str, raw: Any) -> tuple[Any, list[str]]:
        """The value as the config reads it (type, bounds, cross-checks), or its problems."""
        try:
            return getattr(configlib.build(config_cls, {**context, name: raw}), name), []
        except configlib.ConfigError as exc:
            return None, [f"search_space.{p}" for p in exc.problems]

    parsed, problems = {}, []
    for name, spec in space.items():
        key, found = f"search_space.{name}", []
        kinds = [a for a in typing.get_args(hints.get(name)) or (hints.get(name),) if a is not type(None)]
        if name in not_searchable:
            found.append(f"{key}: not searchable (the same in every trial)")
        elif name not in hints:
            close = difflib.get_close_matches(name, [n for n in hints if n not in not_searchable], n=3, cutoff=0.6)
            found.append(f"{key}: unknown {what} key" + (f"; did you mean {', '.join(close)}?" if close else ""))
        elif not isinstance(spec, dict) or set(spec) not in ({"choices"}, {"low", "high"}, {"low", "high", "log"}):
            found.append(f"{key}: expected {{low: L, high: H}} (optionally log: true) or {{choices: [...]}}, "
                         f"got {str(spec)[:60]}")
        elif "choices" in spec and not (isinstance(spec["choices"], list) and spec["choices"] and all(
                isinstance(c, (str, int, float, type(None))) for c in spec["choices"])):
            found.append(f"{key}: choices must be a non-empty list of numbers, strings, booleans or nulls")
        elif "choices" in spec:
            checked = [value(name, item) for item in spec["choices"]]
            choices, found = [c for c, _ in checked], [p for _, bad in checked for p in bad]
            if not found and len(set(map(repr, choices))) < len(choices):
                found.append(f"{key}: choices must be distinct")
            elif not found and baseline and base[name] not in choices:
                found.append(f"{key}: choices must include the base value {base[name]!r} (baseline_trial runs it)")
            parsed[name] = ("choices", choices)
        elif kinds not in ([int], [float]):
            found.append(f"{key}: low/high needs a numeric key; use choices for {name}")
        else:
            (low, bad_low), (high, bad_high) = value(name, spec["low"]), value(name, spec["high"])
            found, log_scale = bad_low + bad_high, spec.get("log", False)
            if not isinstance(log_scale, bool):
                found.append(f"{key}: log must be true or false")
            elif not found and not low < high:
                found.append(f"{key}: low must be below high, got low={low}, high={high}")
            elif not found and log_scale and low <= 0:
                found.append(f"{key}: a log range needs low > 0, got {low}")
            elif not found and baseline and not low <= base[name] <= high:
                found.append(f"{key}: range [{low}, {high}] must contain the base value {base[name]} "
                             "(baseline_trial runs it)")
            parsed[name] = ("range", low, high, log_scale, kinds == [int])
        problems += list(dict.fromkeys(found))
    return parsed, problems


def suggest(trial, name: str, spec: tuple) -> Any:
    """The trial's value for one entry of a parsed search space."""
    if spec[0] == "choices":
        return trial.suggest_categorical(name, spec[1])
    suggest_number = trial.suggest_int if spec[4] else trial.suggest_float
    return suggest_number(name, spec[1], spec[2], log=spec[3])


def has_password(url: str) -> bool:
    try:
        return "://" in url and urlsplit(url).password is not None
    except ValueError:
        return False


def open_storage(url: str, shown: str, heartbeat_interval: int, grace_period: int | None, max_retries: int | None):
    """The study's storage with heartbeats on: a journal file (a path) or an SQLAlchemy database (a URL).
    A trial whose worker stops beating is failed and retried, at most ``max_retries`` times, from where
    it was (its intermediate values)."""
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retries, inherit_intermediate_values=True)
    try:
        if "://" not in url:
            path = Path(url).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            return heartbeat_journal(JournalFileBackend(str(path)), heartbeat_interval, grace_period, retry)
        return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                                          heartbeat_stale_trial_callback=retry)
    except Exception as exc:  # noqa: BLE001 - any driver, network or file error; its text may hold the URL
        raise UsageError(f"storage: cannot open {shown} ({type(exc).__name__})") from None


def heartbeat_journal(backend, interval: int, grace: int | None, callback: Callable):
    """A JournalStorage with heartbeats. Optuna implements heartbeats only for RDBStorage; this adds them
    to the journal (a `heartbeat` timestamp in each running trial's system attrs), so study.optimize
    fails stale trials and calls the retry callback the same way for both storages."""
    from optuna.storages import JournalStorage
    from optuna.storages._heartbeat import BaseHeartbeat
    from optuna.trial import TrialState

    class Journal(JournalStorage, BaseHeartbeat):
        def __init__(self, backend, interval: int, grace: int | None, callback):
            super().__init__(backend)
            self.interval, self.grace, self.callback = interval, grace or 2 * interval, callback

        def record_heartbeat(self, trial_id: int) -> None:
            self.set_trial_system_attr(trial_id, "heartbeat", time.time())

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now, stale = time.time(), []
            for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
                beat = trial.system_attrs.get("heartbeat")  # none yet: the worker died right after starting it
                beat = beat if beat is not None else trial.datetime_start.timestamp()
                if now - beat > self.grace:
                    stale.append(trial._trial_id)
            return stale

        def get_heartbeat_interval(self) -> int:
            return self.interval

        def get_heartbeat_stale_trial_callback(self):
            return self.callback

    return Journal(backend, interval, grace, callback)


def trial_by_number(study, number: int):
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def report_and_prune(trial, every: int):
    """A TrainerCallback: evaluate every `every` steps, report the eval loss to the trial and stop it if the
    pruner says so."""
    import optuna
    from transformers import TrainerCallback

    class ReportAndPrune(TrainerCallback):
        pending = False

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % every == 0 and state.global_step < state.max_steps:
                control.should_evaluate = self.pending = True
            return control

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if not self.pending or not metrics or "eval_loss" not in metrics:
                return  # the evaluations the run makes itself, before and after training
            self.pending = False
            trial.report(metrics["eval_loss"], state.global_step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"eval loss {metrics['eval_loss']:.4f} at step {state.global_step} "
                                         "is worse than the median of earlier trials")

    return ReportAndPrune()


def plots(study, out: Path, completed: int) -> dict[str, str]:
    """optimization_history.png and param_importances.png, where the study has enough completed trials;
    what became of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    made = {}
    for name, plot, needs in (("optimization_history.png", vis.plot_optimization_history, 1),
                              ("param_importances.png", vis.plot_param_importances, 2)):
        if completed < needs:
            made[name] = f"skipped: needs {needs} completed trials, the study has {completed}"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = plot(study)
            figure = axes.figure
            figure.set_size_inches(8, 4.5)
            outputs.replace_atomically(out / name, lambda path: figure.savefig(path, bbox_inches="tight"))
            plt.close(figure)
            made[name] = "written"
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. no parameter varied yet
            made[name] = f"skipped: {exc}"
            log.warning("%s not written: %s", name, exc)
    return made
