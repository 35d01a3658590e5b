"""Experiment trackers (``report_to``): TensorBoard, Weights & Biases, MLflow, Trackio.

The Trainer's own integrations log the runs; this module only points them at the run's output
dir where nothing else is configured, so a run without a tracking server still keeps its
history next to its outputs:

- tensorboard: ``<output_dir>/runs``.
- mlflow: without ``MLFLOW_TRACKING_URI``, a local SQLite store ``<output_dir>/mlflow.db`` (MLflow's
  local store; its plain-file store is closed to new runs) with artifacts under
  ``<output_dir>/mlartifacts``; the experiment is the recipe's name unless
  ``MLFLOW_EXPERIMENT_NAME`` says otherwise. ``mlflow ui --backend-store-uri sqlite:///...`` shows it.
- wandb: files under ``<output_dir>/wandb``, project ``ft-recipes`` unless ``WANDB_PROJECT`` is set.
  Without ``WANDB_API_KEY`` (and without ``WANDB_MODE``) the run is logged offline, never asking for
  a login; ``wandb sync <output_dir>/wandb/offline-run-*`` uploads it later.
- trackio (not installed in the images: ``pip install trackio``): its local store, the project as for wandb.

Keys are read by the trackers themselves from their env vars (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN,
...): by reference, never in a config, a rendered job or a log line.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Iterable

log = logging.getLogger("recipekit.tracking")

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
PROJECT = "ft-recipes"


def trackers(report_to: str | list[str]) -> list[str]:
    """The trackers a ``report_to`` value names, in order, without repeats; [] for none."""
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    return [name for index, name in enumerate(names) if name != "none" and name not in names[:index]]


def check(report_to: str | list[str]) -> list[str]:
    """Config problems: none mixed with trackers, an empty list, a tracker whose package is not installed."""
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    if not names:
        return ["report_to: must name a tracker, or be none"]
    if "none" in names and len(set(names)) > 1:
        return ["report_to: none cannot be combined with a tracker"]
    return [f"report_to: {name} needs the {PACKAGES[name]} package, which is not installed here "
            f"(pip install {PACKAGES[name]})" for name in trackers(report_to)
            if importlib.util.find_spec(PACKAGES[name]) is None]


def configure(names: Iterable[str], output_dir: str, recipe: str, run_name: str,
              main_process: bool = True) -> list[str]:
    """Point the chosen trackers at ``output_dir`` where their env vars leave it open; the Trainer's
    ``report_to`` list. On the main process (the only one that logs) the MLflow run starts here, so that
    the evaluation after training and the run's final metrics (``finish``) land in the same run."""
    names = list(names)
    out = Path(output_dir).resolve()
    # The TensorBoard callback reads its directory from this env var (default: ./runs, even for eval).
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "runs")
    if "mlflow" in names:
        if default_env("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow.db'}"):
            default_env("MLFLOW_EXPERIMENT_NAME", recipe)
            if main_process:
                local_experiment(out, os.environ["MLFLOW_EXPERIMENT_NAME"])
        if main_process:
            start_mlflow_run(run_name)
    if "wandb" in names:
        default_env("WANDB_DIR", str(out))
        default_env("WANDB_PROJECT", PROJECT)
        if not os.environ.get("WANDB_API_KEY") and default_env("WANDB_MODE", "offline") and main_process:
            log.info("report_to wandb: no WANDB_API_KEY, so the run is logged offline under %s/wandb "
                     "(upload it with `wandb sync`)", out)
    return names


_DEFAULTS: dict[str, str] = {}  # the env vars this process set, so that its next run (an optuna trial) may move them


def default_env(name: str, value: str) -> bool:
    """Set ``name`` unless the user did; whether it now holds our value."""
    if os.environ.get(name, _DEFAULTS.get(name)) != _DEFAULTS.get(name):
        return False
    os.environ[name] = _DEFAULTS[name] = value
    return True


def start_mlflow_run(run_name: str) -> None:
    import mlflow

    if mlflow.active_run() is not None:  # left by an earlier run of this process (an optuna trial that stopped)
        mlflow.end_run()
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI"))
    if os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        mlflow.set_experiment(os.environ["MLFLOW_EXPERIMENT_NAME"])
    mlflow.start_run(run_name=run_name)


def finish(metrics: dict) -> None:
    """The run's final numbers (hit rates, eval losses before and after, ...) into the trackers' runs still open,
    which are then closed. Only trackers this process already imported are touched."""
    final = {key: float(value) for key, value in metrics.items()
             if isinstance(value, (int, float)) and not isinstance(value, bool)}
    mlflow, wandb = sys.modules.get("mlflow"), sys.modules.get("wandb")
    if mlflow is not None and mlflow.active_run() is not None:
        mlflow.log_metrics({f"final/{key}": value for key, value in final.items()})
        mlflow.end_run()
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.run.summary.update({f"final/{key}": value for key, value in final.items()})
        wandb.finish()


def local_experiment(out: Path, name: str) -> None:
    """The MLflow experiment in the local store, its artifacts under ``out`` rather than the working dir."""
    import mlflow

    out.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=(out / "mlartifacts").as_uri())
