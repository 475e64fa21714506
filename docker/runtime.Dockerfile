# The model runtime image: CUDA user-space libraries, Python 3.11, torch, and the kaltstart package with the
# runtime extra, run as user 10001. The torch wheel brings its own CUDA libraries; the node's NVIDIA driver must
# support the CUDA version of TORCH_INDEX_URL.
# Build from the repository root:  docker build -f docker/runtime.Dockerfile -t ghcr.io/kaltstart/runtime:0.1.0 .
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

# Must equal the torch pin of the runtime extra in pyproject.toml (a test checks it).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, from the CUDA index: a plain `pip install .[runtime]` would pick the default build.
RUN pip install --index-url ${TORCH_INDEX_URL} torch==${TORCH_VERSION}

WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime/ runtime/
COPY wire/ wire/
RUN pip install '.[runtime]' && rm -rf /src

RUN groupadd --gid 10001 kaltstart \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin kaltstart \
    && mkdir -p /var/lib/kaltstart/models && chown 10001:10001 /var/lib/kaltstart/models
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/tmp HF_HOME=/tmp/huggingface \
    KALTSTART_RUNTIME_CACHE_DIR=/var/lib/kaltstart/models KALTSTART_RUNTIME_HOST=0.0.0.0
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["python", "-m", "runtime"]
