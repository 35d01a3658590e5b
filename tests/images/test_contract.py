"""The image and the templates agree: what the Slurm and k8s templates use exists in the Dockerfile.

The shared container contract (code at /opt/ft-recipes, its venv first on PATH, uid/gid 1000,
HF_HOME, RECIPES_CACHE, /outputs) is checked on the Dockerfile itself; then every job the Slurm
template renders with a containerized profile of launcher.yaml, and every k8s manifest or
template in k8s/, is checked against the image model of tests/images/dockerfile.py.
"""

from __future__ import annotations

import dataclasses
import itertools
import re

import pytest
import yaml

from launcher import appspec, images, k8s, options, profiles, recipes, slurm
from tests.images import dockerfile, templates
from tests.images.dockerfile import REPO

TARGETS = sorted(dockerfile.FINAL_STAGES)
IMAGES = {target: dockerfile.image(target) for target in TARGETS}
CONTRACT_ENV = {"HOME": "/home/ft", "HF_HOME": "/cache/huggingface", "RECIPES_CACHE": "/cache/ft-recipes",
                "VIRTUAL_ENV": "/opt/ft-recipes/.venv"}
WORKDIR = "/opt/ft-recipes"
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|API_?KEY|AUTH", re.I)


# ---------------------------------------------------------------------------------------------
# The contract, on the Dockerfile


@pytest.mark.parametrize("target", TARGETS)
def test_code_venv_user_and_writable_dirs(target):
    image = IMAGES[target]
    assert image.workdir == WORKDIR
    assert {k: image.env.get(k) for k in CONTRACT_ENV} == CONTRACT_ENV
    assert image.env["PATH"].startswith(f"{CONTRACT_ENV['VIRTUAL_ENV']}/bin:")
    assert image.user == "1000:1000", "numeric, so Kubernetes' runAsNonRoot can verify it"
    assert any(words[:1] == ["useradd"] and ["--uid", "1000"] == words[1:3] and words[-1] == "ft"
               for words in image.stage.runs())
    for directory in ("/cache/huggingface", "/cache/ft-recipes", "/outputs", "/home/ft"):
        assert image.can_write(directory), f"uid 1000 cannot write {directory}"
    for path in ("recipes", "recipekit", "launcher", "launcher.yaml", "outputs", ".venv/bin/python"):
        assert image.exists(f"{WORKDIR}/{path}"), f"{WORKDIR}/{path} is not in the image"
    for program in ("python", "torchrun", "launcher", "bash"):
        assert image.resolve(program), f"{program} is not on the image's PATH"


@pytest.mark.parametrize("target", TARGETS)
def test_every_recipe_is_in_the_image(target):
    for recipe in recipes.all_recipes():
        for file in (recipe.entry, recipe.config):
            assert IMAGES[target].exists(f"{WORKDIR}/{file.relative_to(REPO).as_posix()}")


@pytest.mark.parametrize("target", TARGETS)
def test_the_embedded_model_is_prepared_at_build_time_by_the_images_user(target):
    stage = IMAGES[target].stage
    keywords = [(i.keyword, i.text) for i in stage.instructions]
    prepare = next(n for n, (keyword, text) in enumerate(keywords)
                   if keyword == "RUN" and text.startswith("launcher models prepare"))
    assert ("USER", "1000:1000") in keywords[:prepare]
    assert any(keyword == "ENV" and "RECIPES_CACHE=" in text for keyword, text in keywords[:prepare])


def test_base_images_are_pinned_by_digest_and_match_the_cuda_version():
    stages = dockerfile.parse()
    for stage in stages.values():
        if stage.base not in stages:
            assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", stage.base), f"{stage.name}: {stage.base}"
    for name in ("cuda-build", "cuda"):
        assert stages[name].base.startswith(f"nvidia/cuda:{images.CUDA}."), "launcher/images.py names this CUDA"
    for name in ("cpu-build", "cpu"):
        assert stages[name].base.startswith("python:3.11-"), "the lock is resolved for Python 3.11"


@pytest.mark.parametrize("target", TARGETS)
def test_labels_carry_version_and_source(target):
    stage = IMAGES[target].stage
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[\w.]+)="([^"]*)"', " ".join(i.text for i in stage.all("LABEL"))))
    assert labels["org.opencontainers.image.version"] == "${VERSION}", "make images passes launcher.__version__"
    for key in ("source", "revision", "created", "title", "licenses", "base.name", "base.digest"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"label org.opencontainers.image.{key} is missing"
    assert stage.base.endswith(labels["org.opencontainers.image.base.digest"])


def test_no_secret_is_baked_in():
    for stage in dockerfile.parse().values():
        for instruction in stage.all("ARG") + stage.all("ENV"):
            names = re.findall(r"(\w+)=", instruction.text) or [instruction.text.split("=")[0]]
            assert not any(SECRET_NAME.search(name) for name in names), f"line {instruction.line}: {instruction.text}"


def test_every_copied_file_reaches_the_build_and_nothing_else_does():
    for stage in dockerfile.parse().values():
        for instruction in stage.all("COPY"):
            words = instruction.words()
            if any(w.startswith("--from") for w in words):
                continue
            for source in [w for w in words if not w.startswith("--")][:-1]:
                assert dockerfile.context_files(source), f"line {instruction.line}: {source} is not in the build context"
    for private in (".venv/bin/python", "outputs/demo/metrics.json", ".git/config", "tests/conftest.py",
                    "recipes/sft/__pycache__/train.cpython-311.pyc"):
        assert not dockerfile.in_context(private), f"{private} would be sent to the engine"


# ---------------------------------------------------------------------------------------------
# Slurm


def placeholder(*args) -> str:
    """A stand-in for the recipe's --check: the config does not matter here."""
    return "placeholder: true\n"


def shape(recipe: recipes.Recipe, gpus: int = 4) -> dict[str, int]:
    return dict(workers=2, gpus_per_node=min(gpus, 1)) if recipe.is_search else dict(nodes=2, gpus_per_node=gpus)


def containerized_profiles() -> list[profiles.Profile]:
    _, found = profiles.available([profiles.REPO_FILE])
    return [p for p in found.values() if p.get("container", "none") != "none"]


def slurm_job(recipe: recipes.Recipe, profile: profiles.Profile) -> slurm.SlurmRequest:
    backend = slurm.SlurmBackend()
    app, opts, _ = appspec.plan(backend, profile, recipe, resolve=placeholder, **shape(recipe))
    return backend.dryrun(app, opts)


def rendered_jobs() -> dict[str, str]:
    """Every recipe as the Slurm template renders it with each containerized profile of launcher.yaml."""
    return {f"{recipe.name} with profile {profile.name}": slurm_job(recipe, profile).text
            for profile in containerized_profiles() for recipe in recipes.all_recipes()}


def test_launcher_yaml_has_containerized_profiles():
    assert containerized_profiles(), "nothing would check the Slurm side"


@pytest.mark.parametrize("target", TARGETS)
def test_slurm_jobs_find_what_they_use_in_the_image(target):
    problems = [f"{job}: {problem}" for job, script in rendered_jobs().items()
                for problem in templates.slurm_problems(script, IMAGES[target])]
    assert problems == []


def test_slurm_check_catches_a_job_the_image_cannot_run():
    job = slurm_job(recipes.load("sft"), containerized_profiles()[0])
    image = IMAGES["cuda"]
    assert templates.slurm_problems(job.text, image) == []

    def problems(app=job.app, opts=job.opts) -> list[str]:
        return templates.slurm_problems(slurm.SlurmBackend().dryrun(app, opts).text, image)

    assert any("/srv/code" in problem for problem in problems(opts=dataclasses.replace(job.opts, workdir="/srv/code")))
    gone = recipes.Recipe("gone", REPO / "recipes" / "gone", REPO / "recipes" / "gone" / "train.py",
                          REPO / "recipes" / "gone" / "config.yaml")
    assert any("recipes/gone/train.py" in problem for problem in problems(dataclasses.replace(job.app, recipe=gone)))
    for env in ({"HF_HOME": "/opt/ft-recipes/hf"}, {"HF_HOME": "/cache/huggingface"}, {}):
        unwritable = dataclasses.replace(job.app, env=env)  # with apptainer, even the image's own HF_HOME is read-only
        assert any("HF_HOME" in problem for problem in problems(unwritable))


# ---------------------------------------------------------------------------------------------
# Kubernetes (k8s/: rendered manifests and the Jinja templates they come from)

K8S = REPO / "k8s"
MANIFESTS = sorted(p for ext in ("*.yaml", "*.yml") for p in K8S.rglob(ext))
K8S_TEMPLATES = sorted(K8S.rglob("*.j2"))


def k8s_profiles() -> list[profiles.Profile]:
    """The built-in defaults, and every profile of launcher.yaml that sets a key only Kubernetes reads."""
    _, found = profiles.available([profiles.REPO_FILE])
    k8s_only = set(options.profile_keys(k8s.K8sOptions)) - set(options.profile_keys(slurm.SlurmOptions))
    return [profiles.Profile(), *(p for p in found.values() if k8s_only & set(p.settings))]


def rendered_manifests() -> dict[str, list[dict]]:
    """Every recipe as launcher.k8s renders it, with each API and profile, on GPUs and on CPUs."""
    backend = k8s.K8sBackend(suffix=lambda base: "abcde")
    found = {}
    for recipe, api, profile, gpus in itertools.product(recipes.all_recipes(), k8s.APIS, k8s_profiles(), (4, 0)):
        app, opts, _ = appspec.plan(backend, profile, recipe, {"api": api}, resolve=placeholder, **shape(recipe, gpus))
        found[f"{recipe.name} ({api}, profile {profile.name}, {gpus} GPUs)"] = backend.dryrun(app, opts).objects
    return found


def test_k8s_jobs_find_what_they_use_in_the_image():
    problems, checked = [], 0
    for job, documents in rendered_manifests().items():
        for document in documents:
            checked += len(templates.containers(document))
            problems += [f"{job}: {p}" for p in templates.k8s_problems(document, IMAGES)]
    assert problems == []
    assert checked, "no container of the project's image in the rendered manifests"


def test_k8s_manifests_find_what_they_use_in_the_image():
    if not MANIFESTS:
        pytest.skip("k8s/ holds no rendered manifests yet")
    problems, checked = [], 0
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            checked += len(templates.containers(document))
            problems += [f"{path.relative_to(REPO)}: {p}" for p in templates.k8s_problems(document, IMAGES)]
    assert problems == []
    assert checked, "no container of the project's image found in k8s/ manifests"


@pytest.mark.parametrize("target", TARGETS)
def test_k8s_templates_use_only_what_the_image_has(target):
    if not K8S_TEMPLATES:
        pytest.skip("k8s/ holds no templates yet")
    problems = [f"{path.relative_to(REPO)}: {p}" for path in K8S_TEMPLATES
                for p in templates.k8s_template_problems(path.read_text(encoding="utf-8"), IMAGES[target])]
    assert problems == []


PYTORCHJOB = f"""
apiVersion: kubeflow.org/v1
kind: PyTorchJob
metadata: {{name: sft}}
spec:
  nprocPerNode: "4"
  pytorchReplicaSpecs:
    Master:
      replicas: 1
      template:
        spec:
          securityContext: {{runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000, runAsNonRoot: true}}
          containers:
            - name: pytorch
              image: {images.default_image("cuda")}
              workingDir: /opt/ft-recipes
              command: [torchrun]
              args: [recipes/sft/train.py, --config, /etc/ft-recipes/config.yaml, --set, "output_dir=/outputs/sft"]
              env:
                - {{name: HF_HOME, value: /cache/huggingface}}
                - {{name: NCCL_DEBUG, value: WARN}}
              volumeMounts:
                - {{name: config, mountPath: /etc/ft-recipes, readOnly: true}}
                - {{name: outputs, mountPath: /outputs}}
"""


@pytest.mark.parametrize("change, expected", [
    (lambda c: c.update(workingDir="/app"), "workingDir /app"),
    (lambda c: c.update(command=["deepspeed-launch"]), "program deepspeed-launch"),
    (lambda c: c.update(command=["python", "-m", "launcher.gone"]), "module launcher/gone.py"),
    (lambda c: c["args"].__setitem__(0, "recipes/nope/train.py"), "script recipes/nope/train.py"),
    (lambda c: c.update(volumeMounts=[]), "path /etc/ft-recipes/config.yaml"),
    (lambda c: c["env"].append({"name": "RECIPES_CACHE", "value": "/opt/ft-recipes/cache"}), "env RECIPES_CACHE"),
    (lambda c: c["args"].append("$(OUTPUT_ROOT)"), "$(OUTPUT_ROOT)"),
    (lambda c: c.update(image=f"{images.REGISTRY}/{images.NAME}:latest"), "is not one `make images` builds"),
    (lambda c: c.update(securityContext={"runAsUser": 0}), "securityContext.runAsUser: 0"),
])
def test_k8s_check_catches_a_manifest_the_image_cannot_run(change, expected):
    document = yaml.safe_load(PYTORCHJOB)
    assert templates.k8s_problems(document, IMAGES) == []
    change(document["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0])
    problems = templates.k8s_problems(document, IMAGES)
    assert any(expected in problem for problem in problems), problems


def test_k8s_template_check_reads_literal_paths_users_and_variables():
    good = "workingDir: /opt/ft-recipes\nmountPath: /etc/ft-recipes\nargs: [--config, /etc/ft-recipes/config.yaml]\n" \
           "runAsUser: 1000\n- name: JOB_DIR\n  value: /outputs/{{ spec.job_name }}\nargs: [$(JOB_DIR)]\n"
    assert templates.k8s_template_problems(good, IMAGES["cuda"]) == []
    bad = good.replace("workingDir: /opt/ft-recipes", "workingDir: /opt/code").replace("1000", "0") + "$(UNSET)\n"
    problems = templates.k8s_template_problems(bad, IMAGES["cuda"])
    assert len(problems) == 4, problems  # workingDir, the /opt/code path, runAsUser, $(UNSET)
