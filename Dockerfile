# syntax=docker/dockerfile:1.7
#
# YOLOv5 detector served by KServe (V2 / Open Inference Protocol).
#
#   CPU image (default):    docker build -t yolov5-kserve:cpu .
#   CUDA image:             docker build --build-arg TORCH_VARIANT=cu126 -t yolov5-kserve:cuda .
#   Air-gapped (baked-in):  docker build --build-arg BAKE_MODEL=true -t yolov5-kserve:bundled .
#   Other base image:       docker build --build-arg BASE_IMAGE=registry.example.com/python \
#                             --build-arg BASE_TAG=3.11-slim .
#
# CUDA: cu126 wheels carry the CUDA 12.6 runtime and run on NVIDIA driver >= 525.60.13
# (CUDA minor-version compatibility; docs/deploy.md, "GPU drivers"). cu128 needs the same
# driver for the GPUs we target but adds Blackwell; cu130 needs driver >= 580.
#
# The model is normally NOT in the image: KServe's storage initializer downloads the
# InferenceService's STORAGE_URI into /mnt/models before the server starts. With
# BAKE_MODEL=true the contents of model_store/ are copied to /mnt/models instead; deploy
# such an image without a STORAGE_URI (KServe would mount an empty volume over the path).
#
# Every instruction is exercised without a Docker engine by tests/deploy/test_dockerfile.py
# (hadolint, the build context against .dockerignore, the install step on that context,
# and the ENTRYPOINT against the predictor's own argument parser).

ARG PYTHON_VERSION=3.11
# Base of both stages, BASE_IMAGE:BASE_TAG: any Debian-based image with python3 (>= 3.11),
# python3-venv and `python` (tests/image builds on a debootstrapped Debian bookworm).
ARG BASE_IMAGE=python
ARG BASE_TAG=${PYTHON_VERSION}-slim

# ---------------------------------------------------------------------------------------
# builder: a virtual environment holding the project and its pinned dependencies
# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}:${BASE_TAG} AS builder

# PyTorch wheel variant: "cpu" (small, no CUDA libraries) or a CUDA build: "cu126" (the
# published CUDA image: runs on the widest range of drivers), "cu128", "cu130". The CUDA
# runtime ships inside the wheels; the node only needs the NVIDIA driver and device plugin.
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}

# PIP_CACHE_DIR: the cache mount's path whatever HOME the build tool sets.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CACHE_DIR=/root/.cache/pip \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY predictor/ predictor/

# The same install CI performs (`pip install .`); torch/torchvision resolve to the
# TORCH_VARIANT build through the extra index (e.g. 2.14.1+cpu satisfies ==2.14.1).
# pip also byte-compiles what it installs, so the read-only root filesystem costs no
# start-up time. The wheel cache is a build cache mount (BuildKit keeps it between builds)
# and never lands in a layer (the runtime stage copies /opt/venv only).
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --extra-index-url "${TORCH_INDEX_URL}" .

# ---------------------------------------------------------------------------------------
# runtime: slim, non-root (uid/gid 10001), read-only-root-filesystem friendly
# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}:${BASE_TAG} AS runtime

ARG BAKE_MODEL=false
ARG TORCH_VARIANT=cpu

LABEL org.opencontainers.image.title="yolov5-kserve" \
      org.opencontainers.image.description="YOLOv5 object detection served with KServe (V2 inference protocol)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.yolov5-kserve.torch-variant="${TORCH_VARIANT}"

# Everything that writes at run time goes to /tmp (an emptyDir in the chart), so the
# root filesystem can be mounted read-only.
# GKE's device plugin mounts the NVIDIA driver at /usr/local/nvidia (lib64, bin) and sets
# no environment for it; NVIDIA's CUDA images set these same paths for that reason. On EKS
# (NVIDIA container toolkit) the driver libraries land in the standard library path and
# the extra entries are harmless, as they are in the CPU image.
ENV PATH=/opt/venv/bin:/usr/local/nvidia/bin:$PATH \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCH_HOME=/tmp/.cache/torch \
    MPLCONFIGDIR=/tmp/.cache/matplotlib

# A high uid/gid (>= 10000) cannot collide with a user of the node (checkov CKV_K8S_40).
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --no-log-init \
       --shell /usr/sbin/nologin app \
    && mkdir -p /mnt/models \
    && chown 10001:10001 /mnt/models

COPY --from=builder /opt/venv /opt/venv

# Optional: bake model_store/ into /mnt/models for clusters without object storage access.
RUN --mount=type=bind,source=model_store,target=/tmp/model_store \
    if [ "${BAKE_MODEL}" = "true" ]; then \
        cp -R /tmp/model_store/. /mnt/models/ && chown -R 10001:10001 /mnt/models; \
    fi

USER 10001:10001
WORKDIR /tmp

# 8080: HTTP (REST V1/V2, /metrics), 8081: gRPC (V2). KServe defaults.
EXPOSE 8080 8081

# For `docker run` and Compose: the server's liveness endpoint on the default HTTP port
# (the slim image has no curl). Kubernetes ignores HEALTHCHECK and uses the chart's probes;
# the start period covers loading and warming up the model.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/live', timeout=4)"]

ENTRYPOINT ["python", "-m", "predictor", "--model_dir", "/mnt/models"]
