# The gateway image: the kaltstart package without the runtime extra (no torch), run as user 10001.
# Build from the repository root:  docker build -f docker/gateway.Dockerfile -t ghcr.io/kaltstart/gateway:0.1.0 .
# Every package comes from requirements/gateway.lock (versions and hashes); a release builds FROM the base image by
# digest (--build-arg PYTHON_IMAGE=python:3.11-slim@sha256:..., docs/release.md).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements/gateway.lock requirements/
RUN /opt/venv/bin/pip install --require-hashes -r requirements/gateway.lock
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
COPY wire/ wire/
RUN /opt/venv/bin/pip install --no-deps --no-build-isolation .

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 kaltstart \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin kaltstart
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    KALTSTART_HOST=0.0.0.0 KALTSTART_PORT=8080
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m", "gateway"]
