"""k8s/runtime.yaml, the ClusterTrainingRuntime that rendered TrainJobs run on (Kubeflow Trainer v2.3).

No cluster runs here: the runtime is validated against the Trainer v2.3 API (the
``kubeflow-trainer-api`` 2.3.0 models, unknown fields refused), the ClusterTrainingRuntime CRD's
CEL rules and webhook, and batch/v1's rules for a podFailurePolicy (tests/k8s/validation.py). Its
failure policy is then played as the Job controller documents it: the first rule that matches a
failed pod decides (FailJob, Ignore: replaced without counting, Count: replaced and counted
against backoffLimit; no rule: Count).
"""

from __future__ import annotations

import copy

import pytest
import yaml

from launcher import images, k8s
from tests.conftest import REPO, run_launcher
from tests.k8s.validation import problems

RUNTIME = yaml.safe_load((REPO / "k8s" / "runtime.yaml").read_text())


def node_job(runtime: dict) -> dict:
    (job,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    return job["template"]["spec"]


def action_for(runtime: dict, exit_code: int, disrupted: bool = False) -> str:
    """What the Job controller does with a pod of the node container that failed with ``exit_code``."""
    for rule in node_job(runtime)["podFailurePolicy"]["rules"]:
        codes = rule.get("onExitCodes")
        if codes is not None and codes.get("containerName", "node") == "node":
            inside = exit_code in codes["values"]
            if inside == (codes["operator"] == "In"):
                return rule["action"]
        if disrupted and any(c["type"] == "DisruptionTarget" for c in rule.get("onPodConditions") or []):
            return rule["action"]
    return "Count"


def test_the_runtime_is_valid_for_trainer_v2_3():
    assert problems(RUNTIME) == []
    assert RUNTIME["metadata"]["name"] == k8s.RUNTIME
    (container,) = node_job(RUNTIME)["template"]["spec"]["containers"]
    assert container["name"] == "node" and container["image"] == images.default_image("cuda")


@pytest.mark.parametrize("breakage, message", [
    (lambda job: job["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"].insert(0, 0), "0 is not allowed"),
    (lambda job: job["template"]["spec"].update(restartPolicy="OnFailure"), "must be Never"),
    (lambda job: job["podFailurePolicy"]["rules"][1]["onExitCodes"].update(containerName="trainer"), "no container"),
    (lambda job: job.update(backoffLimitt=3), "backoffLimitt"),
])
def test_the_validation_refuses_a_broken_runtime(breakage, message):
    broken = copy.deepcopy(RUNTIME)
    breakage(node_job(broken))
    assert any(message in problem for problem in problems(broken)), problems(broken)


def test_the_failure_policy_is_the_exit_code_contract():
    """1-127 end the job (a bug, bad config or data, the keeper's spent budget); 143 and disruptions are
    replaced for free; killed pods and lost ranks are replaced and counted."""
    assert {action_for(RUNTIME, code) for code in range(1, 128)} == {"FailJob"}
    assert action_for(RUNTIME, 143) == "Ignore" and action_for(RUNTIME, 137, disrupted=True) == "Ignore"
    assert [action_for(RUNTIME, code) for code in (134, 137, 139, 170, 255)] == ["Count"] * 5
    assert 0 < node_job(RUNTIME)["backoffLimit"]  # a backstop: the keeper's exit 3 ends the retries first
    assert RUNTIME["spec"]["template"]["spec"]["failurePolicy"] == {"maxRestarts": 0}


def test_rendered_trainjobs_run_on_the_shipped_runtime():
    assert k8s.K8sOptions().training_runtime == RUNTIME["metadata"]["name"]
    result = run_launcher("render", "recipes/sft", "--backend", "k8s", "--api", "trainjob")
    assert result.returncode == 0, result.stderr
    _, job = k8s.manifests(result.stdout)
    assert job["spec"]["runtimeRef"] == {"name": "ft-recipes-torch"}
    patched = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert [j["name"] for j in patched] == [j["name"] for j in RUNTIME["spec"]["template"]["spec"]["replicatedJobs"]]
