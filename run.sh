#!/usr/bin/env bash
# Set-up and entry point: creates/reuses .venv, installs the project, then runs
#   ./run.sh demo [demo options]   the main job (synthetic BraTS -> CGGM training -> evaluation)
#   ./run.sh test [pytest options] ruff + the whole test suite
#   ./run.sh cggm-seg ARGS...      any other cggm-seg command inside the environment
set -euo pipefail
cd "$(dirname "$0")"

VENV=${CGGM_VENV:-.venv}
TORCH_VERSION=${CGGM_TORCH_VERSION:-2.13.0}

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

cmd=${1:-}
[ -n "$cmd" ] && shift
case "$cmd" in
  demo) setup; exec cggm-seg demo "$@" ;;
  test)
    setup
    ruff check .
    exec python -m pytest "$@" ;;
  cggm-seg) setup; exec cggm-seg "$@" ;;
  *) echo "usage: ./run.sh {demo|test|cggm-seg} [args...]" >&2; exit 2 ;;
esac
