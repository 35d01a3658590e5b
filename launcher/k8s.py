"""The Kubernetes backend: AppSpec + K8sOptions -> K8sJob -> manifests (the dry-run request) -> API server.

``K8sJob`` is the object model of one job: its kind, names, labels, command, env and resources.
``render`` is pure and turns it into a multi-document YAML from the templates in ``k8s/``: a
ConfigMap with the resolved config, then

- a Kubeflow ``PyTorchJob`` (``kubeflow.org/v1``, Training Operator) for a training recipe,
- a Kubeflow Trainer v2 ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``) with ``--api trainjob``,
- an indexed ``batch/v1`` Job of independent workers for a search recipe.

Every value reaches the YAML through a YAML dumper (the ``yaml`` and ``yaml_block`` filters), never
pasted into it. ``K8sBackend`` submits, finds and deletes jobs through launcher/k8s_client.py.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import secrets as random_source
import string
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import jinja2
import yaml

from launcher import images, k8s_client, k8s_fields
from launcher.appspec import AppSpec, check_config_text
from launcher.checks import (absolute, check_cpus, check_retries, check_int, check_path, check_time, int_from, one_of, optional_count,
                             shown, time_seconds)
from launcher.errors import FieldError
from launcher.options import option
from launcher.recipes import REPO_ROOT

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
CONFIG_MAX_BYTES = 1024 * 1024 - 4096    # a ConfigMap holds at most 1 MiB
RUNTIME = "ft-recipes-torch"             # k8s/runtime.yaml: torch-distributed with the exit-code contract
PATCH_MANAGER = "ft-recipes/launcher"    # TrainJob runtimePatches entries are keyed by their manager
SECRET_ENV = {"hf_token_secret": "HF_TOKEN", "wandb_secret": "WANDB_API_KEY"}
OWN_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component")
HEADER = "a comment of the manifests"


# ---------------------------------------------------------------------------------------------
# The options: each key checked once, where it comes in (a profile file or the command line)


def optional(check: Callable[..., Any]) -> Callable[[str, Any], Any]:
    """``check`` for a key that may be left out (None)."""
    return lambda name, value: None if value is None else check(name, value)


def check_secret(env_name: str) -> Callable[[str, Any], Any]:
    """A ``SECRET[:KEY]`` reference for env ``env_name`` (the key defaults to it)."""
    def check(name: str, value: Any) -> str | None:
        if value is not None:
            k8s_fields.check_secret_ref(name, value, env_name)
        return value
    return check


def check_queue(name: str, value: Any) -> str | None:
    """A Kueue LocalQueue name, which is also a label value."""
    if value is None:
        return None
    return k8s_fields.check_label_value(name, k8s_fields.check_dns1123_subdomain(name, value, max_length=63))


@dataclass(frozen=True)
class K8sOptions:
    """Where and how a job runs on Kubernetes (profile keys and command-line options of the same names).

    A key a profile leaves empty (null) keeps its default.
    """

    api: str = option("pytorchjob", check=one_of(APIS), in_profile=False)
    time: str | None = option(check=check_time)                # the job's deadline (activeDeadlineSeconds)
    cpus_per_task: int | None = option(check=check_cpus)       # the pods' CPU request
    namespace: str | None = option(check=optional(k8s_fields.check_dns1123_label))  # None: the context's
    pvc: str = option("ft-recipes-outputs", check=optional(k8s_fields.check_dns1123_subdomain))  # at /outputs
    node_selector: dict[str, str] = option({}, check=optional(k8s_fields.check_labels), merge=True)
    tolerations: tuple[dict, ...] = option((), check=optional(k8s_fields.check_tolerations))
    priority_class: str | None = option(check=optional(k8s_fields.check_dns1123_subdomain))
    kueue_queue: str | None = option(check=check_queue)       # the kueue.x-k8s.io/queue-name label
    labels: dict[str, str] = option({}, check=optional(k8s_fields.check_labels), merge=True)
    annotations: dict[str, str] = option({}, check=optional(k8s_fields.check_annotations), merge=True)
    service_account: str | None = option(check=optional(k8s_fields.check_dns1123_subdomain))
    hf_token_secret: str | None = option(check=check_secret("HF_TOKEN"))     # SECRET[:KEY] -> env HF_TOKEN
    wandb_secret: str | None = option(check=check_secret("WANDB_API_KEY"))   # SECRET[:KEY] -> env WANDB_API_KEY
    secret_env: dict[str, str] = option({}, check=optional(k8s_fields.check_secret_env), merge=True)  # ENV: SECRET
    max_retries: int = option(3, check=check_retries)  # restarts after failures (killed, ranks lost)
    max_continuations: int | None = option(check=optional_count)  # restarts after a preemption (SIGTERM)
    grace_period: int = option(120, check=optional(int_from(10, 86400)))  # SIGTERM -> checkpoint -> exit 143
    ttl_seconds_after_finished: int = option(7 * 24 * 3600, check=optional(int_from(0, 2**31 - 1)))  # then deleted
    clean_pod_policy: str = option("Running", check=optional(one_of(k8s_fields.CLEAN_POD_POLICIES)))
    memory: str | None = option(check=optional(k8s_fields.check_quantity))  # each pod's request and limit
    training_runtime: str = option(RUNTIME, check=optional(k8s_fields.check_dns1123_subdomain))

    def __post_init__(self):
        clash = sorted(set(self.labels) & set(OWN_LABELS))
        if clash:
            raise FieldError("labels", f"{clash[0]} is set by the launcher itself")
        if self.api == "trainjob" and self.priority_class is not None:
            raise FieldError("priority_class", "a TrainJob cannot set the pods' priorityClassName (Trainer v2 does "
                                               "not patch it); use a Kueue WorkloadPriorityClass label instead")
        for key, env_name in SECRET_ENV.items():
            if getattr(self, key) is not None and env_name in self.secret_env:
                raise FieldError(key, f"{env_name} is also given in secret_env; set it in one place")
        if self.deadline is not None:
            check_int("time", self.deadline, 1, 2**31 - 1)

    @property
    def deadline(self) -> int | None:
        """``time`` in seconds: the job's activeDeadlineSeconds."""
        return (time_seconds(self.time) or None) if self.time is not None else None

    @property
    def secrets(self) -> dict[str, str]:
        """Every env var read from a Secret: ENV_NAME -> SECRET[:KEY]."""
        found = dict(self.secret_env)
        for key, env_name in SECRET_ENV.items():
            if getattr(self, key) is not None:
                found[env_name] = getattr(self, key)
        return found


# ---------------------------------------------------------------------------------------------
# The object model of one job


@dataclass(frozen=True)
class K8sJob:
    """One recipe job on Kubernetes: the AppSpec (placed by K8sBackend.place) and the options."""

    app: AppSpec
    opts: K8sOptions

    @property
    def name(self) -> str:
        """A DNS-1035 label, also the output dir's name under /outputs."""
        return self.app.job_name

    @property
    def kind(self) -> str:
        if self.opts.api == "trainjob":
            return "TrainJob"
        return "Job" if self.app.is_search else "PyTorchJob"

    @property
    def config_map(self) -> str:
        return f"{self.name}-config"

    @property
    def own_labels(self) -> dict[str, str]:
        """The labels every object of the job carries (`kubectl get all -l app.kubernetes.io/instance=JOB`)."""
        values = ("ft-recipes", self.name, k8s_fields.dns1035(self.app.recipe.name, 63) or "recipe")
        return dict(zip(OWN_LABELS, values))

    @property
    def job_labels(self) -> dict[str, str]:
        labels = {**self.own_labels, **self.opts.labels}
        if self.opts.kueue_queue:
            labels["kueue.x-k8s.io/queue-name"] = self.opts.kueue_queue
        return labels

    @property
    def pod_labels(self) -> dict[str, str]:
        return {**self.own_labels, **self.opts.labels}

    @property
    def command(self) -> list[str]:
        """The container's command. Training: torchrun under an exit-code keeper (launcher.keeper.py),
        which takes the rendezvous from the operator's PET_* env like plain torchrun; search: python."""
        if self.app.is_search:
            return ["python", self.app.entry, "--config", CONFIG_FILE]
        return ["python", "-m", "launcher.keeper", self.app.entry, "--config", CONFIG_FILE]

    @property
    def env(self) -> list[dict[str, Any]]:
        """The container's env vars: plain ones, then those read from Secrets (by name, never by value)."""
        found: list[dict[str, Any]] = []
        if not self.app.is_search:
            found.append({"name": "PET_RDZV_CONF", "value": f"timeout={RDZV_TIMEOUT}"})
            found += [{"name": key, "value": value} for key, value in self.attempts_env.items()]
        found += [{"name": key, "value": value} for key, value in sorted(self.app.env.items())]
        for key, ref in sorted(self.opts.secrets.items()):
            secret, secret_key = k8s_fields.secret_ref(ref, key)
            found.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": secret_key}}})
        return found

    @property
    def attempts_env(self) -> dict[str, str]:
        """What the keeper needs to count this job's attempts on the PVC and end its retries
        (launcher/attempts.py): a recreated pod is a new process that only the PVC remembers."""
        found = {"FT_JOB_DIR": self.app.output_dir, "FT_MAX_RETRIES": str(self.opts.max_retries),
                 "FT_RECORD_ATTEMPTS": "1", "FT_OUTPUTS_PVC": self.opts.pvc}
        if self.opts.max_continuations is not None:
            found["FT_MAX_CONTINUATIONS"] = str(self.opts.max_continuations)
        return found

    @property
    def resources(self) -> dict[str, dict[str, str]]:
        limits, requests = {}, {}
        if self.app.gpus_per_node:
            limits["nvidia.com/gpu"] = str(self.app.gpus_per_node)
        if self.opts.cpus_per_task:
            requests["cpu"] = str(self.opts.cpus_per_task)
        if self.opts.memory:
            requests["memory"] = limits["memory"] = self.opts.memory
        return {k: v for k, v in (("limits", limits), ("requests", requests)) if v}

    @property
    def replicas(self) -> int:
        """Pods: nodes of a training job, workers of a search."""
        return self.app.workers if self.app.is_search else self.app.nodes


def random_suffix(base: str = "") -> str:
    return "".join(random_source.choice(string.ascii_lowercase + string.digits) for _ in range(SUFFIX_LENGTH))


def job_name(base: str, suffix: str) -> str:
    """``<base>-<suffix>``, the base made DNS-1035 safe and short enough for the pods' names."""
    if not re.fullmatch(rf"[a-z0-9]{{{SUFFIX_LENGTH}}}", suffix):
        raise FieldError("job_name", f"the suffix must be {SUFFIX_LENGTH} lower-case letters or digits")
    return f"{k8s_fields.dns1035(base, BASE_MAX) or 'job'}-{suffix}"


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
    env.globals.update(uid=USER_ID, workdir=WORKDIR, config_dir=CONFIG_DIR,
                       outputs=OUTPUTS, master_port=MASTER_PORT, patch_manager=PATCH_MANAGER,
                       permanent_exit_codes=list(range(1, 128)))
    return env


TEMPLATE = {"PyTorchJob": "pytorchjob.yaml.j2", "TrainJob": "trainjob.yaml.j2", "Job": "job.yaml.j2"}


def header(job: K8sJob) -> str:
    """Comment lines: only values validated to a safe character set (names and numbers) appear."""
    app = job.app
    shape = (f"{job.replicas} worker pod(s)" if app.is_search
             else f"{app.nodes} pod(s) x {app.nproc_per_node} process(es)")
    return (f"# {app.recipe.name} on Kubernetes: a {job.kind}, {shape}, profile {app.profile}.\n"
            f"# Written by `launcher render --backend k8s`; submit with `launcher submit` (same options) or\n"
            f"# `kubectl apply -f` this file. Outputs and checkpoints: {app.output_dir} on PVC {job.opts.pvc}.\n")


def render(job: K8sJob) -> str:
    """The manifests for ``job``: the ConfigMap, then the job, as one multi-document YAML."""
    if len(check_config_text(job.app.config_text).encode("utf-8")) > CONFIG_MAX_BYTES:
        raise FieldError("config", "the resolved config is larger than a ConfigMap can hold (1 MiB)")
    env = environment()
    documents = [env.get_template("configmap.yaml.j2").render(job=job),
                 env.get_template(TEMPLATE[job.kind]).render(job=job)]
    return header(job) + "---\n".join(documents)


def manifests(text: str) -> list[dict]:
    """The objects in rendered YAML, in order."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: the same YAML, faster
    return [doc for doc in yaml.load_all(text, Loader=loader) if doc is not None]


# ---------------------------------------------------------------------------------------------
# The backend


@dataclass(frozen=True)
class K8sRequest:
    """The manifests of one job, as rendered."""

    job: K8sJob
    text: str

    @property
    def objects(self) -> list[dict]:
        return manifests(self.text)


class K8sBackend:
    """Kubernetes with Kubeflow: a PyTorchJob, a TrainJob or an indexed Job per job, and its ConfigMap.

    ``suffix(base)`` gives the 5 characters that make a job's name unique (random by default).
    """

    name = "k8s"
    Options = K8sOptions
    reads = frozenset(f.name for f in dataclasses.fields(K8sOptions)) | {"context", "dry_run_server"}
    refusals = {"preempt": "only used with --backend {owner} (on Kubernetes, `kubectl delete pod` of one of the "
                           "job's pods makes it checkpoint and restart)"}

    def __init__(self, suffix: Callable[[str], str] = random_suffix):
        self.suffix = suffix

    def place(self, draft: AppSpec, opts: K8sOptions) -> tuple[AppSpec, list[str]]:
        """A unique DNS name; outputs on the PVC at /outputs/<name>; the project's image by default.

        A search recipe runs one worker per pod; there ``--nodes N`` means N worker pods, like
        ``--workers N``.
        """
        name = job_name(draft.job_name, self.suffix(draft.job_name))
        if draft.output_dir is None:
            output_dir = f"{OUTPUTS}/{name}"
        elif draft.output_dir.startswith(OUTPUTS + "/") and "/../" not in draft.output_dir + "/":
            output_dir = check_path("output_dir", absolute(draft.output_dir), HEADER)
        else:
            raise FieldError("output_dir", f"on Kubernetes outputs live on the PVC mounted at {OUTPUTS}: give "
                                           f"{OUTPUTS}/<dir> (e.g. a failed job's dir to resume it), "
                                           f"got {shown(draft.output_dir)}")
        nodes, workers, notes = draft.nodes, draft.workers, []
        if draft.is_search and nodes > 1 and workers == 1:
            notes.append(f"note: {draft.recipe.name} is a search recipe: --nodes {nodes} runs {nodes} worker pods "
                         f"sharing one study (as --workers {nodes}); each worker is one process")
            nodes, workers = 1, nodes
        image = draft.image if draft.image is not None else images.default_image("cuda" if draft.gpus_per_node
                                                                                   else "cpu")
        k8s_fields.check_image("image", image)
        k8s_fields.check_k8s_env("env", draft.env)
        both = sorted(set(draft.env) & set(opts.secrets))
        if both:
            raise FieldError("env", f"{both[0]} is also read from a Secret (secret_env); set it in one place")
        return dataclasses.replace(draft, job_name=name, output_dir=output_dir, nodes=nodes, workers=workers,
                                   image=image), notes

    def dryrun(self, app: AppSpec, opts: K8sOptions) -> K8sRequest:
        job = K8sJob(app, opts)
        return K8sRequest(job, render(job))

    def dry_run_summary(self, request: K8sRequest) -> str:
        job = request.job
        return (f"dry run: would create ConfigMap {job.config_map} and {job.kind} {job.name} "
                f"(in namespace {job.opts.namespace or 'of the kubeconfig context'})")

    def submit(self, request: K8sRequest, context: str | None = None, dry_run_server: bool = False) -> list[str]:
        """Create the ConfigMap and the job (``dry_run_server``: the API server checks them, creates nothing)."""
        job = request.job
        cluster = k8s_client.connect(job.opts.namespace, context)
        k8s_client.submit(cluster, request.objects, job.opts.pvc, dry_run=dry_run_server)
        if dry_run_server:
            return [f"dry run (server): the API server accepted ConfigMap {job.config_map} and {job.kind} "
                    f"{job.name} in namespace {cluster.namespace}; nothing was created"]
        where = f"{job.name} --backend k8s -n {cluster.namespace}"
        return [f"submitted {job.kind} {job.name} in namespace {cluster.namespace}",
                f"outputs: {job.app.output_dir} on PVC {job.opts.pvc}",
                f"follow:  launcher logs {where} --follow   (status: launcher status {where}, "
                f"cancel: launcher cancel {where})"]

    def connect(self, job: str, namespace: str | None, context: str | None):
        """The connection for job ``job``, its name checked first, so a bad one never reaches the API."""
        k8s_fields.check_job_name("JOB", job, 63)
        if namespace is not None:
            k8s_fields.check_dns1123_label("namespace", namespace)
        return k8s_client.connect(namespace, context)

    def status(self, job: str, namespace: str | None = None, context: str | None = None) -> list[str]:
        return k8s_client.status(self.connect(job, namespace, context), job)

    def logs(self, job: str, follow: bool = False, namespace: str | None = None,
             context: str | None = None) -> Iterator[str]:
        yield from k8s_client.logs(self.connect(job, namespace, context), job, follow=follow)

    def cancel(self, job: str, namespace: str | None = None, context: str | None = None) -> str:
        """Delete the job (its pods go with it) and its ConfigMap; outputs stay on the PVC."""
        cluster = self.connect(job, namespace, context)
        kind = k8s_client.cancel(cluster, job)
        return f"deleted {kind} {job} and ConfigMap {job}-config in namespace {cluster.namespace}"
