#!/usr/bin/env bash
# Set-up and entry point: creates/reuses .venv, installs the project, then runs
#   ./run.sh demo [demo options]   the main job (synthetic BraTS -> CGGM training -> evaluation)
#   ./run.sh test [pytest options] ruff (lint and format) + the whole test suite
#   ./run.sh cggm-seg ARGS...      any other cggm-seg command inside the environment
#   ./run.sh image [--offline] [BUILD OPTIONS]  the container image cggm-seg (docs/CONTAINER.md)
set -euo pipefail
cd "$(dirname "$0")"

VENV=${CGGM_VENV:-.venv}
TORCH_VERSION=${CGGM_TORCH_VERSION:-$(sed -n 's/^torch==//p' constraints.txt)}

install_torch() {
  # A plain `pip install torch` on Linux pulls a multi-GB CUDA build; without a GPU take the CPU build.
  if python -c "import torch" 2>/dev/null; then return; fi
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    echo "run.sh: GPU found: installing the CUDA build of torch==$TORCH_VERSION"
    pip install "torch==$TORCH_VERSION"
  elif pip install --no-deps --no-index "torch==$TORCH_VERSION" 2>/dev/null; then
    echo "run.sh: no GPU: installed the local CPU wheel of torch==$TORCH_VERSION"
    pip install "torch==$TORCH_VERSION"  # its pure-Python dependencies
  else
    echo "run.sh: no GPU: installing the CPU build of torch==$TORCH_VERSION"
    pip install "torch==$TORCH_VERSION" --index-url "${CGGM_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
  fi
}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV" || {
      rm -rf "$VENV"
      echo "run.sh: 'python3 -m venv' failed; on Debian/Ubuntu install it with: apt-get install python3-venv" >&2
      exit 1
    }
  fi
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
  install_torch
  local stamp="$VENV/.cggm-installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    pip install -q -e ".[dev]"
    touch "$stamp"
  fi
}

image() {
  # docker where its daemon answers, else podman; CGGM_CONTAINER_ENGINE chooses. Other options go to
  # the engine's build, e.g. --build-arg BASE_IMAGE=...; --offline installs from wheels/ only, with
  # no network, as on an air-gapped cluster.
  local engine=${CGGM_CONTAINER_ENGINE:-}
  if [ -z "$engine" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
    elif command -v podman >/dev/null; then engine=podman
    else echo "run.sh: no container engine: install docker or podman" >&2; exit 1
    fi
  fi
  local args=()
  for arg in "$@"; do
    if [ "$arg" = --offline ]; then
      if ! compgen -G "wheels/*.whl" >/dev/null; then
        echo "run.sh: --offline installs from wheels/, which has no wheels (docs/CONTAINER.md)" >&2; exit 1
      fi
      args+=(--build-arg PIP_NO_INDEX=1 --network none)
    else
      args+=("$arg")
    fi
  done
  exec "$engine" build --tag cggm-seg "${args[@]}" .
}

cmd=${1:-}
[ -n "$cmd" ] && shift
case "$cmd" in
  demo) setup; exec cggm-seg demo "$@" ;;
  test)
    setup
    ruff check .
    ruff format --check .
    exec python -m pytest "$@" ;;
  cggm-seg) setup; exec cggm-seg "$@" ;;
  image) image "$@" ;;
  *) echo "usage: ./run.sh {demo|test|cggm-seg|image} [args...]" >&2; exit 2 ;;
esac
