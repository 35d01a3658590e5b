"""(a) Every rendered object is one a cluster would accept, and keeps the job contract.

tests/k8s/validation.py checks each object as the published SDK models (strictly: unknown fields
are errors), the Kubernetes schemas, the PyTorchJob / TrainJob CRDs' and webhooks' own rules, the
API server's syntax rules and the Restricted Pod Security Standard would. Checked here: every
file in k8s/examples/ (every recipe for 2 nodes x 4 GPUs as a PyTorchJob and as a TrainJob;
test_examples.py keeps them equal to a fresh render), and fresh `launcher render --backend k8s`
output with the default profile and with every k8s option set. The validators are shown to
refuse broken objects, so these checks can fail.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from launcher import examples, images, k8s, k8s_client
from tests.conftest import run_launcher
from tests.k8s import validation

EXAMPLE_DIR = examples.SETS["k8s"].directory
EXAMPLES = sorted(EXAMPLE_DIR.glob("*.yaml"))
CANARY = "hf_canary_5ecret_t0ken_value"


def render(*args: str, env: dict | None = None) -> tuple[str, list[dict]]:
    result = run_launcher("render", *args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout, k8s.manifests(result.stdout)


def assert_accepted(objects: list[dict]) -> None:
    for obj in objects:
        assert validation.problems(obj) == [], f"{obj['kind']} {obj['metadata']['name']}"


def pod_specs(job: dict) -> list[dict]:
    if job["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in job["spec"]["pytorchReplicaSpecs"].values()]
    if job["kind"] == "Job":
        return [job["spec"]["template"]["spec"]]
    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    return [patch["template"]["spec"]["template"]["spec"]]


def assert_contract(config_map: dict, job: dict, *, nodes: int, gpus: int, entry: str) -> None:
    """The cluster contract every job keeps, whatever its kind."""
    name = job["metadata"]["name"]
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert config_map["metadata"]["name"] == f"{name}-config"
    assert config["output_dir"] == f"/outputs/{name}"
    command = ["--config", "/etc/ft-recipes/config.yaml"]
    for spec in pod_specs(job):
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["config"]["configMap"] == {"name": f"{name}-config",
                                                  "items": [{"key": "config.yaml", "path": "config.yaml"}]}
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory"} and "persistentVolumeClaim" in volumes["outputs"]
        (container,) = spec["containers"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/etc/ft-recipes"] == {"name": "config", "mountPath": "/etc/ft-recipes", "readOnly": True}
        assert mounts["/outputs"]["name"] == "outputs" and mounts["/dev/shm"]["name"] == "dshm"
        assert spec["securityContext"]["runAsUser"] == 1000 and spec["securityContext"]["runAsNonRoot"] is True
    if job["kind"] == "PyTorchJob":
        replicas = job["spec"]["pytorchReplicaSpecs"]
        assert job["spec"]["nprocPerNode"] == str(gpus)
        assert replicas["Master"]["replicas"] == 1
        assert replicas.get("Worker", {}).get("replicas", 0) == nodes - 1
        for replica in replicas.values():
            assert replica["restartPolicy"] == "ExitCode"
            (container,) = replica["template"]["spec"]["containers"]
            assert container["name"] == "pytorch" and container["workingDir"] == "/opt/ft-recipes"
            assert container["command"] == ["python", "-m", "launcher.keeper", entry, *command]
            assert container["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
    elif job["kind"] == "TrainJob":
        trainer = job["spec"]["trainer"]
        assert job["spec"]["runtimeRef"] == {"name": "ft-recipes-torch"}
        assert trainer["numNodes"] == nodes and trainer["numProcPerNode"] == gpus
        assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == str(gpus)
        assert trainer["command"][-3:] == [entry, *command]
    else:
        assert job["spec"]["completions"] == job["spec"]["parallelism"] == nodes
        (container,) = job["spec"]["template"]["spec"]["containers"]
        assert container["command"] == ["python", entry, *command]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_object_would_be_accepted(path):
    objects = k8s.manifests(path.read_text(encoding="utf-8"))
    assert [obj["kind"] for obj in objects][0] == "ConfigMap" and len(objects) == 2
    assert_accepted(objects)


@pytest.mark.parametrize("api", ["pytorchjob", "trainjob"])
def test_render_two_nodes_of_four_gpus_with_the_default_profile(api):
    _, (config_map, job) = render("recipes/sft-zero2", "--backend", "k8s", "--nodes", "2", "--gpus", "4",
                                  "--api", api)
    assert_accepted([config_map, job])
    assert_contract(config_map, job, nodes=2, gpus=4, entry="recipes/sft-zero2/train.py")
    image = job["spec"]["trainer"]["image"] if api == "trainjob" else pod_specs(job)[0]["containers"][0]["image"]
    assert image == images.default_image("cuda")


def test_render_with_every_k8s_option_keeps_secrets_by_reference(monkeypatch):
    text, (config_map, job) = render(
        "recipes/sft", "--backend", "k8s", "--nodes", "3", "--gpus", "8", "--namespace", "ml-team", "--pvc", "shared",
        "--kueue-queue", "team-queue", "--priority-class", "high", "--service-account", "trainer",
        "--hf-token-secret", "hf-token", "--wandb-secret", "wandb:api-key", "--secret-env", "DB_URL=optuna-db:url",
        "--label", "team=nlp", "--annotation", "owner=alice@example.com", "--node-selector", "gpu=h100",
        "--max-retries", "5", "--max-continuations", "7", "--grace-period", "300", "--ttl-seconds-after-finished", "3600", "--clean-pod-policy", "All",
        "--memory", "200Gi", "--cpus-per-task", "32", "--time", "02:00:00", "--image", "registry.local/ft:1",
        "--env", "NCCL_DEBUG=INFO", "--job-name", "My Run!", "--set", "use_auth_token=HF_TOKEN",
        env={"HF_TOKEN": CANARY, "WANDB_API_KEY": CANARY, "DB_URL": CANARY})
    assert CANARY not in text
    assert_accepted([config_map, job])
    assert_contract(config_map, job, nodes=3, gpus=8, entry="recipes/sft/train.py")
    assert job["metadata"]["name"].startswith("my-run-") and job["metadata"]["namespace"] == "ml-team"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-queue"
    assert job["metadata"]["labels"]["team"] == "nlp"
    assert job["metadata"]["annotations"] == {"owner": "alice@example.com"}
    policy = job["spec"]["runPolicy"]
    assert policy == {"backoffLimit": 5, "cleanPodPolicy": "All", "ttlSecondsAfterFinished": 3600,
                      "activeDeadlineSeconds": 7200}
    spec = pod_specs(job)[0]
    assert spec["priorityClassName"] == "high" and spec["serviceAccountName"] == "trainer"
    assert spec["nodeSelector"] == {"gpu": "h100"}
    assert spec["volumes"][1]["persistentVolumeClaim"] == {"claimName": "shared"}
    (container,) = spec["containers"]
    assert container["image"] == "registry.local/ft:1"
    assert container["resources"] == {"limits": {"memory": "200Gi", "nvidia.com/gpu": "8"},
                                      "requests": {"cpu": "32", "memory": "200Gi"}}
    env = {var["name"]: var for var in container["env"]}
    assert env["NCCL_DEBUG"]["value"] == "INFO"
    budget = {name: env[name]["value"] for name in ("FT_JOB_DIR", "FT_MAX_RETRIES", "FT_MAX_CONTINUATIONS",
                                                     "FT_RECORD_ATTEMPTS", "FT_OUTPUTS_PVC")}
    assert budget == {"FT_JOB_DIR": f"/outputs/{job['metadata']['name']}", "FT_MAX_RETRIES": "5",
                      "FT_MAX_CONTINUATIONS": "7", "FT_RECORD_ATTEMPTS": "1", "FT_OUTPUTS_PVC": "shared"}
    assert spec["terminationGracePeriodSeconds"] == 300
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}
    assert env["WANDB_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "wandb", "key": "api-key"}}
    assert env["DB_URL"]["valueFrom"] == {"secretKeyRef": {"name": "optuna-db", "key": "url"}}
    assert yaml.safe_load(config_map["data"]["config.yaml"])["use_auth_token"] == "HF_TOKEN"


@pytest.mark.parametrize("api", ["pytorchjob", "trainjob"])
def test_a_search_recipe_runs_one_worker_pod_per_node(api):
    result = run_launcher("render", "recipes/optuna", "--backend", "k8s", "--nodes", "2", "--gpus", "4", "--api", api)
    assert result.returncode == 0, result.stderr
    assert "note: optuna is a search recipe: --nodes 2 runs 2 worker pods" in result.stderr
    config_map, job = k8s.manifests(result.stdout)
    assert_accepted([config_map, job])
    assert job["kind"] == ("TrainJob" if api == "trainjob" else "Job")
    if api == "trainjob":
        assert job["spec"]["trainer"]["command"] == ["python", "recipes/optuna/search.py", "--config",
                                                     "/etc/ft-recipes/config.yaml"]
        assert job["spec"]["trainer"]["numNodes"] == 2
    else:
        assert_contract(config_map, job, nodes=2, gpus=4, entry="recipes/optuna/search.py")
        rules = job["spec"]["podFailurePolicy"]["rules"]
        assert rules[0]["onExitCodes"]["values"] == list(range(1, 128)) and rules[0]["action"] == "FailJob"
        assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}


# ---------------------------------------------------------------------------------------------
# The validators refuse what a cluster refuses (so the tests above can fail)


def example(name: str) -> dict:
    return k8s.manifests((EXAMPLE_DIR / name).read_text(encoding="utf-8"))[1]


def first_container(job: dict) -> dict:
    return pod_specs(job)[0]["containers"][0]


BROKEN_PYTORCHJOB = {
    "an unknown field in runPolicy": lambda j: j["spec"]["runPolicy"].update(cleanPodPolicyy="All"),
    "an unknown field in a container": lambda j: first_container(j).update(workdir="/x"),
    "a string where the model wants an int": lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"].update(replicas="1"),
    "two Masters": lambda j: j["spec"]["pytorchReplicaSpecs"]["Master"].update(replicas=2),
    "no container named pytorch": lambda j: first_container(j).update(name="main"),
    "a replica type the operator does not know": lambda j: j["spec"]["pytorchReplicaSpecs"].update(
        Chief=copy.deepcopy(j["spec"]["pytorchReplicaSpecs"]["Master"])),
    "an unknown cleanPodPolicy": lambda j: j["spec"]["runPolicy"].update(cleanPodPolicy="Always"),
    "a name that is not DNS-1035": lambda j: j["metadata"].update(name="9lives"),
    "privilege escalation": lambda j: first_container(j)["securityContext"].update(allowPrivilegeEscalation=True),
    "running as root": lambda j: first_container(j)["securityContext"].update(runAsUser=0),
    "a hostPath volume": lambda j: pod_specs(j)[0]["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
    "a mount of no volume": lambda j: first_container(j)["volumeMounts"].append({"name": "x", "mountPath": "/x"}),
    "a bad label value": lambda j: j["metadata"]["labels"].update(team="a b"),
    "a duplicate env var": lambda j: first_container(j)["env"].append(first_container(j)["env"][0]),
    "a bad quantity": lambda j: first_container(j)["resources"]["limits"].update(memory="lots"),
}
BROKEN_TRAINJOB = {
    "an unknown field in trainer": lambda j: j["spec"]["trainer"].update(nodes=2),
    "a string numNodes": lambda j: j["spec"]["trainer"].update(numNodes="2"),
    "numProcPerNode auto": lambda j: j["spec"]["trainer"].update(numProcPerNode="auto"),
    "a reserved PET_ env var": lambda j: j["spec"]["trainer"]["env"].append({"name": "PET_NNODES", "value": "2"}),
    "a replicated job the runtime lacks": lambda j: j["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"][
        "spec"]["replicatedJobs"][0].update(name="trainer"),
    "env on the node container": lambda j: first_container(j).update(env=[{"name": "A", "value": "1"}]),
    "a manager that is not domain-prefixed": lambda j: j["spec"]["runtimePatches"][0].update(manager="launcher"),
    "a 64-character name": lambda j: j["metadata"].update(name="a" * 64),
    "no capabilities dropped": lambda j: first_container(j)["securityContext"].pop("capabilities"),
    "an unknown managedBy": lambda j: j["spec"].update(managedBy="me"),
}


BROKEN = [("sft-zero2.yaml", defect, BROKEN_PYTORCHJOB[defect]) for defect in BROKEN_PYTORCHJOB] + \
         [("sft-zero2.trainjob.yaml", defect, BROKEN_TRAINJOB[defect]) for defect in BROKEN_TRAINJOB]


@pytest.mark.parametrize("name, defect, breaks", BROKEN, ids=[f"{kind}: {defect}" for kind, defect, _ in BROKEN])
def test_validation_refuses_a_broken_pytorchjob_or_trainjob(name, defect, breaks):
    job = example(name)
    assert validation.problems(job) == []
    breaks(job)
    assert validation.problems(job), defect


def test_validation_refuses_a_broken_configmap_and_job():
    config_map, job = k8s.manifests((EXAMPLE_DIR / "optuna.yaml").read_text(encoding="utf-8"))
    config_map["data"]["config.yaml"] = 5
    job["spec"]["podFailurePolicy"]["rules"][1]["onPodConditions"][0].pop("status")
    assert validation.problems(config_map) and validation.problems(job)


def test_the_pvc_and_rbac_manifests_are_valid_and_grant_what_the_launcher_calls():
    (pvc,) = k8s.manifests((k8s.TEMPLATES / "pvc.yaml").read_text(encoding="utf-8"))
    role, binding = k8s.manifests((k8s.TEMPLATES / "rbac.yaml").read_text(encoding="utf-8"))
    for obj in (pvc, role, binding):
        assert validation.core_problems(obj) == []
    assert pvc["metadata"]["name"] == k8s.K8sOptions().pvc and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    needed = {("", "configmaps", "create"), ("", "configmaps", "patch"), ("", "configmaps", "delete"),
              ("", "persistentvolumeclaims", "get"), ("", "pods", "list"), ("", "pods/log", "get"),
              ("batch", "jobs", "get"), ("batch", "jobs", "create"), ("batch", "jobs", "delete")}
    for kind in ("PyTorchJob", "TrainJob"):
        group, _, plural = k8s_client.GROUPS[kind]
        needed |= {(group, plural, verb) for verb in ("create", "get", "delete")}
    assert needed <= granted, needed - granted
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
