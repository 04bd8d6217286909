# syntax=docker/dockerfile:1.7
#
# YOLOv5 detector served by KServe (V2 / Open Inference Protocol).
#
#   CPU image (default):    docker build -t yolov5-kserve:cpu .
#   CUDA image:             docker build --build-arg TORCH_VARIANT=cu130 -t yolov5-kserve:cuda .
#   Air-gapped (baked-in):  docker build --build-arg BAKE_MODEL=true -t yolov5-kserve:bundled .
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

# ---------------------------------------------------------------------------------------
# builder: a virtual environment holding the project and its pinned dependencies
# ---------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS builder

# PyTorch wheel variant: "cpu" (small, no CUDA libraries) or a CUDA build such as
# "cu130", "cu128" or "cu126" (the CUDA runtime ships inside the wheels; the node only
# needs the NVIDIA driver and device plugin).
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_VARIANT}

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY predictor/ predictor/

# The same install CI performs (`pip install .`); torch/torchvision resolve to the
# TORCH_VARIANT build through the extra index (e.g. 2.14.1+cpu satisfies ==2.14.1).
# pip also byte-compiles what it installs, so the read-only root filesystem costs no
# start-up time.
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" .

# ---------------------------------------------------------------------------------------
# runtime: slim, non-root (uid/gid 10001), read-only-root-filesystem friendly
# ---------------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime

ARG BAKE_MODEL=false
ARG TORCH_VARIANT=cpu

LABEL org.opencontainers.image.title="yolov5-kserve" \
      org.opencontainers.image.description="YOLOv5 object detection served with KServe (V2 inference protocol)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.yolov5-kserve.torch-variant="${TORCH_VARIANT}"

# Everything that writes at run time goes to /tmp (an emptyDir in the chart), so the
# root filesystem can be mounted read-only.
ENV PATH=/opt/venv/bin:$PATH \
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
