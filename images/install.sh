#!/usr/bin/env bash
# The steps the CUDA and the CPU stages of images/Dockerfile share: `images/install.sh STEP [ARGS]`,
# run in /opt/ft-recipes with the project's venv first on PATH (the stages' ENV).
set -euo pipefail

step=$1
shift
case "$step" in
  venv)
    # The pip of the project's own venv; setuptools and wheel at their requirements-dev.lock pins build
    # the lock's one source package (deepspeed) and the project (setuptools is also a torch dependency).
    python3.11 -m venv "$VIRTUAL_ENV"
    pip install --no-cache-dir --no-deps "pip==${PIP_VERSION}"
    pip install --no-cache-dir --no-deps --constraint requirements-dev.lock setuptools wheel
    ;;
  torch)
    # The lock's torch version in the build named by the argument (cu128, cpu), from $TORCH_INDEX; every
    # dependency it shares with the lock is held at the lock's version by --constraint.
    pip install --no-cache-dir --constraint requirements.lock \
      --index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple \
      "torch==$(sed -n 's/^torch==//p' requirements.lock)+$1"
    ;;
  lock)
    # The rest of the lock, as is (DS_BUILD_* in the environment choose the DeepSpeed ops built).
    pip install --no-cache-dir --no-deps --no-build-isolation -r requirements.lock
    ;;
  project)
    # The project, editable, then the check that the venv holds exactly the lock; the arguments are
    # verify_lock.py's, for what a stage adds to the lock.
    pip install --no-cache-dir --no-deps --no-build-isolation -e .
    python images/verify_lock.py requirements.lock --also requirements-dev.lock:setuptools,wheel "$@"
    ;;
  user)
    # The images' user, uid/gid 1000, and the directories it writes.
    groupadd --gid 1000 ft
    useradd --uid 1000 --gid 1000 --create-home --home-dir /home/ft --shell /bin/bash ft
    mkdir -p /cache/huggingface /cache/ft-recipes /outputs /etc/ft-recipes
    chown 1000:1000 /cache /cache/huggingface /cache/ft-recipes /outputs
    ;;
  *)
    echo "images/install.sh: unknown step '$step' (venv, torch, lock, project, user)" >&2
    exit 2
    ;;
esac
