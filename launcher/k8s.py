"""The Kubernetes backend: JobSpec -> K8sJob -> manifests (the dry-run request) -> API server.

``build`` checks the inputs and resolves the recipe's config into a ``K8sJob``; ``render(job)``
is pure and turns it into a multi-document YAML from the templates in ``k8s/``: a ConfigMap
with the resolved config, then

- a Kubeflow ``PyTorchJob`` (``kubeflow.org/v1``, Training Operator) for a training recipe,
- a Kubeflow Trainer v2 ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``) with ``--api trainjob``,
- an indexed ``batch/v1`` Job of independent workers for a search recipe (``search.py``).

``submit``/``status``/``logs``/``cancel`` talk to the cluster with the official ``kubernetes``
client (kubeconfig, or the pod's service account in a cluster). Every value reaches the YAML
through a YAML dumper (the ``yaml`` and ``yaml_block`` filters), never pasted into it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets as random_source
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import jinja2
import yaml

from launcher import images, jobspec, k8s_fields, profiles
from launcher.jobspec import FieldError, JobSpec, shown
from launcher.recipes import REPO_ROOT, Recipe

TEMPLATES = REPO_ROOT / "k8s"
APIS = ("pytorchjob", "trainjob")
# The container contract (images/README.md): code and venv at WORKDIR, outputs on a PVC.
WORKDIR = "/opt/ft-recipes"
CONFIG_DIR = "/etc/ft-recipes"
CONFIG_FILE = f"{CONFIG_DIR}/config.yaml"
OUTPUTS = "/outputs"
USER_ID = 1000
# Names: <base>-<5 random characters>. 40 characters leave room for the pods and Services the
# operators name after the job (<job>-worker-<i>, <job>-node-0-<i>), which must be DNS labels (63).
SUFFIX_LENGTH = 5
NAME_MAX = 40
BASE_MAX = NAME_MAX - SUFFIX_LENGTH - 1
MASTER_PORT = 23456                      # the Training Operator's default port (named pytorchjob-port)
RDZV_TIMEOUT = 1800                      # pods of one job may start minutes apart (image pulls)
GRACE_SECONDS = 120                      # SIGTERM -> checkpoint at the next step -> exit 143
CONFIG_MAX_BYTES = 1024 * 1024 - 4096    # a ConfigMap holds at most 1 MiB
DEFAULTS = dict(pvc="ft-recipes-outputs", backoff_limit=3, ttl_seconds_after_finished=7 * 24 * 3600,
                clean_pod_policy="Running", training_runtime="torch-distributed")
PATCH_MANAGER = "ft-recipes/launcher"    # TrainJob runtimePatches entries are keyed by their manager
SECRET_ENV = {"hf_token_secret": "HF_TOKEN", "wandb_secret": "WANDB_API_KEY"}
GROUPS = {  # kind -> (API group, version, plural); "" is the core/batch API
    "PyTorchJob": ("kubeflow.org", "v1", "pytorchjobs"),
    "TrainJob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs"),
    "Job": ("batch", "v1", "jobs"),
}
# Which pods belong to a job, and which one's log `launcher logs` shows (rank 0).
POD_SELECTORS = {
    "PyTorchJob": ("training.kubeflow.org/job-name", "training.kubeflow.org/replica-type=master"),
    "TrainJob": ("jobset.sigs.k8s.io/jobset-name", "batch.kubernetes.io/job-completion-index=0"),
    "Job": ("batch.kubernetes.io/job-name", "batch.kubernetes.io/job-completion-index=0"),
}
CONTAINER = {"PyTorchJob": "pytorch", "TrainJob": "node", "Job": "worker"}


# ---------------------------------------------------------------------------------------------
# The typed job


@dataclass(frozen=True)
class K8sJob:
    """One recipe job on Kubernetes: the scheduler-independent JobSpec plus what the cluster needs."""

    spec: JobSpec
    name: str                                   # DNS-1035, also the output dir's name under /outputs
    api: str = "pytorchjob"                     # pytorchjob | trainjob
    image: str = images.default_image()
    namespace: str | None = None                # None: kubectl's / the kubeconfig context's namespace
    pvc: str = DEFAULTS["pvc"]
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict, ...] = ()
    priority_class: str | None = None
    kueue_queue: str | None = None
    service_account: str | None = None
    secret_env: dict[str, str] = field(default_factory=dict)  # ENV_NAME -> SECRET[:KEY]
    backoff_limit: int = DEFAULTS["backoff_limit"]
    ttl_seconds_after_finished: int | None = DEFAULTS["ttl_seconds_after_finished"]
    clean_pod_policy: str = DEFAULTS["clean_pod_policy"]
    active_deadline_seconds: int | None = None
    cpu: int | None = None
    memory: str | None = None
    training_runtime: str = DEFAULTS["training_runtime"]

    def __post_init__(self):
        k8s_fields.check_job_name("job_name", self.name, NAME_MAX)
        if self.spec.job_name != self.name:
            raise FieldError("job_name", f"the spec is for job {self.spec.job_name}, not {self.name}")
        if not self.spec.job_dir.startswith(OUTPUTS + "/"):
            raise FieldError("output_dir", f"must be on the PVC mounted at {OUTPUTS}, got {shown(self.spec.job_dir)}")
        if self.spec.workdir != WORKDIR:
            raise FieldError("workdir", f"must be {WORKDIR} (the image's working directory)")
        if self.api not in APIS:
            raise FieldError("api", f"must be one of {', '.join(APIS)}, got {shown(self.api)}")
        k8s_fields.check_image("image", self.image)
        if self.namespace is not None:
            k8s_fields.check_dns1123_label("namespace", self.namespace)
        k8s_fields.check_dns1123_subdomain("pvc", self.pvc)
        k8s_fields.check_labels("labels", self.labels)
        clash = sorted(set(self.labels) & set(self.own_labels))
        if clash:
            raise FieldError("labels", f"{clash[0]} is set by the launcher itself")
        k8s_fields.check_annotations("annotations", self.annotations)
        k8s_fields.check_labels("node_selector", self.node_selector)
        k8s_fields.check_tolerations("tolerations", self.tolerations)
        for key in ("priority_class", "service_account"):
            if getattr(self, key) is not None:
                k8s_fields.check_dns1123_subdomain(key, getattr(self, key))
        if self.kueue_queue is not None:
            k8s_fields.check_label_value("kueue_queue",
                                         k8s_fields.check_dns1123_subdomain("kueue_queue", self.kueue_queue, 63))
        k8s_fields.check_secret_env("secret_env", self.secret_env)
        k8s_fields.check_k8s_env("env", self.spec.env)
        both = sorted(set(self.spec.env) & set(self.secret_env))
        if both:
            raise FieldError("env", f"{both[0]} is also read from a Secret (secret_env); set it in one place")
        k8s_fields.check_count("backoff_limit", self.backoff_limit, 0, 100)
        if self.ttl_seconds_after_finished is not None:
            k8s_fields.check_count("ttl_seconds_after_finished", self.ttl_seconds_after_finished, 0, 2**31 - 1)
        k8s_fields.check_clean_pod_policy("clean_pod_policy", self.clean_pod_policy)
        if self.active_deadline_seconds is not None:
            k8s_fields.check_count("time", self.active_deadline_seconds, 1, 2**31 - 1)
        if self.cpu is not None:
            k8s_fields.check_count("cpus_per_task", self.cpu, 1, 4096)
        if self.memory is not None:
            k8s_fields.check_quantity("memory", self.memory)
        k8s_fields.check_dns1123_subdomain("training_runtime", self.training_runtime)
        if self.kind == "TrainJob" and self.priority_class is not None:
            raise FieldError("priority_class", "a TrainJob cannot set the pods' priorityClassName (Trainer v2 does "
                                               "not patch it); use a Kueue WorkloadPriorityClass label instead")
        if len(self.spec.config_text.encode("utf-8")) > CONFIG_MAX_BYTES:
            raise FieldError("config", "the resolved config is larger than a ConfigMap can hold (1 MiB)")

    @property
    def kind(self) -> str:
        if self.spec.program == "python":
            return "TrainJob" if self.api == "trainjob" else "Job"
        return "TrainJob" if self.api == "trainjob" else "PyTorchJob"

    @property
    def config_map(self) -> str:
        return f"{self.name}-config"

    @property
    def own_labels(self) -> dict[str, str]:
        """The labels every object of the job carries (`kubectl get all -l app.kubernetes.io/instance=JOB`)."""
        return {"app.kubernetes.io/name": "ft-recipes", "app.kubernetes.io/instance": self.name,
                "app.kubernetes.io/component": k8s_fields.dns1035(self.spec.recipe, 63) or "recipe"}

    @property
    def job_labels(self) -> dict[str, str]:
        labels = {**self.own_labels, **self.labels}
        if self.kueue_queue:
            labels["kueue.x-k8s.io/queue-name"] = self.kueue_queue
        return labels

    @property
    def pod_labels(self) -> dict[str, str]:
        return {**self.own_labels, **self.labels}

    @property
    def command(self) -> list[str]:
        """The container's command. Training: torchrun under an exit-code keeper (launcher/k8s_torchrun.py),
        which takes the rendezvous from the operator's PET_* env like plain torchrun; search: python."""
        if self.spec.program == "python":
            return ["python", self.spec.entry, "--config", CONFIG_FILE]
        return ["python", "-m", "launcher.k8s_torchrun", self.spec.entry, "--config", CONFIG_FILE]

    @property
    def env(self) -> list[dict[str, Any]]:
        """The container's env vars: plain ones, then those read from Secrets (by name, never by value)."""
        found: list[dict[str, Any]] = []
        if self.spec.program == "torchrun":
            found.append({"name": "PET_RDZV_CONF", "value": f"timeout={RDZV_TIMEOUT}"})
        found += [{"name": key, "value": value} for key, value in sorted(self.spec.env.items())]
        for key, ref in sorted(self.secret_env.items()):
            secret, secret_key = k8s_fields.check_secret_ref("secret_env", ref, key)
            found.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": secret_key}}})
        return found

    @property
    def resources(self) -> dict[str, dict[str, str]]:
        limits, requests = {}, {}
        if self.spec.gpus_per_node:
            limits["nvidia.com/gpu"] = str(self.spec.gpus_per_node)
        if self.cpu:
            requests["cpu"] = str(self.cpu)
        if self.memory:
            requests["memory"] = limits["memory"] = self.memory
        return {k: v for k, v in (("limits", limits), ("requests", requests)) if v}

    @property
    def replicas(self) -> int:
        """Pods: nodes of a training job, workers of a search."""
        return self.spec.workers if self.spec.program == "python" else self.spec.nodes


def random_suffix() -> str:
    return "".join(random_source.choice(string.ascii_lowercase + string.digits) for _ in range(SUFFIX_LENGTH))


def job_name(base: str, suffix: str) -> str:
    """``<base>-<suffix>``, the base made DNS-1035 safe and short enough for the pods' names."""
    if not re.fullmatch(rf"[a-z0-9]{{{SUFFIX_LENGTH}}}", suffix):
        raise FieldError("job_name", f"the suffix must be {SUFFIX_LENGTH} lower-case letters or digits")
    return f"{k8s_fields.dns1035(base, BASE_MAX) or 'job'}-{suffix}"


def build(recipe: Recipe, profile: profiles.Profile, *, config: str | None = None, overrides: tuple[str, ...] = (),
          nodes: int = 1, gpus_per_node: int = 0, nproc_per_node: int | None = None, workers: int = 1,
          job_name_base: str | None = None, api: str = "pytorchjob", suffix: str | None = None) -> K8sJob:
    """Check the inputs, resolve the recipe's config, and return the K8sJob (FieldError on bad input).

    ``profile`` has the command line's options applied. Its Slurm-only keys are ignored. A search
    recipe runs one worker per pod; there ``--nodes N`` means N worker pods, like ``--workers N``.
    """
    if api not in APIS:
        raise FieldError("api", f"must be one of {', '.join(APIS)}, got {shown(api)}")
    if job_name_base is not None:
        jobspec.no_nul("job_name", job_name_base)
    name = job_name(job_name_base or recipe.name, suffix or random_suffix())
    for item in overrides:
        jobspec.no_nul("--set", item)
        key, _, value = item.partition("=")
        if key.strip() == "output_dir" and not (value.startswith(OUTPUTS + "/") and "/../" not in value + "/"):
            raise FieldError("output_dir", f"on Kubernetes outputs live on the PVC mounted at {OUTPUTS}: give "
                                           f"{OUTPUTS}/<dir> (e.g. a failed job's dir to resume it), "
                                           f"got {shown(value)}")
    if recipe.entry.name == "search.py" and nodes > 1 and workers == 1:
        nodes, workers = 1, nodes
    # What K8sJob checks again, checked before the recipe's (slower) --check runs.
    if profile.image is not None:
        k8s_fields.check_image("image", profile.image)
    k8s_fields.check_k8s_env("env", profile.env)
    if api == "trainjob" and profile.priority_class is not None:
        raise FieldError("priority_class", "a TrainJob cannot set the pods' priorityClassName (Trainer v2 does not "
                                           "patch it); use a Kueue WorkloadPriorityClass label instead")
    # The shared spec sees only what every backend reads; the Slurm keys stay out of it.
    neutral = profiles.Profile(name=profile.name, env=dict(profile.env), cpus_per_task=profile.cpus_per_task,
                               workdir=WORKDIR, output_root=OUTPUTS)
    spec = jobspec.build(recipe, neutral, config=config, overrides=tuple(overrides), nodes=nodes,
                         gpus_per_node=gpus_per_node, nproc_per_node=nproc_per_node, workers=workers, job_name=name)
    secret_env = dict(profile.secret_env)
    for key, env_name in SECRET_ENV.items():
        ref = getattr(profile, key)
        if ref is not None:
            if env_name in secret_env:
                raise FieldError(key, f"{env_name} is also given in secret_env; set it in one place")
            secret_env[env_name] = ref
    deadline = jobspec.time_seconds(profile.time) if profile.time is not None else None
    values = dict(spec=spec, name=name, api=api, image=profile.image or images.default_image(
                  "cuda" if gpus_per_node else "cpu"), namespace=profile.namespace, labels=dict(profile.labels),
                  annotations=dict(profile.annotations), node_selector=dict(profile.node_selector),
                  tolerations=tuple(profile.tolerations), priority_class=profile.priority_class,
                  kueue_queue=profile.kueue_queue, service_account=profile.service_account, secret_env=secret_env,
                  active_deadline_seconds=deadline or None, cpu=profile.cpus_per_task, memory=profile.memory)
    for key, default in DEFAULTS.items():
        value = getattr(profile, key)
        values[key] = default if value is None else value
    return K8sJob(**values)


# ---------------------------------------------------------------------------------------------
# Rendering: every value goes through a YAML dumper


class _QuotingDumper(yaml.SafeDumper):
    """Strings always double-quoted, with YAML escapes for anything outside printable ASCII, so no
    value is ever read back as another type (`yes`, `1e3`, `null`) or as structure."""


class _BlockDumper(_QuotingDumper):
    """Like _QuotingDumper, but a plain multi-line text becomes a literal block, easy to read."""


def _quoted(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')


def plain_block(text: str) -> bool:
    """Text every YAML parser reads back the same from a literal block: printable ASCII lines without
    trailing blanks, one final newline, not starting with a blank."""
    return (text.endswith("\n") and not text.endswith("\n\n") and text[:1] not in ("", " ", "\n")
            and all(" " <= ch <= "~" or ch == "\n" for ch in text)
            and all(line == line.rstrip(" ") for line in text.split("\n")))


def _block(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if plain_block(value) else '"')


_QuotingDumper.add_representer(str, _quoted)
_BlockDumper.add_representer(str, _block)


def to_yaml(value: Any) -> str:
    """The ``yaml`` filter: one value as one line of YAML (flow style for lists and mappings)."""
    text = yaml.dump(value, Dumper=_QuotingDumper, default_flow_style=True, width=float("inf"),
                     allow_unicode=False)
    return text.removesuffix("\n...\n").rstrip("\n")


def to_yaml_block(value: str, indent: int) -> str:
    """The ``yaml_block`` filter: a text as a literal block whose lines are indented ``indent`` spaces
    (a mapping value at indent - 2), or as one double-quoted line when a block could not hold it."""
    if not isinstance(value, str) or not 2 <= indent <= 9:
        raise TypeError("yaml_block takes a string and an indent of 2 to 9")
    return yaml.dump(value, Dumper=_BlockDumper, indent=indent, width=float("inf"),
                     allow_unicode=False).removesuffix("\n...\n").rstrip("\n")


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters["yaml"] = to_yaml
    env.filters["yaml_block"] = to_yaml_block
    env.globals.update(uid=USER_ID, grace_seconds=GRACE_SECONDS, workdir=WORKDIR, config_dir=CONFIG_DIR,
                       outputs=OUTPUTS, master_port=MASTER_PORT, patch_manager=PATCH_MANAGER,
                       permanent_exit_codes=list(range(1, 128)))
    return env


TEMPLATE = {"PyTorchJob": "pytorchjob.yaml.j2", "TrainJob": "trainjob.yaml.j2", "Job": "job.yaml.j2"}


def header(job: K8sJob) -> str:
    """Comment lines: only values validated to a safe character set (names and numbers) appear."""
    spec = job.spec
    shape = (f"{job.replicas} worker pod(s)" if spec.program == "python"
             else f"{spec.nodes} pod(s) x {spec.nproc_per_node} process(es)")
    return (f"# {spec.recipe} on Kubernetes: a {job.kind}, {shape}, profile {spec.profile}.\n"
            f"# Written by `launcher render --backend k8s`; submit with `launcher submit` (same options) or\n"
            f"# `kubectl apply -f` this file. Outputs and checkpoints: {spec.job_dir} on PVC {job.pvc}.\n")


def render(job: K8sJob) -> str:
    """The manifests for ``job``: the ConfigMap, then the job, as one multi-document YAML."""
    env = environment()
    documents = [env.get_template("configmap.yaml.j2").render(job=job),
                 env.get_template(TEMPLATE[job.kind]).render(job=job)]
    return header(job) + "---\n".join(documents)


def manifests(text: str) -> list[dict]:
    """The objects in rendered YAML, in order."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: the same YAML, faster
    return [doc for doc in yaml.load_all(text, Loader=loader) if doc is not None]


# ---------------------------------------------------------------------------------------------
# The cluster: submit, status, logs, cancel with the official client


class K8sError(RuntimeError):
    """A cluster operation failed; the message is one line that says what to do."""


def one_line(text: Any, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    flat = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in flat)
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


@dataclass
class Cluster:
    """A connection: the API client, the namespace to use, and where the credentials came from."""

    client: Any
    namespace: str
    source: str

    def api(self, name: str):
        from kubernetes import client

        return getattr(client, name)(self.client)


def connect(namespace: str | None = None, context: str | None = None) -> Cluster:
    """Credentials from the kubeconfig (KUBECONFIG or ~/.kube/config), else the pod's service account.

    The namespace is ``namespace``, else the kubeconfig context's, else the pod's, else "default".
    """
    from kubernetes import client, config

    files = os.environ.get("KUBECONFIG") or "~/.kube/config"  # read now: the client reads it at import
    try:
        contexts, active = config.list_kube_config_contexts(config_file=files)
        chosen = next((c for c in contexts if c["name"] == context), None) if context else active
        if context and chosen is None:
            names = ", ".join(c["name"] for c in contexts)
            raise K8sError(f"--context: no context {context!r} in the kubeconfig (contexts: {names})")
        api_client = config.new_client_from_config(config_file=files, context=context, persist_config=False)
        return Cluster(api_client, namespace or (chosen or {}).get("context", {}).get("namespace") or "default",
                       f"kubeconfig context {(chosen or {}).get('name', '?')}")
    except config.ConfigException as exc:
        kubeconfig_problem = one_line(exc)
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not context:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        pod_namespace = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        found = pod_namespace.read_text().strip() if pod_namespace.is_file() else "default"
        return Cluster(client.ApiClient(configuration), namespace or found, "the pod's service account")
    raise K8sError(f"no Kubernetes credentials ({kubeconfig_problem.rstrip('.')}): point KUBECONFIG at a "
                   "kubeconfig (or "
                   "~/.kube/config), or run this inside the cluster")


def api_error(exc: Exception, what: str, cluster: Cluster, kind: str | None = None) -> K8sError:
    """One line for a failed API call: the cause in words, what to do, and the server's message."""
    from kubernetes.client.exceptions import ApiException

    if not isinstance(exc, ApiException):
        host = getattr(cluster.client.configuration, "host", "?")
        return K8sError(f"cannot reach the Kubernetes API server at {host} ({type(exc).__name__}): is the "
                        f"cluster up and your kubeconfig ({cluster.source}) current?")
    message, details = exc.reason or "", {}
    try:
        body = json.loads(exc.body or "{}")
        message, details = body.get("message", message), body.get("details") or {}
    except (TypeError, ValueError, AttributeError):
        pass
    server = f" (API server: {one_line(message)})" if message else ""
    if exc.status == 401:
        return K8sError(f"{what}: the API server refused your credentials ({cluster.source}); log in to the "
                        f"cluster again (an expired token?){server}")
    if exc.status == 403:
        return K8sError(f"{what}: forbidden by RBAC in namespace {cluster.namespace}: your user needs a Role that "
                        f"allows it (see k8s/README.md, section RBAC), or use --namespace for one where you "
                        f"may{server}")
    if exc.status == 404 and details.get("kind") == "namespaces":
        return K8sError(f"{what}: namespace {cluster.namespace} does not exist; give another with --namespace")
    if exc.status == 404 and kind in ("PyTorchJob", "TrainJob") and not details.get("name"):
        return missing_api(kind)  # the API group itself is missing: its CRD is not installed
    if exc.status == 409:
        return K8sError(f"{what}: it already exists in namespace {cluster.namespace}; a job of this name was "
                        f"submitted before (`launcher status` it, or submit again for a new name){server}")
    if exc.status in (400, 422):
        return K8sError(f"{what}: the API server refused the manifest{server}")
    return K8sError(f"{what}: HTTP {exc.status} {one_line(exc.reason)}{server}")


def missing_api(kind: str) -> K8sError:
    if kind == "PyTorchJob":
        return K8sError("this cluster has no PyTorchJob API (kubeflow.org/v1): the Kubeflow Training Operator is "
                        "not installed; install it (k8s/README.md), or use --api trainjob where Kubeflow Trainer v2 "
                        "is installed")
    if kind == "TrainJob":
        return K8sError("this cluster has no TrainJob API (trainer.kubeflow.org/v1alpha1): Kubeflow Trainer v2 is "
                        "not installed; install it (k8s/README.md), or use --api pytorchjob on clusters with the "
                        "Training Operator")
    return K8sError(f"this cluster does not serve {kind} objects")


def require_api(cluster: Cluster, kind: str) -> None:
    """Fail early, with a clear message, when the job kind's API (a CRD) is not installed."""
    group, version, plural = GROUPS[kind]
    if group == "batch":
        return
    from kubernetes.client.exceptions import ApiException

    try:
        resources = cluster.api("CustomObjectsApi").get_api_resources(group, version)
    except ApiException as exc:
        if exc.status == 404:
            raise missing_api(kind) from None
        if exc.status == 403:
            return  # discovery hidden from this user: the create below says what is wrong
        raise api_error(exc, f"checking for the {kind} API", cluster, kind) from None
    except Exception as exc:  # noqa: BLE001 - connection errors of every kind
        raise api_error(exc, f"checking for the {kind} API", cluster, kind) from None
    if resources is not None and plural not in [r.name for r in resources.resources or []]:
        raise missing_api(kind)


def check_pvc(cluster: Cluster, name: str) -> None:
    """The outputs PVC must exist, or the pods would wait forever; skipped if we may not read PVCs."""
    from kubernetes.client.exceptions import ApiException

    try:
        cluster.api("CoreV1Api").read_namespaced_persistent_volume_claim(name, cluster.namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise K8sError(f"pvc: no PersistentVolumeClaim {name} in namespace {cluster.namespace}; the job writes "
                           f"its outputs and checkpoints there: create it (k8s/README.md, section Outputs) or give "
                           f"another with --pvc") from None
        if exc.status != 403:
            raise api_error(exc, f"reading PersistentVolumeClaim {name}", cluster) from None


def create(cluster: Cluster, body: dict, dry_run: bool) -> dict:
    """Create one rendered object; returns the object the server sent back."""
    kind = body["kind"]
    name = body["metadata"]["name"]
    extra = {"dry_run": "All"} if dry_run else {}
    try:
        if kind == "ConfigMap":
            created = cluster.api("CoreV1Api").create_namespaced_config_map(cluster.namespace, body, **extra)
            return cluster.client.sanitize_for_serialization(created)
        if kind == "Job":
            created = cluster.api("BatchV1Api").create_namespaced_job(cluster.namespace, body, **extra)
            return cluster.client.sanitize_for_serialization(created)
        group, version, plural = GROUPS[kind]
        return cluster.api("CustomObjectsApi").create_namespaced_custom_object(
            group, version, cluster.namespace, plural, body, **extra)
    except Exception as exc:  # noqa: BLE001 - ApiException and connection errors alike
        raise api_error(exc, f"creating {kind} {name}", cluster, kind) from None


def submit(job: K8sJob, cluster: Cluster, dry_run: bool = False) -> dict:
    """Create the ConfigMap and the job (server-side dry run with ``dry_run``); returns the created job.

    The ConfigMap comes first so that no pod starts without its config; it is then owned by the
    job, so deleting the job (or its TTL) deletes it too. If the job cannot be created, the
    ConfigMap is deleted again.
    """
    objects = manifests(render(job))
    for obj in objects:
        obj["metadata"]["namespace"] = cluster.namespace
    config_map, job_object = objects
    require_api(cluster, job.kind)
    check_pvc(cluster, job.pvc)
    create(cluster, config_map, dry_run)
    try:
        created = create(cluster, job_object, dry_run)
    except K8sError:
        if not dry_run:
            delete_config_map(cluster, job.config_map)
        raise
    if not dry_run:
        own_config_map(cluster, job, created)
    return created


def own_config_map(cluster: Cluster, job: K8sJob, created: dict) -> None:
    """Make the job the ConfigMap's owner (garbage collection); not fatal if not allowed."""
    uid = (created.get("metadata") or {}).get("uid")
    if not uid:
        return
    group, version, _ = GROUPS[job.kind]
    owner = {"apiVersion": f"{group}/{version}", "kind": job.kind, "name": job.name, "uid": uid}
    try:
        cluster.api("CoreV1Api").patch_namespaced_config_map(
            job.config_map, cluster.namespace, {"metadata": {"ownerReferences": [owner]}})
    except Exception:  # noqa: BLE001 - `launcher cancel` deletes it anyway
        pass


def delete_config_map(cluster: Cluster, name: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        cluster.api("CoreV1Api").delete_namespaced_config_map(name, cluster.namespace)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise api_error(exc, f"deleting ConfigMap {name}", cluster) from None


def find(cluster: Cluster, name: str, kind: str | None = None) -> tuple[str, dict]:
    """(kind, object) of job ``name``: of ``kind``, or whichever of PyTorchJob, TrainJob, Job it is."""
    from kubernetes.client.exceptions import ApiException

    for candidate in [kind] if kind else list(GROUPS):
        group, version, plural = GROUPS[candidate]
        try:
            if candidate == "Job":
                found = cluster.api("BatchV1Api").read_namespaced_job(name, cluster.namespace)
                return candidate, cluster.client.sanitize_for_serialization(found)
            return candidate, cluster.api("CustomObjectsApi").get_namespaced_custom_object(
                group, version, cluster.namespace, plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise api_error(exc, f"reading {candidate} {name}", cluster, candidate) from None
        except Exception as exc:  # noqa: BLE001
            raise api_error(exc, f"reading {name}", cluster) from None
    kinds = kind or "PyTorchJob, TrainJob or Job"
    raise K8sError(f"JOB: no {kinds} named {name} in namespace {cluster.namespace} (finished jobs are deleted "
                   f"after ttl_seconds_after_finished; see "
                   f"`kubectl get pytorchjobs,trainjobs,jobs -n {cluster.namespace}`)")


def pods(cluster: Cluster, kind: str, name: str, rank0: bool = False) -> list[dict]:
    """The job's pods, oldest first (``rank0``: only those of the first node / worker)."""
    label, first = POD_SELECTORS[kind]
    selector = f"{label}={name}" + (f",{first}" if rank0 else "")
    try:
        found = cluster.api("CoreV1Api").list_namespaced_pod(cluster.namespace, label_selector=selector)
    except Exception as exc:  # noqa: BLE001
        raise api_error(exc, f"listing the pods of {name}", cluster) from None
    items = cluster.client.sanitize_for_serialization(found).get("items") or []
    return sorted(items, key=lambda pod: (pod["metadata"].get("creationTimestamp") or "", pod["metadata"]["name"]))


def summary(kind: str, obj: dict, pod_list: list[dict], namespace: str) -> list[str]:
    """Lines for `launcher status`: the job's state and conditions, then one line per pod."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    current = [c for c in conditions if c.get("status") == "True"]
    state = current[-1]["type"] if current else "Pending"
    lines = [f"{kind} {obj['metadata']['name']} (namespace {namespace}): {state}"]
    for condition in conditions:
        text = f"  condition {condition.get('type')}={condition.get('status')}"
        if condition.get("reason"):
            text += f" ({one_line(condition['reason'], 80)})"
        if condition.get("message"):
            text += f": {one_line(condition['message'], 200)}"
        lines.append(text)
    for pod in pod_list:
        status = pod.get("status") or {}
        text = f"  pod {pod['metadata']['name']}: {status.get('phase', '?')}"
        for container in status.get("containerStatuses") or []:
            state_info = container.get("state") or {}
            if state_info.get("waiting"):
                text += f", waiting ({one_line(state_info['waiting'].get('reason', ''), 60)})"
            if state_info.get("terminated"):
                text += f", exit code {state_info['terminated'].get('exitCode')}"
            text += f", restarts {container.get('restartCount', 0)}"
        if (pod.get("spec") or {}).get("nodeName"):
            text += f" on {pod['spec']['nodeName']}"
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                text += f" (unschedulable: {one_line(condition.get('message', ''), 160)})"
        lines.append(text)
    if not pod_list:
        lines.append("  no pods yet")
    return lines


def status(cluster: Cluster, name: str, kind: str | None = None) -> list[str]:
    kind, obj = find(cluster, name, kind)
    return summary(kind, obj, pods(cluster, kind, name), cluster.namespace)


def logs(cluster: Cluster, name: str, follow: bool = False, kind: str | None = None) -> Iterator[str]:
    """The log of the job's rank-0 pod (the newest one, after restarts), streamed with ``follow``."""
    kind, _ = find(cluster, name, kind)
    first = pods(cluster, kind, name, rank0=True)
    if not first:
        raise K8sError(f"JOB: {kind} {name} has no pod yet; `launcher status {name} --backend k8s` says why")
    pod = first[-1]["metadata"]["name"]
    try:
        response = cluster.api("CoreV1Api").read_namespaced_pod_log(
            pod, cluster.namespace, container=CONTAINER[kind], follow=follow, _preload_content=False)
        for chunk in response.stream():
            yield chunk.decode("utf-8", errors="replace")
    except Exception as exc:  # noqa: BLE001
        raise api_error(exc, f"reading the log of pod {pod}", cluster) from None


def cancel(cluster: Cluster, name: str, kind: str | None = None) -> str:
    """Delete the job (its pods go with it) and its ConfigMap; returns the job's kind."""
    kind, _ = find(cluster, name, kind)
    group, version, plural = GROUPS[kind]
    try:
        if kind == "Job":
            cluster.api("BatchV1Api").delete_namespaced_job(name, cluster.namespace, propagation_policy="Background")
        else:
            cluster.api("CustomObjectsApi").delete_namespaced_custom_object(
                group, version, cluster.namespace, plural, name, propagation_policy="Background")
    except Exception as exc:  # noqa: BLE001
        raise api_error(exc, f"deleting {kind} {name}", cluster, kind) from None
    delete_config_map(cluster, f"{name}-config")
    return kind
