"""What the Slurm and k8s templates expect of the image, compared with the image (tests/images/dockerfile.py).

Each ``*_problems`` function returns one line per thing a template uses that the image lacks:
a working directory, a program, a script or other path, an environment variable, the user.
Paths a template mounts into the container (bind mounts, volumeMounts) count as present.
"""

from __future__ import annotations

import posixpath
import re
import shlex

from launcher import images
from tests.images.dockerfile import Image

# Variables the schedulers set for every job: Slurm's, and those Kubeflow's PyTorchJob/TrainJob inject.
SCHEDULER_ENV = re.compile(r"SLURM_\w+|PET_\w+|MASTER_ADDR|MASTER_PORT|WORLD_SIZE|RANK|LOCAL_RANK|POD_NAME|HOSTNAME")
# Variables naming a directory the job writes to: the image or a mount must make it writable.
WRITTEN_DIRS = {"HOME", "HF_HOME", "HF_DATASETS_CACHE", "RECIPES_CACHE", "TORCH_EXTENSIONS_DIR", "TRITON_CACHE_DIR",
                "XDG_CACHE_HOME", "MPLCONFIGDIR", "TMPDIR"}
SHELL_REF = re.compile(r"\$\{?([A-Za-z_]\w*)")
K8S_REF = re.compile(r"\$\((\w+)\)")
IMAGE_UID = 1000


def under(path: str, roots: set[str]) -> bool:
    path = posixpath.normpath(path)
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in map(posixpath.normpath, roots))


def path_problem(what: str, path: str, workdir: str, image: Image, mounts: set[str]) -> str | None:
    full = posixpath.normpath(posixpath.join(workdir, path))
    if under(full, mounts) or image.exists(full):
        return None
    return f"{what} {path} ({full}) is neither in the image nor mounted"


def env_problems(env: dict[str, str], image: Image, mounts: set[str], read_only: bool = False) -> list[str]:
    """Paths in env values: there, and writable where the variable names a dir the job writes to."""
    problems = []
    for name, value in env.items():
        if not value.startswith("/"):
            continue
        if name in WRITTEN_DIRS and not (under(value, mounts) or (image.can_write(value) and not read_only)):
            where = "the image is read-only there" if read_only else f"uid {IMAGE_UID} does not own it in the image"
            problems.append(f"env {name}={value}: not writable (not mounted, and {where})")
        elif name not in WRITTEN_DIRS and value.startswith(("/opt/", "/cache", "/outputs", "/etc/ft-recipes")):
            if problem := path_problem(f"env {name}", value, "/", image, mounts):
                problems.append(problem)
    return problems


# ---------------------------------------------------------------------------------------------
# Slurm: a rendered sbatch script


def split_srun(words: list[str]) -> tuple[list[str], list[str]]:
    """(srun's and the container runtime's options, the command run inside the container)."""
    i = 1
    while i < len(words) and words[i].startswith("-"):  # srun's options, all --name=value
        i += 1
    if i < len(words) and words[i] in ("apptainer", "singularity"):
        i += 2  # "<runtime> exec"
        while words[i].startswith("-"):
            i += 2 if words[i] in ("--bind", "-B", "--pwd") else 1
        i += 1  # the image
    return words[:i], words[i:]


def slurm_problems(script: str, image: Image) -> list[str]:
    """What the container part of a rendered job script (apptainer/singularity/enroot) needs."""
    joined = re.sub(r"\\\n", " ", script)
    srun = next(line for line in joined.splitlines() if line.startswith("srun "))
    options, inside = split_srun(shlex.split(srun.rsplit("&", 1)[0]))
    wrapper = re.search(r"^ignore_usr1=\((.*)\)$", script, re.M)
    programs = inside[:1]
    if wrapper and inside[:1] == ["${ignore_usr1[@]}"]:  # bash -c '...' runs the rest of the command
        programs = [shlex.split(wrapper[1])[0], *inside[1:2]]
    workdir, mounts = None, set()
    for i, word in enumerate(options):
        if word == "--pwd":
            workdir = options[i + 1]
        elif word.startswith("--container-workdir="):
            workdir = word.split("=", 1)[1]
        elif word in ("--bind", "-B"):
            mounts.add(options[i + 1].split(":")[1 if ":" in options[i + 1] else 0])
        elif word.startswith("--container-mounts="):
            mounts |= {m.split(":")[1 if ":" in m else 0] for m in word.split("=", 1)[1].split(",")}
    problems = []
    if workdir != image.workdir:
        problems.append(f"the job runs in {workdir}, the image's code is in {image.workdir}")
    defined = set(re.findall(r"^(?:export )?(\w+)=", script, re.M))
    for program in programs:
        if not image.resolve(program):
            problems.append(f"program {program} is not on the image's PATH")
    entries = [word for word in inside if word.endswith(".py")]
    for entry in entries[:1] or ["(no .py entry point in the container's command)"]:
        if problem := path_problem("entry point", entry, workdir or image.workdir, image, mounts):
            problems.append(problem)
    job_dir = re.search(r"^job_dir=(.*)$", script, re.M)[1]
    if not under(shlex.split(job_dir)[0], mounts):
        problems.append(f"the job dir {job_dir} (config and outputs) is not mounted into the container")
    for name in {m for word in inside for m in SHELL_REF.findall(word)}:
        if name not in defined and not SCHEDULER_ENV.fullmatch(name) and name not in image.env:
            problems.append(f"${name} is set neither by the script, the scheduler nor the image")
    exported = {k: shlex.split(v)[0] for k, v in re.findall(r"^export (\w+)=(.*)$", script, re.M)}
    # Apptainer/Singularity run the image read-only, as the submitting user: what the job writes must
    # be on a mount. The datasets cache (HF_HOME) is written by every recipe.
    read_only = bool(re.search(r"\b(apptainer|singularity) exec\b", srun))
    if read_only and "HF_HOME" not in exported:
        problems.append("the image is read-only under apptainer/singularity: the profile's env must set HF_HOME "
                        "to a mounted dir")
    problems += env_problems(exported, image, mounts, read_only)
    return problems


# ---------------------------------------------------------------------------------------------
# Kubernetes: rendered manifests (YAML documents) and the Jinja templates they come from


def walk(node):
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from walk(child)


def containers(document) -> list[tuple[dict, dict, set[str]]]:
    """(container, its pod's securityContext, mount paths) for every container of our image in a manifest."""
    found, seen = [], set()
    all_mounts = {node["mountPath"] for node in walk(document) if isinstance(node, dict) and "mountPath" in node}
    for node in walk(document):
        if not isinstance(node, dict):
            continue
        pod_context = (node.get("securityContext") or {}) if "containers" in node else {}
        for container in node.get("containers") or ():
            seen.add(id(container))
            mounts = {m["mountPath"] for m in container.get("volumeMounts") or ()}
            found.append((container, pod_context, mounts))
        if isinstance(node.get("image"), str) and id(node) not in seen and ("command" in node or "args" in node):
            seen.add(id(node))
            found.append((node, {}, all_mounts))  # TrainJob's trainer: its volumes are set elsewhere
    ours = f"{images.REGISTRY}/{images.NAME}:"
    return [c for c in found if c[0].get("image", "").startswith(ours)]


def image_for(reference: str, by_target: dict[str, Image]) -> tuple[Image, str | None]:
    tags = {images.default_image(target): target for target in by_target}
    if reference in tags:
        return by_target[tags[reference]], None
    return by_target["cuda"], f"image {reference} is not one `make images` builds ({', '.join(tags)})"


def k8s_problems(document, by_target: dict[str, Image]) -> list[str]:
    problems = []
    for container, pod_context, mounts in containers(document):
        image, problem = image_for(container["image"], by_target)
        problems += [problem] if problem else []
        workdir = container.get("workingDir", image.workdir)
        if workdir != image.workdir:
            problems.append(f"workingDir {workdir}: the image's code is in {image.workdir}")
        env = {e["name"]: str(e.get("value", "")) for e in container.get("env") or ()}
        words = [str(w) for w in (container.get("command") or []) + (container.get("args") or [])]
        if container.get("command") and not image.resolve(str(container["command"][0])):
            problems.append(f"program {container['command'][0]} is not on the image's PATH")
        for flag, module in zip(words, words[1:]):
            if flag == "-m" and image.exists(posixpath.join(workdir, module.split(".")[0])):
                problems += filter(None, [path_problem("module", module.replace(".", "/") + ".py", workdir, image,
                                                       mounts)])  # one of the project's own packages
        for word in words:
            if word.endswith(".py") and not word.startswith("-"):
                problems += filter(None, [path_problem("script", word, workdir, image, mounts)])
            elif word.startswith("/"):
                problems += filter(None, [path_problem("path", word, workdir, image, mounts)])
        for name in {m for text in [*words, *env.values()] for m in K8S_REF.findall(text)}:
            if name not in env and not SCHEDULER_ENV.fullmatch(name):
                problems.append(f"$({name}) is not set in the container's env (k8s expands only those)")
        script = " ".join(words) if container.get("command", [None])[0] in ("bash", "sh", "/bin/bash", "/bin/sh") else ""
        for name in set(SHELL_REF.findall(script)):
            if name not in env and name not in image.env and not SCHEDULER_ENV.fullmatch(name):
                problems.append(f"${name} is set neither in the container's env, by the scheduler nor by the image")
        problems += env_problems(env, image, mounts)
        for context in (pod_context, container.get("securityContext") or {}):
            for key in ("runAsUser", "runAsGroup", "fsGroup"):
                if key in context and context[key] != IMAGE_UID:
                    problems.append(f"securityContext.{key}: {context[key]}, the image's user is uid/gid {IMAGE_UID}")
    return problems


def k8s_template_problems(text: str, image: Image) -> list[str]:
    """A Jinja template cannot be parsed as YAML before rendering; check what it writes literally."""
    problems = []
    text = re.sub(r"\{#.*?#\}", "", text, flags=re.S)  # Jinja comments
    mounts = set(re.findall(r"mountPath:\s*[\"']?(/[^\s\"'{}]*)", text))
    for path in sorted(set(re.findall(r"(?<![\w./{-])(/(?:opt|cache|outputs|etc/ft-recipes|home)\b[\w./-]*)", text))):
        if problem := path_problem("path", path, "/", image, mounts):
            problems.append(problem)
    for workdir in re.findall(r"workingDir:\s*[\"']?(/[^\s\"'{}]*)", text):
        if workdir != image.workdir:
            problems.append(f"workingDir {workdir}: the image's code is in {image.workdir}")
    set_here = set(re.findall(r"name:\s*[\"']?([A-Z_][A-Z0-9_]*)", text))
    for name in sorted(set(K8S_REF.findall(text))):
        if name not in set_here and not SCHEDULER_ENV.fullmatch(name):
            problems.append(f"$({name}) is not set in the container's env (k8s expands only those)")
    for key, value in re.findall(r"(runAsUser|runAsGroup|fsGroup):\s*(\d+)", text):
        if int(value) != IMAGE_UID:
            problems.append(f"securityContext.{key}: {value}, the image's user is uid/gid {IMAGE_UID}")
    return problems
