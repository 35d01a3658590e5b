"""recipekit.studies: search spaces over a config's keys, and the journal storage's heartbeats.

The journal's heartbeats implement optuna's private ``BaseHeartbeat``; the test of a stale trial
fails, rather than a search worker, if an upgrade of optuna changes how it finds and retries them.
"""

from __future__ import annotations

import time

import pytest

from recipekit import sft, studies


def base() -> dict:
    options = sft.Options()
    return {name: getattr(options, name) for name in sft.Options.__dataclass_fields__}


def test_a_space_is_read_as_the_config_reads_each_value():
    space = {"learning_rate": {"low": "1e-4", "high": 1e-2, "log": True}, "batch_size": {"choices": [4, 8]},
             "lr_scheduler_type": {"choices": ["cosine", "linear"]}}
    parsed, problems = studies.parse_space(space, sft.Options, base(), {"output_dir"}, baseline=True, what="sft")
    assert problems == []
    assert parsed == {"learning_rate": ("range", 1e-4, 1e-2, True, False), "batch_size": ("choices", [4, 8]),
                      "lr_scheduler_type": ("choices", ["cosine", "linear"])}


def test_every_bad_entry_is_one_line_naming_its_key():
    space = {"output_dir": {"choices": ["a", "b"]}, "lerning_rate": {"low": 1, "high": 2},
             "batch_size": {"choices": [0, 8]}, "peft_lora_r": {"low": 32, "high": 8},
             "learning_rate": {"low": 1e-2, "high": 1e-1}, "packing": {"low": 0, "high": 1}}
    _, problems = studies.parse_space(space, sft.Options, base(), {"output_dir"}, baseline=True, what="sft")
    assert problems == [
        "search_space.output_dir: not searchable (the same in every trial)",
        "search_space.lerning_rate: unknown sft key; did you mean learning_rate?",
        "search_space.batch_size: must be >= 1, got 0",
        "search_space.peft_lora_r: low must be below high, got low=32, high=8",
        "search_space.learning_rate: range [0.01, 0.1] must contain the base value 0.0002 (baseline_trial runs it)",
        "search_space.packing: low/high needs a numeric key; use choices for packing"]
    assert studies.parse_space({}, sft.Options, base(), set(), True, "sft")[1] == [
        "search_space: declare at least one sft key to search"]


def test_a_url_with_a_password_is_recognised():
    assert studies.has_password("postgresql://user:secret@db/optuna")
    assert not studies.has_password("sqlite:///study.db") and not studies.has_password("/path/study.journal")


def test_a_journal_trial_without_heartbeats_is_failed_and_retried(tmp_path):
    import optuna
    from optuna.trial import TrialState

    storage = studies.open_storage(str(tmp_path / "study.journal"), "the journal", heartbeat_interval=1,
                                   grace_period=2, max_retries=1)
    study = optuna.create_study(storage=storage, study_name="s")
    beating, silent = study.ask(), study.ask()
    storage.record_heartbeat(beating._trial_id)
    storage.set_trial_system_attr(silent._trial_id, "heartbeat", time.time() - 10)  # its worker died
    optuna.storages.fail_stale_trials(study)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[beating.number] == TrialState.RUNNING and states[silent.number] == TrialState.FAIL
    (retry,) = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert retry.system_attrs["failed_trial"] == silent.number  # the retry callback re-enqueued it
    assert studies.trial_by_number(study, retry.number).number == retry.number


def test_a_storage_that_cannot_be_opened_is_one_line_without_the_url(tmp_path):
    from recipekit.errors import UsageError

    with pytest.raises(UsageError) as info:
        studies.open_storage("nosuchdriver://user:pw@host/db", "the URL in storage_secret DB", 1, None, None)
    assert info.value.problems[0].startswith("storage: cannot open the URL in storage_secret DB (")
    assert "pw" not in info.value.problems[0]
