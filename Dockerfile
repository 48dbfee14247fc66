# captioner inference image.
#
#   docker build -t captioner:0.1.0 .                         # CPU (default), python:3.11-slim
#   DOCKER_BUILDKIT=0 docker build --target runtime -t captioner:0.1.0 .   # legacy builder: name it
#   docker build --target gpu -t captioner:0.1.0-gpu .        # GPU: onnxruntime-gpu on CUDA 13 + cuDNN 9
#   docker build --target ray -t captioner:0.1.0-ray .        # bulk captioning on Ray (the chart's RayJob)
#   docker run --rm -p 8000:8000 --read-only --tmpfs /tmp captioner:0.1.0
#   docker run ... -v /path/to/bundle:/models/custom:ro -e CAPTION_BUNDLE_DIR=/models/custom captioner:0.1.0
#
# Build args: BASE_IMAGE (CPU stages; any Debian-like image with python3.11 + venv, e.g. a local
# mirror), CUDA_BASE_IMAGE (GPU stages), BUNDLE_DIR (bundle folder in the build context baked in as
# the default model). The runtime stages hold no compilers and no TensorFlow (only `.[cpu]` /
# `.[gpu]`), run as uid 10001, and write nowhere but /tmp (fine with a read-only root filesystem).
# Works with the legacy builder (no BuildKit-only syntax).

ARG BASE_IMAGE=python:3.11-slim
ARG CUDA_BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu22.04

# ---- build: a virtual environment with the service and ONNX Runtime (CPU) ----
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --upgrade pip==25.3
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY batch ./batch
RUN /opt/venv/bin/pip install '.[cpu]' \
    && /opt/venv/bin/python -c "import service, onnxruntime; print('onnxruntime', onnxruntime.__version__)" \
    && ! /opt/venv/bin/python -c "import tensorflow" 2>/dev/null \
    && /opt/venv/bin/python -m pip uninstall -q -y pip

# ---- runtime (default target): CPU ----
FROM ${BASE_IMAGE} AS runtime
ARG BUNDLE_DIR=models/default
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    CAPTION_HOST=0.0.0.0 \
    CAPTION_PORT=8000 \
    CAPTION_BUNDLE_DIR=/app/models/default \
    CAPTION_LOG_JSON=true
RUN groupadd --gid 10001 captioner \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin captioner
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY deploy/docker/healthcheck.py /app/healthcheck.py
COPY ${BUNDLE_DIR} /app/models/default
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]

# ---- ray-build: the service, the bulk command and Ray (Data + the dashboard's job server) ----
# The `ray` extra holds ray[data,default]: KubeRay submits the job through the head's dashboard
# (`ray job submit`), runs the autoscaler sidecar from this image, and its health probes ask the
# dashboard agent. No runtime_env installs at job start: everything the job needs is here.
FROM ${BASE_IMAGE} AS ray-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --upgrade pip==25.3
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY batch ./batch
RUN /opt/venv/bin/pip install '.[cpu,ray]' \
    && /opt/venv/bin/python -c "import ray, batch, service, onnxruntime; print('ray', ray.__version__)" \
    && ! /opt/venv/bin/python -c "import tensorflow" 2>/dev/null \
    && /opt/venv/bin/python -m pip uninstall -q -y pip

# ---- ray: head, worker and submitter image of the chart's RayJob (batchJob) ----
#   docker build --target ray -t captioner:0.1.0-ray .
#   docker run --rm captioner:0.1.0-ray captioner caption /data/in --out /tmp/out --engine ray
# KubeRay replaces the command with `ray start ...` (bash) and probes with wget; uid 10001 as above.
FROM ${BASE_IMAGE} AS ray
ARG BUNDLE_DIR=models/default
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    RAY_USAGE_STATS_ENABLED=0 \
    CAPTION_BUNDLE_DIR=/app/models/default \
    CAPTION_LOG_JSON=true
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 captioner \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin captioner
COPY --from=ray-build /opt/venv /opt/venv
WORKDIR /app
COPY ${BUNDLE_DIR} /app/models/default
USER 10001:10001
CMD ["captioner", "--help"]

# ---- gpu-build: the same environment with onnxruntime-gpu, on the CUDA base ----
# onnxruntime-gpu 1.31 loads CUDA 13 + cuDNN 9 (it says "Require cuDNN 9.* and CUDA 13.*" otherwise),
# so the node needs an NVIDIA driver >= 580. Not run in CI (no CUDA base image or GPU offline); the
# stages were built once with a Debian stand-in base to check they install and import.
FROM ${CUDA_BASE_IMAGE} AS gpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv && /opt/venv/bin/pip install --upgrade pip==25.3
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY batch ./batch
RUN /opt/venv/bin/pip install '.[gpu]' && /opt/venv/bin/python -m pip uninstall -q -y pip

# ---- gpu: runtime on the CUDA base; CAPTION_PROVIDER=cuda ----
FROM ${CUDA_BASE_IMAGE} AS gpu
ARG BUNDLE_DIR=models/default
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    DEBIAN_FRONTEND=noninteractive \
    CAPTION_HOST=0.0.0.0 \
    CAPTION_PORT=8000 \
    CAPTION_BUNDLE_DIR=/app/models/default \
    CAPTION_PROVIDER=cuda \
    CAPTION_LOG_JSON=true
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 captioner \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin captioner
COPY --from=gpu-build /opt/venv /opt/venv
WORKDIR /app
COPY deploy/docker/healthcheck.py /app/healthcheck.py
COPY ${BUNDLE_DIR} /app/models/default
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "/app/healthcheck.py"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]

# Default target (BuildKit builds only the stages it needs). The legacy builder runs every stage up
# to the target in file order, so with it pass `--target runtime` (or `--target ray`, `--target gpu`);
# the ray stages sit before the CUDA ones so that `--target ray` needs no CUDA base image.
FROM runtime
