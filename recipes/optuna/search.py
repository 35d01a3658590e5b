"""Bayesian hyperparameter search (Optuna TPE) over SFT runs; any number of workers share one study.

    launcher run recipes/optuna                                   # embedded model + hotel data, CPU
    launcher run recipes/optuna & launcher run recipes/optuna     # two workers share one study
    launcher run recipes/optuna --set storage=sqlite:///study.db  # a database instead of the journal file
    launcher run recipes/optuna --set storage_secret=OPTUNA_DB    # a database URL (with password) in $OPTUNA_DB
    python recipes/optuna/search.py --config recipes/optuna/config.yaml

Workers run trials until the study has n_trials finished ones. Every trial is one SFT run as
recipes/sft trains (recipekit.sft, in-process): the base config with the sampled values, in
<output_dir>/trial-<number>.
Its eval loss is reported every `eval_every_steps` and the median pruner stops trials that fall
behind; the objective is the final held-out eval loss. Trial 0 runs the base config's own values
(baseline_trial), so "best beats default" is measured. Trials of a worker that dies are failed by
heartbeat and retried from their newest checkpoint. Outputs:
best_params.json, best_config.yaml (a recipes/sft config), trials.csv, optimization_history.png,
param_importances.png, metrics.json, resolved_config.yaml.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from recipekit import checkpoint, distributed, entry, outputs, secrets, sft, sft_data, studies
from recipekit import config as configlib
from recipekit.config import option
from recipekit.errors import Preempted, UsageError
from recipekit.preemption import StopOnSignal

log = logging.getLogger("recipes.optuna")
JOURNAL = "study.journal"
DEFAULT_SPACE = {
    "learning_rate": {"low": 3e-4, "high": 1e-2, "log": True},
    "peft_lora_r": {"choices": [8, 16, 32]},
    "peft_lora_alpha": {"choices": [16, 32, 64]},
    "peft_lora_dropout": {"low": 0.0, "high": 0.1},
    "weight_decay": {"low": 0.0, "high": 0.1},
    "warmup_ratio": {"low": 0.0, "high": 0.2},
    "batch_size": {"choices": [1, 2, 4]},
    "lr_scheduler_type": {"choices": ["cosine", "linear", "constant_with_warmup"]},
}
# Keys a trial may not vary: where it writes, what it is evaluated on, and anything secret or remote.
NOT_SEARCHABLE = {"output_dir", "resume", "push_to_hub", "hub_model_id", "use_auth_token", "trust_remote_code",
                  "dataset_name", "dataset_split", "dataset_format", "dataset_columns", "dataset_text_field",
                  "eval_dataset_name", "eval_split", "eval_answer_field", "eval_answer_metric", "eval_max_new_tokens"}


@dataclass
class Config(sft.Options):
    n_trials: int = option(5, help="finished (complete or pruned) trials the study aims at; every worker runs "
                           "trials until the study has them, and at most this many itself", min=1, max=10**6)
    study_name: str = option("sft-search", help="the study; workers with the same name and storage share it")
    storage: Optional[str] = option(None, help="null = journal file <output_dir>/study.journal; a file path = a "
                                    "journal file there; an SQLAlchemy URL (sqlite:///study.db, postgresql://...)")
    storage_secret: Optional[str] = option(None, help="env var name or file path holding the storage URL "
                                           "(for URLs with a password; never put one in storage)")
    search_space: dict[str, Any] = option(default_factory=lambda: copy.deepcopy(DEFAULT_SPACE),
                                          help="sft key -> {low, high[, log]} or {choices: [...]}")
    sampler_seed: int = option(0, help="TPE seed; trial N samples with a seed derived from (this, N)", min=0,
                               max=2**32 - 1)
    tpe_n_startup_trials: int = option(3, help="random trials before TPE takes over (the baseline counts)",
                                       min=0, max=10**6)
    baseline_trial: bool = option(True, help="enqueue the base config's own values as the first trial")
    eval_every_steps: int = option(12, help="evaluate every N steps; the eval loss goes to the pruner", min=1,
                                   max=10**9)
    prune: bool = option(True, help="stop trials whose intermediate eval loss is worse than the median")
    pruner_n_startup_trials: int = option(2, help="finished trials before any pruning", min=0, max=10**6)
    pruner_n_warmup_steps: int = option(0, help="steps of a trial before it may be pruned", min=0, max=10**9)
    heartbeat_interval: int = option(60, help="seconds between a running trial's heartbeats", min=1, max=86400)
    grace_period: Optional[int] = option(None, help="seconds without heartbeat before a trial is failed and "
                                         "retried; null = 2 x heartbeat_interval", min=1, max=10**6)
    max_retries: Optional[int] = option(3, help="retries of a trial whose worker died; null = unlimited", min=0,
                                        max=1000)

    def may_load_quantized(self) -> bool:
        # Trials run in this process, each with its own sampled values.
        sampled = {"load_in_4bit", "load_in_8bit", "model_name"} & set(self.search_space)
        return super().may_load_quantized() or bool(sampled)

    def check(self) -> list[str]:
        problems = super().check()
        if self.storage is not None and self.storage_secret is not None:
            problems.append("storage: give storage or storage_secret, not both")
        if self.storage is not None and not self.storage.strip():
            problems.append("storage: must not be empty; null = journal file in output_dir")
        elif self.storage is not None and studies.has_password(self.storage):
            problems.append("storage: the URL holds a password; put the URL in an env var or file and set "
                            "storage_secret to its name instead")
        problems += secrets.check_reference("storage_secret", self.storage_secret)
        if self.grace_period is not None and self.grace_period <= self.heartbeat_interval:
            problems.append(f"grace_period: must be longer than heartbeat_interval ({self.heartbeat_interval} s)")
        return problems + parse_space(self)[1]


def base_values(cfg: Config) -> dict[str, Any]:
    """The sft keys of this config: the run every trial starts from."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(sft.Options)}


def sft_config(values: dict[str, Any]) -> sft.Options:
    return configlib.build(sft.Options, values)


def parse_space(cfg: Config) -> tuple[dict[str, tuple], list[str]]:
    """search_space, checked key by key as an sft config reads it; see recipekit.studies.parse_space."""
    return studies.parse_space(cfg.search_space, sft.Options, base_values(cfg), NOT_SEARCHABLE, cfg.baseline_trial,
                             what="sft")


def storage_location(cfg: Config) -> tuple[str, str]:
    """(the journal path or database URL, how outputs and logs may name it): a URL read from
    storage_secret is never shown."""
    if cfg.storage_secret is None:
        location = cfg.storage or str(Path(cfg.output_dir) / JOURNAL)
        return location, location
    return secrets.read_secret("storage_secret", cfg.storage_secret), f"the URL in storage_secret {cfg.storage_secret}"


def load_with_eval(cfg: Config, token: str | None) -> sft_data.SFTData:
    splits = sft_data.load(cfg, token)
    if splits.eval is None:
        raise UsageError("eval_split: the search minimizes the held-out eval loss; give an eval split "
                         "(eval_split or eval_dataset_name)")
    return splits


def trial_output(cfg: Config, trial) -> tuple[Path, bool]:
    """trial-<number>, and whether it resumes: a retried trial takes over the newest complete checkpoint
    its failed attempt left (the attempt's worker is dead, so nothing else touches it)."""
    out = Path(cfg.output_dir) / f"trial-{trial.number}"
    history = studies.trial_by_number(trial.study, trial.number).system_attrs.get("retry_history") or []
    previous = checkpoint.latest_complete(Path(cfg.output_dir) / f"trial-{history[-1]}") if history else None
    if previous is None or not cfg.resume:
        return out, False
    out.mkdir(parents=True, exist_ok=True)
    previous.rename(out / previous.name)
    log.warning("trial %d retries trial %d from its %s", trial.number, history[-1], previous.name)
    return out, True


def make_objective(cfg: Config, space: dict, splits, token, stop: StopOnSignal, worker: str, current: dict):
    import numpy as np
    import optuna

    base = base_values(cfg)
    quiet_splits = dataclasses.replace(splits, hit_rows=[])  # no answer generation inside trials

    def objective(trial) -> float:
        current["trial"] = trial.number
        seed = int(np.random.SeedSequence([cfg.sampler_seed, trial.number]).generate_state(1)[0])
        trial.study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.tpe_n_startup_trials)
        params = {name: studies.suggest(trial, name, spec) for name, spec in space.items()}
        trial.set_user_attr("worker", worker)
        if stop.agreed():
            raise Preempted(f"stopped before trial {trial.number} started")
        out, resumed = trial_output(cfg, trial)
        run_cfg = sft_config({**base, **params, "output_dir": str(out), "eval_answer_field": None,
                              "merge_adapter": False, "push_to_hub": False, "resume": resumed})
        log.info("trial %d: %s", trial.number, json.dumps(params))
        run = sft.build(run_cfg, quiet_splits, token, stop, recipe="sft",
                        callbacks=(studies.report_and_prune(trial, cfg.eval_every_steps),))
        metrics = sft.save(run, sft.train(run))
        loss = metrics["eval_loss_after"]
        trial.report(loss, metrics["global_step"])
        if metrics.get("eval_loss_before") is not None:
            trial.set_user_attr("eval_loss_before", metrics["eval_loss_before"])
        trial.set_user_attr("train_runtime_s", metrics.get("train_runtime_s"))
        return loss

    return objective


def write_outputs(study, cfg: Config, shown: str, worker: str, mine: list[int], started_with: int,
                  elapsed_s: float) -> dict:
    """Summaries of the whole study (every worker's trials), written atomically: the last worker's win."""
    from optuna.trial import TrialState

    out = Path(cfg.output_dir)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    best = min(done, key=lambda t: t.value) if done else None
    baseline = next((t for t in done if t.user_attrs.get("baseline")), None)
    metrics: dict[str, Any] = {
        "recipe": "optuna", "study_name": cfg.study_name, "storage": shown, "world_size": 1,
        "worker": worker, "worker_trials": mine, "worker_wall_time_s": round(elapsed_s, 1),
        "resumed_from": f"study {cfg.study_name} with {started_with} finished trials" if started_with else None,
        "trial_states": {s.name: sum(t.state == s for t in trials) for s in TrialState if
                         any(t.state == s for t in trials)},
        "baseline_trial": baseline.number if baseline else None,
        "baseline_eval_loss": baseline.value if baseline else None,
        "best_trial": best.number if best else None, "best_eval_loss": best.value if best else None,
        "best_params": best.params if best else None,
        "trials": [{"number": t.number, "state": t.state.name, "eval_loss": t.value, "params": t.params,
                    "intermediate_eval_loss": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                    "worker": t.user_attrs.get("worker"),
                    "retry_of": (t.system_attrs.get("retry_history") or [None])[-1],  # the attempt before
                    "duration_s": t.duration.total_seconds() if t.duration else None} for t in trials],
    }
    if best and baseline:
        metrics["improvement_over_baseline"] = baseline.value - best.value
    if best is not None:
        outputs.write_atomic(out / "best_params.json", json.dumps(best.params, indent=2, sort_keys=True) + "\n")
        best_cfg = sft_config({**base_values(cfg), **best.params, "output_dir": str(out / "best")})
        versus = f"; baseline trial {baseline.number}: {baseline.value:.4f}" if baseline else ""
        header = (f"# Best of study {cfg.study_name}: trial {best.number}, eval loss {best.value:.4f}{versus}.\n"
                  f"# Train it: launcher run recipes/sft --config {out / 'best_config.yaml'}\n")
        outputs.write_atomic(out / "best_config.yaml", configlib.dump_yaml(best_cfg, header))
    outputs.replace_atomically(out / "trials.csv", lambda path: study.trials_dataframe().to_csv(path, index=False))
    metrics["plots"] = studies.plots(study, out, len(done))
    outputs.write_metrics(metrics, out)
    outputs.save_resolved_config(cfg, out, "optuna")
    return metrics


def main(cfg: Config, check_only: bool) -> None:
    # Validate: config (search space included), data and the storage reference, before any model loads.
    if distributed.world_size() > 1:
        raise UsageError("the search is one process per worker: run it without --nproc/torchrun, and start "
                         "the command several times for several workers")
    token, splits = entry.prepare(cfg, load_with_eval)
    space, _ = parse_space(cfg)
    if check_only:  # storage_secret is read where the job runs: its reference was checked with the config
        return
    url, shown = storage_location(cfg)

    # Join (or create) the study; its creator enqueues the baseline trial.
    import optuna
    from optuna.trial import TrialState

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    started = time.monotonic()
    stop = StopOnSignal()  # every trial stops on it too
    storage = studies.open_storage(url, shown, cfg.heartbeat_interval, cfg.grace_period, cfg.max_retries)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_n_startup_trials,
                                          n_warmup_steps=cfg.pruner_n_warmup_steps)
              if cfg.prune else optuna.pruners.NopPruner())
    sampler = optuna.samplers.TPESampler(seed=cfg.sampler_seed, n_startup_trials=cfg.tpe_n_startup_trials)
    try:
        study = optuna.create_study(study_name=cfg.study_name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction="minimize")
        if cfg.baseline_trial:
            base = base_values(cfg)
            study.enqueue_trial({name: base[name] for name in space}, user_attrs={"baseline": True})
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=cfg.study_name, storage=storage, sampler=sampler, pruner=pruner)
        if study.direction != optuna.study.StudyDirection.MINIMIZE:
            raise UsageError(f"study_name: study {cfg.study_name} exists and maximizes; use another name") from None
    optuna.storages.fail_stale_trials(study)  # a dead worker's trial is failed and re-enqueued even if none runs here

    def finished() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    started_with = finished()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    log.info("worker %s joins study %s in %s (%d finished trials)", worker, cfg.study_name, shown,
             started_with)

    # Run trials until the study has n_trials finished ones (this worker: at most n_trials). A signal
    # stops the worker after saving the running trial's checkpoint, and that trial is re-enqueued so
    # whichever worker runs next resumes it.
    current: dict[str, int | None] = {"trial": None}
    mine: list[int] = []

    def after_trial(study, trial) -> None:
        mine.append(trial.number)
        if stop.agreed() or finished() >= cfg.n_trials:
            study.stop()

    objective = make_objective(cfg, space, splits, token, stop, worker, current)
    try:
        if started_with < cfg.n_trials:
            import torch

            study.optimize(objective, n_trials=cfg.n_trials, callbacks=[after_trial], gc_after_trial=True,
                           catch=(MemoryError, torch.OutOfMemoryError))
    except Preempted:
        if current["trial"] is not None:
            storage.get_heartbeat_stale_trial_callback()(study, studies.trial_by_number(study, current["trial"]))
        raise
    m = write_outputs(study, cfg, shown, worker, mine, started_with, time.monotonic() - started)
    if stop.agreed():
        raise Preempted(f"stopped after trial {mine[-1] if mine else '-'}")
    print(f"study {cfg.study_name}: trials {m['trial_states']}; best trial {m['best_trial']}: eval loss "
          f"{m['best_eval_loss']}; baseline trial {m['baseline_trial']}: eval loss {m['baseline_eval_loss']}")
    if m["best_trial"] is not None:
        print(f"train the best config: launcher run recipes/sft --config {Path(cfg.output_dir) / 'best_config.yaml'}")
    print(f"outputs in {Path(cfg.output_dir).resolve()}")


if __name__ == "__main__":
    entry.run(main, Config, "Bayesian hyperparameter search over SFT runs with Optuna", __file__)
