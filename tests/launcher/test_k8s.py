"""The Kubernetes backend's options: each backend's options and profile keys, bad input as one line.

The manifests themselves are checked in tests/k8s/, the cluster client in test_k8s_client.py.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from launcher import cli, k8s, options, profiles

K8S_PROFILE = """
profiles:
  both:                       # one site, two schedulers: each backend reads its own keys
    partition: gpu
    container: apptainer
    image: registry.local/ft-recipes:1
    output_root: /shared/outputs
    namespace: research
    pvc: shared-outputs
    tolerations:
      - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
    labels: {team: nlp}
    secret_env: {OPTUNA_DB: optuna-db:url}
    max_retries: 1
"""


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli.main, list(args), env=env)


def one_line_error(result, exit_code: int = 2) -> str:
    assert result.exit_code == exit_code, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ") and "Traceback" not in result.output
    return line.removeprefix("Error: ")


@pytest.mark.parametrize("args, message", [
    (["render", "sft", "--backend", "k8s", "--partition", "gpu"], "--partition: only used with --backend slurm"),
    (["render", "sft", "--backend", "k8s", "--mount", "/x"], "--mount: only used with --backend slurm"),
    (["render", "sft", "--namespace", "ml"], "--namespace: only used with --backend k8s"),
    (["render", "sft", "--api", "trainjob"], "--api: only used with --backend k8s"),
    (["submit", "sft", "--dry-run=server"], "--dry-run: server is only for --backend k8s; use --dry-run"),
    (["status", "1234", "--namespace", "ml"], "--namespace: only used with --backend k8s"),
    (["cancel", "job-abcde", "--backend", "k8s", "--preempt"], "--preempt: only used with --backend slurm"),
    (["render", "sft", "--backend", "k8s", "--label", "novalue"], "--label: expected NAME=VALUE, got 'novalue'"),
    (["render", "sft", "--backend", "k8s", "--set", "output_dir=outputs/x"],
     "--set output_dir: on Kubernetes outputs live on the PVC mounted at /outputs"),
    (["render", "sft", "--backend", "k8s", "--api", "trainjob", "--priority-class", "high"],
     "--priority-class: a TrainJob cannot set the pods' priorityClassName"),
    (["render", "sft", "--backend", "k8s", "--env", "PET_NNODES=2"],
     "--env: PET_NNODES is set by the training operator or torchrun"),
])
def test_bad_options_are_one_line_naming_the_option(args, message):
    assert one_line_error(invoke(*args)).startswith(message)


def test_profile_keys_of_the_other_backend_are_ignored(tmp_path):
    (tmp_path / "ft-recipes").mkdir()
    (tmp_path / "ft-recipes" / "launcher.yaml").write_text(K8S_PROFILE)
    result = invoke("render", "sft", "--backend", "k8s", "--profile", "both", env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert result.exit_code == 0, result.output
    config_map, job = k8s.manifests(result.stdout)
    assert job["metadata"]["namespace"] == "research" and job["spec"]["runPolicy"]["backoffLimit"] == 1
    env = {var["name"]: var.get("value") for var in
           job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FT_MAX_RETRIES"] == "1"  # the budget the keeper enforces (max_retries is a shared key)
    spec = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["containers"][0]["image"] == "registry.local/ft-recipes:1"
    assert {"name": "OPTUNA_DB", "valueFrom": {"secretKeyRef": {"name": "optuna-db", "key": "url"}}} in \
        spec["containers"][0]["env"]
    assert "/shared/outputs" not in result.stdout  # output_root is Slurm's: k8s writes to the PVC at /outputs
    both = profiles.load("both", files=[tmp_path / "ft-recipes" / "launcher.yaml"]).settings
    assert both["partition"] == "gpu" and both["labels"] == {"team": "nlp"}


@pytest.mark.parametrize("text, message", [
    ("profiles: {p: {namespce: ml}}", "namespce: unknown key; did you mean namespace?"),
    ("profiles: {p: {tolerations: [{key: gpu, effect: Sometimes}]}}", "tolerations: effect must be one of"),
    ("profiles: {p: {labels: {team: 'a b'}}}", "labels.team: values must be empty or up to 63"),
    ("profiles: {p: {hf_token_secret: 'hf token'}}", "hf_token_secret: must be at most 253 lower-case"),
    ("profiles: {p: {clean_pod_policy: Never}}", "clean_pod_policy: must be one of Running, All, None"),
    ("profiles: {p: {memory: lots}}", "memory: must be a positive quantity"),
    ("profiles: {p: {max_retries: -1}}", "max_retries: must be an integer from 0 to 100"),
    ("profiles: {p: {grace_period: 5}}", "grace_period: must be an integer from 10 to 86400"),
])
def test_bad_k8s_profile_keys_name_the_file_profile_and_key(tmp_path, text, message):
    path = tmp_path / "launcher.yaml"
    path.write_text(text)
    with pytest.raises(profiles.ProfileError) as error:
        profiles.load("p", files=[path])
    assert str(error.value).startswith(f"{path}: profile 'p': {message}")


def test_command_line_labels_add_to_the_profiles():
    settings = {"labels": {"team": "nlp"}, "node_selector": {"a": "1"}}
    changed = options.build(k8s.K8sOptions, settings, {"labels": {"run": "7"}, "node_selector": {}, "pvc": None})
    assert changed.labels == {"team": "nlp", "run": "7"} and changed.node_selector == {"a": "1"}
    assert changed.pvc == "ft-recipes-outputs" and changed.api == "pytorchjob"


def test_secrets_from_their_own_keys_and_from_secret_env():
    opts = options.build(k8s.K8sOptions, {"secret_env": {"DB": "db:url"}}, {"hf_token_secret": "hf", "time": "90"})
    assert opts.secrets == {"DB": "db:url", "HF_TOKEN": "hf"} and opts.deadline == 5400


def test_kubernetes_keys_left_empty_in_a_profile_keep_their_defaults(tmp_path):
    keys = ("namespace", "pvc", "node_selector", "tolerations", "priority_class", "kueue_queue", "labels", "annotations",
            "service_account", "hf_token_secret", "wandb_secret", "secret_env", "max_retries", "max_continuations", "grace_period",
            "ttl_seconds_after_finished", "clean_pod_policy", "memory", "training_runtime")
    path = tmp_path / "launcher.yaml"
    path.write_text("profiles:\n  p:\n" + "".join(f"    {key}: null\n" for key in keys))
    profile = profiles.load("p", files=[path])
    assert options.build(k8s.K8sOptions, profile.settings) == k8s.K8sOptions()
