#!/usr/bin/env bash
# Build the images with whichever container engine works here: docker, podman or buildah.
#
#   images/build.sh [cuda] [cpu]        (`make images` runs it for both)
#
# Tags: $REGISTRY/$IMAGE_NAME:<version>-cuda<CUDA> and ...:<version>-cpu, where the defaults and
# CUDA come from launcher/images.py and <version> is launcher.__version__, so the launcher's
# default image is exactly what this builds. Set REGISTRY (and IMAGE_NAME) to build for your own
# registry; IMAGE_SOURCE sets the org.opencontainers.image.source label.
set -euo pipefail
cd "$(dirname "$0")/.."

# A Python assignment `NAME = "value"` at the start of a line of FILE.
constant() { sed -n "s/^$1 = \"\(.*\)\"\$/\1/p" "$2"; }

engine=
broken=()
for candidate in docker podman buildah; do
  command -v "$candidate" >/dev/null 2>&1 || continue
  if "$candidate" info >/dev/null 2>&1; then
    engine=$candidate
    break
  fi
  broken+=("$candidate")
done
if [ -z "$engine" ]; then
  if [ ${#broken[@]} -gt 0 ]; then
    why="${broken[*]} found, but \`${broken[0]} info\` fails (no engine running, or no access to it)"
  else
    why="none of docker, podman, buildah is installed"
  fi
  echo "make images: no working container engine here: $why; build the images where one runs (images/README.md)" >&2
  exit 1
fi

variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(cuda cpu)
version=$(constant __version__ launcher/__init__.py)
cuda=$(constant CUDA launcher/images.py)
registry=${REGISTRY:-$(constant REGISTRY launcher/images.py)}
name=${IMAGE_NAME:-$(constant NAME launcher/images.py)}
if [ -z "$version" ] || [ -z "$cuda" ] || [ -z "$registry" ] || [ -z "$name" ]; then
  echo "make images: cannot read the version from launcher/__init__.py or the names from launcher/images.py" >&2
  exit 1
fi
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
source_url=${IMAGE_SOURCE:-https://github.com/ft-recipes/ft-recipes}

# The default base images: the ARG lines at the top of the Dockerfile.
base_default() { sed -n "s/^ARG $1=//p" images/Dockerfile; }

have_image() {
  case "$engine" in
    buildah) buildah inspect --type image "$1" >/dev/null 2>&1 ;;
    *) "$engine" image inspect "$1" >/dev/null 2>&1 ;;
  esac
}

# A Debian bookworm base with Python 3.11, made from Debian's own packages: what the CPU image
# builds on when its base cannot be pulled (no registry reachable). Made once, then reused.
BOOTSTRAPPED_BASE=localhost/ft-recipes-base:bookworm
bootstrap_base() {
  have_image "$BOOTSTRAPPED_BASE" && return 0
  command -v mmdebstrap >/dev/null 2>&1 || return 1
  local rootfs
  rootfs=$(mktemp --suffix=.tar)
  mmdebstrap --quiet --variant=minbase --include=python3.11,python3.11-venv,python3.11-dev,ca-certificates,passwd \
    bookworm "$rootfs" || { rm -f "$rootfs"; return 1; }
  case "$engine" in
    buildah) local ctr; ctr=$(buildah from scratch) && buildah add "$ctr" "$rootfs" / >/dev/null \
               && buildah commit --quiet "$ctr" "$BOOTSTRAPPED_BASE" >/dev/null; buildah rm "$ctr" >/dev/null ;;
    *) "$engine" import "$rootfs" "$BOOTSTRAPPED_BASE" >/dev/null ;;
  esac
  local status=$?
  rm -f "$rootfs"
  return $status
}

# How pip reaches PyPI and torch's wheel on this machine, handed to the build (podman and buildah
# mount host paths into RUN steps; docker builds reach the network directly): pip's configured CA
# bundle and local wheel directories, as build arguments, which the image does not keep.
pip_setting() { "${PYTHON:-python3}" -m pip config list 2>/dev/null | sed -n "s/^[^=]*\.$1='\(.*\)'\$/\1/p" | tail -n 1; }
reachable() { "${PYTHON:-python3}" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)" "$1" >/dev/null 2>&1; }
host_args=()
if [ "$engine" != docker ]; then
  cert=$(pip_setting cert || true)
  if [ -n "$cert" ] && [ -f "$cert" ]; then
    host_args+=(--volume "$cert:/run/pip-ca.pem:ro" --build-arg PIP_CERT=/run/pip-ca.pem)
  fi
  links=$(pip_setting find-links || true)
  mounted=()
  for dir in $links; do
    [ -d "$dir" ] && host_args+=(--volume "$dir:$dir:ro") && mounted+=("$dir")
  done
  [ ${#mounted[@]} -eq 0 ] || host_args+=(--build-arg "PIP_FIND_LINKS=${mounted[*]}")
fi

built=()
skipped=()
for variant in "${variants[@]}"; do
  case "$variant" in
    cuda) tag="$registry/$name:$version-cuda$cuda"; bases=(CUDA_BUILD_BASE CUDA_BASE); torch_index=https://download.pytorch.org/whl/cu128 ;;
    cpu) tag="$registry/$name:$version-cpu"; bases=(CPU_BASE); torch_index=https://download.pytorch.org/whl/cpu ;;
    *) echo "make images: unknown variant '$variant' (cuda or cpu)" >&2; exit 2 ;;
  esac
  args=(--file images/Dockerfile --target "$variant" --tag "$tag"
        --build-arg "VERSION=$version" --build-arg "REVISION=$revision"
        --build-arg "CREATED=$created" --build-arg "SOURCE=$source_url")
  missing=()
  for arg in "${bases[@]}"; do
    base=$(base_default "$arg")
    have_image "$base" || "$engine" pull --quiet "$base" >/dev/null 2>&1 || missing+=("$base")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$variant" = cpu ] && bootstrap_base; then
      echo "== ${missing[0]} cannot be pulled (no registry reachable): building on $BOOTSTRAPPED_BASE, bootstrapped from Debian packages"
      args+=(--build-arg "CPU_BASE=$BOOTSTRAPPED_BASE")
    else
      echo "make images: cannot build $tag: its base ${missing[0]} cannot be pulled (no registry reachable)" >&2
      skipped+=("$tag")
      continue
    fi
  fi
  # Without PyPI's view of PyTorch's index, torch's build must come from the local wheel directories.
  if [ "$engine" != docker ] && ! reachable "$torch_index/"; then
    args+=(--build-arg "TORCH_INDEX=https://pypi.org/simple")
  fi
  echo "== $engine: building $tag"
  case "$engine" in
    # BuildKit reads images/Dockerfile.dockerignore next to the Dockerfile. podman and buildah
    # build in Docker's format, whose SHELL (bash with pipefail) the OCI format would drop.
    docker) DOCKER_BUILDKIT=1 docker build "${args[@]}" . ;;
    podman) podman build --format docker --ignorefile images/Dockerfile.dockerignore "${host_args[@]}" "${args[@]}" . ;;
    buildah) buildah build --format docker --ignorefile images/Dockerfile.dockerignore "${host_args[@]}" "${args[@]}" . ;;
  esac
  built+=("$tag")
done

[ ${#built[@]} -eq 0 ] || echo "== built: ${built[*]}"
[ ${#skipped[@]} -eq 0 ] || { echo "make images: not built: ${skipped[*]}" >&2; exit 1; }
echo "== push with: $engine push <tag>   (after: $engine login ${registry%%/*})"
