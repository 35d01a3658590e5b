"""recipekit.hub: a Hub that is needed and cannot be reached is a one-line error before anything trains."""

from __future__ import annotations

import pytest

from recipekit import hub, models
from recipekit.errors import UsageError
from recipekit.schema import TrainingOptions


def test_an_unreachable_hub_model_is_refused_naming_the_key(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no network here: as a cluster node without one
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    opts = TrainingOptions()
    opts.model_name = "someone/no-such-model"
    with pytest.raises(UsageError) as info:
        hub.check_reachable(opts, None)
    (problem,) = info.value.problems
    assert problem.startswith("model_name: 'someone/no-such-model' is neither an embedded alias")
    opts.model_name = models.TINY_MODEL  # an alias needs no Hub
    hub.check_reachable(opts, None)


def test_push_to_hub_needs_a_token():
    with pytest.raises(UsageError, match="push_to_hub: needs use_auth_token"):
        hub.check_reachable(TrainingOptions(push_to_hub=True, hub_model_id="org/name"), None)
