# cggm_seg with the torch of constraints.txt. Build it with `./run.sh image` (docker or podman, add
# --offline for wheels/ only); docs/CONTAINER.md explains the choices below.
#
# The default base is NVIDIA's smallest CUDA image: PyPI's torch wheel brings its own CUDA libraries
# (cuBLAS, cuDNN, NCCL as nvidia-* wheels), so a -runtime or -cudnn base would add a second, unused copy,
# and a pytorch/pytorch base its own torch, a second place for the version. What the base adds is the
# NVIDIA container toolkit's settings, and its CUDA 13.0 (that of the pinned torch's PyPI wheel) makes the
# toolkit refuse a driver too old for it. CI builds on a Debian base made locally: no CUDA_VERSION, CPU torch.
ARG BASE_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04

FROM ${BASE_IMAGE} AS python
# The CUDA base has no Python; a base that has it with venv (CI's) is used as it is. Unpinned: the
# base's release fixes the version, and a pin would tie this file to one base.
# hadolint ignore=DL3008
RUN if ! python3 -c "import ensurepip" 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# The dependencies in a stage of their own, rebuilt only when constraints.txt, pyproject.toml or
# wheels/ change. Offline, --build-arg PIP_NO_INDEX=1 leaves pip only the wheels in wheels/.
FROM python AS dependencies
ARG PIP_NO_INDEX=0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_FIND_LINKS=/wheels
WORKDIR /src
COPY constraints.txt pyproject.toml ./
# wheels/ is optional (offline builds fill it); naming constraints.txt too keeps the COPY valid without it.
COPY constraints.txt wheel[s] /wheels/
# torch first: the CUDA build from PyPI where the base has CUDA, else the CPU build; the constraint then
# keeps it while pip adds pyproject's dependencies and build backend (tomllib: the base needs Python 3.11+).
RUN python3 -m venv /opt/venv \
    && if [ -n "${CUDA_VERSION:-}" ]; then \
        /opt/venv/bin/pip install --constraint constraints.txt torch; \
    else \
        /opt/venv/bin/pip install --constraint constraints.txt --index-url "$TORCH_CPU_INDEX" torch; \
    fi \
    && python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); \
        print(*p['build-system']['requires'], *p['project']['dependencies'], sep='\n')" > requirements.txt \
    && /opt/venv/bin/pip install --constraint constraints.txt --requirement requirements.txt \
    && /opt/venv/bin/python -c "import os, torch; \
        assert bool(torch.version.cuda) == bool(os.environ.get('CUDA_VERSION')), torch.__version__"

# The project as a wheel, as users install it: the bundles go in as package data.
FROM dependencies AS wheel
COPY README.md ./
COPY cggm_seg ./cggm_seg
COPY data_prep ./data_prep
COPY bundles ./bundles
RUN /opt/venv/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /dist .

FROM python
ENV PATH=/opt/venv/bin:$PATH \
    MPLCONFIGDIR=/tmp/matplotlib \
    CGGM_SEG_CACHE_DIR=/cache
COPY --from=dependencies /opt/venv /opt/venv
COPY --from=wheel /dist /tmp/dist
# The bundles link makes bundles/NAME/configs/... (README, docs/CONTAINER.md) the installed bundles.
# uid 1000 is the usual first user of a host; Ubuntu bases give it to a user `ubuntu`, replaced here.
WORKDIR /opt/cggm-seg
RUN pip install --no-deps --no-index /tmp/dist/*.whl \
    && rm -r /tmp/dist \
    && ln -s "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/cggm_seg/bundles" bundles \
    && test -f bundles/brats_cggm/configs/train.json \
    && if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu 2>/dev/null; fi \
    && useradd --create-home --uid 1000 --shell /bin/bash cggm \
    && mkdir -p /data /output /cache \
    && chown cggm:cggm /data /output /cache
USER 1000:1000

# /data: datasets (the bundles read /data/brats by default); /output: runs, checkpoints, predictions;
# /cache: the BraTS bundle's prepared cases (data_path: disk), kept across runs in a named volume.
VOLUME ["/data", "/output", "/cache"]

# No entrypoint, so any command runs as given: `cggm-seg ...`, `python -m monai.bundle ...`,
# `torchrun ... -m monai.bundle ...` or `cggm-seg benchmark gpu ...`.
CMD ["cggm-seg", "--help"]
