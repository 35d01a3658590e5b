"""launcher/backend.py: the schedulers behind one interface, and the options each one reads."""

from __future__ import annotations

import dataclasses

import pytest

from launcher import backend
from launcher.errors import FieldError


def test_every_scheduler_is_found_by_its_name_and_reads_its_own_options():
    for name in backend.SCHEDULERS:
        scheduler = backend.get(name)
        assert scheduler.name == name
        assert {f.name for f in dataclasses.fields(scheduler.Options)} <= scheduler.reads
        for method in ("place", "dryrun", "dry_run_summary", "submit", "status", "logs", "cancel"):
            assert callable(getattr(scheduler, method)), (name, method)


@pytest.mark.parametrize("name, options, field, message", [
    ("slurm", {"namespace": "ml"}, "namespace", "only used with --backend k8s"),
    ("slurm", {"dry_run_server": True}, "dry_run_server", "server is only for --backend k8s; use --dry-run"),
    ("k8s", {"partition": "gpu"}, "partition", "only used with --backend slurm"),
    ("k8s", {"preempt": True}, "preempt", "only used with --backend slurm (on Kubernetes, `kubectl delete pod`"),
])
def test_an_option_of_another_scheduler_is_refused_naming_it(name, options, field, message):
    with pytest.raises(FieldError) as caught:
        backend.refuse_others(backend.get(name), options)
    assert caught.value.field == field and caught.value.problem.startswith(message)


def test_what_every_scheduler_reads_and_what_was_not_given_pass():
    for name in backend.SCHEDULERS:
        backend.refuse_others(backend.get(name), {"env": {"A": "1"}, "image": "x", "time": "10", "namespace": None,
                                                  "partition": None, "mounts": (), "preempt": False})
