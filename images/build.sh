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

built=()
for variant in "${variants[@]}"; do
  case "$variant" in
    cuda) tag="$registry/$name:$version-cuda$cuda" ;;
    cpu) tag="$registry/$name:$version-cpu" ;;
    *) echo "make images: unknown variant '$variant' (cuda or cpu)" >&2; exit 2 ;;
  esac
  args=(--file images/Dockerfile --target "$variant" --tag "$tag"
        --build-arg "VERSION=$version" --build-arg "REVISION=$revision"
        --build-arg "CREATED=$created" --build-arg "SOURCE=$source_url")
  echo "== $engine: building $tag"
  case "$engine" in
    # BuildKit reads images/Dockerfile.dockerignore next to the Dockerfile.
    docker) DOCKER_BUILDKIT=1 docker build "${args[@]}" . ;;
    podman) podman build --ignorefile images/Dockerfile.dockerignore "${args[@]}" . ;;
    buildah) buildah build --ignorefile images/Dockerfile.dockerignore "${args[@]}" . ;;
  esac
  built+=("$tag")
done

echo "== built: ${built[*]}"
echo "== push with: $engine push <tag>   (after: $engine login ${registry%%/*})"
