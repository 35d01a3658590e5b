"""(d) Hostile values never bend the manifests: generated cases (hypothesis), about 1,300 in all.

Every user value that reaches the templates in k8s/ (job name, namespace, image, PVC, labels,
annotations, node selector, tolerations, priority class, Kueue queue, service account, Secret
references, env names and values, the resolved config, the runtime's name, memory) is drawn
from newlines, quotes, `{{`, `{%`, YAML indicators (`: `, `- `, `#`, `&`, `*`, `!`, `|`, `>`),
`---`, unicode (line and paragraph separators, NEL, BOM, emoji, accents) and 300-character
names. For each case the value is either refused with a FieldError that names its field in one
line, or the rendered YAML parses into exactly the two expected objects holding the value
literally where it belongs, with no other document, key or comment. Each case goes the way of
`launcher render`, through `appspec.plan` and the backend's dry run, with a stand-in for the
recipe's `--check` that returns the generated config, so the cases run in seconds. Every 25th
rendered case also goes through the full cluster validation of tests/k8s/validation.py.
"""

from __future__ import annotations

import collections
import itertools

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from launcher import appspec, cli, k8s, k8s_fields, recipes
from launcher.errors import FieldError
from launcher.profiles import Profile
from tests.k8s import validation

BACKEND = k8s.K8sBackend(suffix=lambda base: "h0st1")

NASTY = ["\n", "\r", "'", '"', "\\", "{{", "}}", "{%", "%}", "{#", ": ", "- ", "#", "&", "*", "!", "|", ">", "%", "@",
         "`", "---", "...", "[", "]", "{", "}", ",", "?", " ", "\t", "é", "\u2028", "\u2029", "\x85", "\ufeff", "😀",
         "ß", "/", ".", "-", "_", "=", ":"]
SNIPPETS = ["{{ job.name }}", "{% if true %}x{% endif %}", "\n---\nkind: Secret\n", "a: b", "- x", "!!python/object",
            "&anchor", "*alias", "yes", "null", "1e3", "0x1F", "~", '"; rm -rf /; "', "\nmetadata:\n  name: x"]
hostile = st.one_of(
    st.lists(st.sampled_from(NASTY + list("abcXYZ019")), max_size=16).map("".join),
    st.lists(st.sampled_from(SNIPPETS + NASTY), max_size=4).map("".join),
    st.text(max_size=16),
    st.lists(st.sampled_from(list("abc-.9") + NASTY), min_size=1, max_size=6).map(
        lambda parts: ("".join(parts) * 300)[:300]),  # 300-character values
)


def config_text(values: dict) -> str:
    """A resolved config as the recipes print it (recipekit.config.dump_yaml uses safe_dump)."""
    return yaml.safe_dump(values, sort_keys=False, allow_unicode=True, width=100)


SAFE = dict(image="ghcr.io/org/img:1.0", namespace="ml", pvc="outputs", labels={"team": "nlp"},
            node_selector={"gpu": "h100"}, tolerations=({"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},),
            priority_class="high", kueue_queue="queue", service_account="trainer", secret_env={"HF_TOKEN": "hf:token"},
            memory="64Gi", training_runtime="torch-distributed")
# Where a hostile value goes: one validated field per case (the others stay valid, so a case that
# is not refused is rendered), besides the free-text ones that are always hostile.
TARGETS = {
    "job_name": hostile, "image": hostile, "namespace": hostile, "pvc": hostile,
    "labels": st.dictionaries(hostile, hostile, min_size=1, max_size=2),
    "label_value": hostile, "annotation_key": hostile, "node_selector": st.dictionaries(hostile, hostile, min_size=1),
    "tolerations": st.lists(st.fixed_dictionaries({"key": hostile, "operator": st.sampled_from(["Exists", "Equal"]),
                                                   "value": hostile, "effect": hostile}), min_size=1, max_size=2),
    "priority_class": hostile, "kueue_queue": hostile, "service_account": hostile,
    "secret_env": st.dictionaries(hostile, hostile, min_size=1, max_size=2), "secret_name": hostile,
    "memory": hostile, "training_runtime": hostile, "env_name": hostile,
}


FREE_TEXT = "free text only"


@st.composite
def jobs(draw):
    """(the job's shape and config, its command-line options, the field made hostile)."""
    target = draw(st.sampled_from(sorted(TARGETS) + [FREE_TEXT] * 14))  # ~45%: only the free-text fields
    value = draw(TARGETS[target]) if target != FREE_TEXT else None
    env = {"NCCL_DEBUG": draw(hostile), **({value: "x"} if target == "env_name" else {})}
    text = draw(st.one_of(
        st.dictionaries(hostile, st.one_of(hostile, st.integers(), st.none()), min_size=1, max_size=3).map(config_text),
        hostile.map(lambda t: t + "\n")))
    search = draw(st.booleans())
    gpus = draw(st.integers(0, 8))
    job = dict(recipe="optuna" if search else "sft", config_text=text, gpus_per_node=gpus,
               job_name=value if target == "job_name" else "sft",
               **{"workers" if search else "nodes": draw(st.integers(1, 3))})
    options = dict(SAFE, env=env, api=draw(st.sampled_from(k8s.APIS)), annotations={"note": draw(hostile)})
    if options["api"] == "trainjob":
        options["priority_class"] = None
    if target in options:
        options[target] = tuple(value) if target == "tolerations" else value
    elif target == "label_value":
        options["labels"] = {"team": value}
    elif target == "annotation_key":
        options["annotations"] = {value: "x"}
    elif target == "secret_name":
        options["secret_env"] = {"WANDB_API_KEY": value}
    return job, options, target


FIELDS = {"recipe", "overrides", "config", "job_name", "output_dir", "workdir", "env", "api", "image",
          "namespace", "pvc", "labels", "annotations", "node_selector", "tolerations", "priority_class", "kueue_queue",
          "service_account", "secret_env", "memory", "training_runtime", "nodes", "workers", "gpus_per_node",
          "nproc_per_node"}
rendered_cases = itertools.count()
refused, rendered = collections.Counter(), collections.Counter()


def pod_containers(job: dict) -> tuple[dict, list[dict]]:
    """(pod spec, containers) of the first pod template, for each kind."""
    if job["kind"] == "PyTorchJob":
        spec = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    elif job["kind"] == "Job":
        spec = job["spec"]["template"]["spec"]
    else:
        patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
        spec = patch["template"]["spec"]["template"]["spec"]
    return spec, spec["containers"]


@settings(max_examples=1100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(jobs())
def test_hostile_values_are_refused_or_rendered_literally(case):
    job_fields, fields, target = case
    config = job_fields.pop("config_text")
    try:
        app, opts, _ = appspec.plan(BACKEND, Profile(), recipes.load(job_fields.pop("recipe")), fields,
                                    resolve=lambda *args: config, **job_fields)
        request = BACKEND.dryrun(app, opts)
    except FieldError as exc:
        assert exc.field.split(".")[0] in FIELDS, exc.field
        refused[target] += 1
        assert "\n" not in str(exc) and len(str(exc)) < 600
        return
    rendered[target] += 1
    job, text = request.job, request.text
    header, _, body = text.partition("apiVersion: v1\n")
    assert [line[:1] for line in header.splitlines()] == ["#"] * 3  # the comment block holds no value
    documents = k8s.manifests(text)
    assert [d["kind"] for d in documents] == ["ConfigMap", job.kind]
    config_map, obj = documents
    assert config_map["data"] == {"config.yaml": config}
    for document in documents:
        assert document["metadata"]["name"] in (job.name, job.config_map)
        assert document["metadata"].get("namespace") == fields["namespace"]
        assert document["metadata"]["labels"] == (job.pod_labels if document is config_map else job.job_labels)
    assert obj["metadata"].get("annotations", {}) == fields["annotations"]
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    spec, containers = pod_containers(obj)
    assert spec.get("nodeSelector", {}) == fields["node_selector"]
    assert tuple(spec.get("tolerations", ())) == fields["tolerations"]
    assert spec.get("serviceAccountName") == fields["service_account"]
    assert spec.get("priorityClassName") == fields["priority_class"]
    assert {v["name"]: v for v in spec["volumes"]}["outputs"]["persistentVolumeClaim"] == {"claimName": fields["pvc"]}
    trainer = obj["spec"].get("trainer", containers[0])
    env = {var["name"]: var for var in trainer.get("env", [])}
    assert {k: env[k]["value"] for k in fields["env"]} == fields["env"]
    for name, ref in fields["secret_env"].items():
        secret, _, key = ref.partition(":")
        assert env[name]["valueFrom"] == {"secretKeyRef": {"name": secret, "key": key or name}}
    assert trainer["image"] == fields["image"]
    assert obj["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") == fields["kueue_queue"]
    if job.kind == "TrainJob":
        assert obj["spec"]["runtimeRef"] == {"name": fields["training_runtime"]}
    if fields["memory"]:
        assert trainer.get("resources", trainer.get("resourcesPerNode"))["limits"]["memory"] == fields["memory"]
    if next(rendered_cases) % 25 == 0:
        assert validation.problems(obj) == [] and validation.problems(config_map) == []


@settings(max_examples=150, deadline=None)
@given(hostile)
def test_any_name_becomes_a_valid_job_name(base):
    name = k8s.job_name(base, "z9z9z")
    assert k8s_fields.DNS1035_LABEL.fullmatch(name) and len(name) <= k8s.NAME_MAX
    assert name.endswith("-z9z9z")


@pytest.mark.parametrize("option, value", [
    ("--namespace", "ml\nkind: Secret"), ("--pvc", "{{ job.name }}"), ("--label", "team=a: b"),
    ("--label", "a" * 300 + "=x"), ("--annotation", "bad key=x"), ("--node-selector", "gpu=\u2028"),
    ("--image", "img\n  privileged: true"), ("--hf-token-secret", "Secret Name"), ("--secret-env", "PET_NNODES=s"),
    ("--secret-env", "X=s:k/ey"), ("--memory", "1e3"), ("--kueue-queue", "q" * 64), ("--env", "WORLD_SIZE=8"),
    ("--service-account", "-sa"), ("--priority-class", "High"), ("--training-runtime", "a..b"),
])
def test_a_hostile_option_is_one_line_naming_it(option, value):
    result = CliRunner().invoke(cli.main, ["render", "recipes/sft", "--backend", "k8s", option, value])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: {option}") and "Traceback" not in result.output
