# The model runtime image: Python 3.11, torch's CUDA build and the kaltstart package with the runtime extra, run as
# user 10001. Every package comes from requirements/runtime-cuda.lock (versions and hashes): torch 2.13.0 as PyPI
# builds it, for CUDA 13.0, its CUDA user-space libraries in the nvidia-* wheels the lock pins, so the base image
# needs no CUDA; the node needs an NVIDIA driver that supports CUDA 13.0 (580 or newer) and the container toolkit.
# A release builds FROM the base image by digest (--build-arg PYTHON_IMAGE=python:3.11-slim@sha256:...,
# docs/release.md, which also says how to lock another CUDA build of torch).
# Build from the repository root:  docker build -f docker/runtime.Dockerfile -t ghcr.io/kaltstart/runtime:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY requirements/runtime-cuda.lock requirements/
RUN pip install --require-hashes -r requirements/runtime-cuda.lock
COPY pyproject.toml README.md ./
COPY runtime/ runtime/
COPY wire/ wire/
RUN pip install --no-deps --no-build-isolation . && rm -rf /src

RUN groupadd --gid 10001 kaltstart \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin kaltstart \
    && mkdir -p /var/lib/kaltstart/models && chown 10001:10001 /var/lib/kaltstart/models
# What the NVIDIA container toolkit mounts into the container (nvidia/cuda images set the same).
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp HF_HOME=/tmp/huggingface \
    KALTSTART_RUNTIME_CACHE_DIR=/var/lib/kaltstart/models KALTSTART_RUNTIME_HOST=0.0.0.0
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["python", "-m", "runtime"]
