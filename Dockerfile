# cggm_seg on a CUDA PyTorch base: `docker build -t cggm-seg .`, then see README "## Docker".
# The tag pins PyTorch 2.8.0 (CUDA 12.8, cuDNN 9): MONAI 1.6 needs torch>=2.8, pyproject torch>=2.2.
FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /opt/cggm-seg

# What pyproject.toml builds (its packages and readme), then the bundles and the GPU bench.
COPY pyproject.toml README.md ./
COPY cggm_seg ./cggm_seg
COPY data_prep ./data_prep

# The constraint pins torch to the image's own CUDA build: pip may add the project's other
# dependencies but can never swap torch for a PyPI wheel; the last check fails the build if it did.
# Editable, so the code finds bundles/ beside it as in a checkout (cggm-seg demo reads it from there).
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/torch-constraint.txt \
    && pip install --no-cache-dir --constraint /tmp/torch-constraint.txt --editable . \
    && python -c "import torch; assert torch.version.cuda, 'pip replaced the CUDA build of torch'" \
    && python -m compileall -q cggm_seg data_prep \
    && rm /tmp/torch-constraint.txt

COPY bundles ./bundles
COPY bench ./bench

RUN useradd --create-home --uid 1000 --shell /bin/bash cggm \
    && mkdir -p /data /output \
    && chown cggm:cggm /data /output
USER 1000:1000

# /data: datasets (the bundles read /data/brats by default); /output: runs, checkpoints, predictions.
VOLUME ["/data", "/output"]

# No entrypoint, so any command runs as given: `cggm-seg ...`, `python -m monai.bundle ...`,
# `torchrun ... -m monai.bundle ...` or `cggm-seg benchmark gpu ...`.
CMD ["cggm-seg", "--help"]
