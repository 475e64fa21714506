# kaltstart: `make run` starts the whole thing locally; `make test` checks everything. Nothing else is needed
# on a fresh machine with Python 3.11+.

PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_MODEL := .demo-model

# `make images`: the gateway and runtime images, tagged like the chart deploys them by default (its appVersion).
# The release workflow (.github/workflows/release.yml) pushes the same repositories; tests/chart/test_release.py
# checks that both agree with charts/kaltstart/values.yaml.
CHART := charts/kaltstart
VERSION ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$$/\1/p' $(CHART)/Chart.yaml)
GATEWAY_IMAGE := ghcr.io/kaltstart/gateway
RUNTIME_IMAGE := ghcr.io/kaltstart/runtime
CONTAINER_TOOL ?= $(shell command -v docker || command -v podman)

.PHONY: run test lint typecheck promtool install lock lock-upgrade demo-model images clean

# Everything is installed from requirements/dev.lock (every version pinned, every file hashed), never from the
# ranges in pyproject.toml: a release upstream cannot change what `make test` runs. `make lock` writes the locks.
$(STAMP): requirements/pip.lock requirements/dev.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# pip, setuptools, torch (its CPU build, found in PIP_FIND_LINKS or PIP_EXTRA_INDEX_URL) and the rest, checked
	# against the lock's hashes; without --no-deps pip also proves the lock is complete.
	# pip itself first, at its locked version: the venv starts with whatever pip its Python came with.
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r requirements/pip.lock
	$(BIN)/python -m pip install -q --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(STAMP)

$(DEMO_MODEL)/config.json: | $(STAMP)
	$(BIN)/python -m runtime.weights.demo_model --out $(DEMO_MODEL)

demo-model: $(DEMO_MODEL)/config.json

run: $(STAMP) $(DEMO_MODEL)/config.json
	KALTSTART_CONFIG=$${KALTSTART_CONFIG:-kaltstart.toml} $(BIN)/python -m gateway

lint: $(STAMP)
	$(BIN)/actionlint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo

typecheck: $(STAMP)
	$(BIN)/mypy

# promtool runs the alert rules' and the dashboard's tests (real PromQL): Debian's prometheus package, installed
# when missing (as root, as CI runs, or through sudo), its service kept from starting (.ci/install-promtool).
promtool:
	@command -v promtool >/dev/null || .ci/install-promtool

test: lint typecheck promtool
	$(BIN)/python -m pytest

# `make lock` resolves pyproject.toml's ranges into requirements/*.lock (uv pip compile, hashes of every file),
# keeping the versions already locked where the ranges still allow them; `make lock-upgrade` takes the newest
# versions the ranges allow (what the weekly workflow .github/workflows/lock.yml proposes as a pull request).
# Linux x86_64, CPython 3.11: the machines, CI and images this project runs on. The locks agree on every version
# but torch's build: dev.lock has the CPU build (TORCH_CPU_SOURCE: where uv finds it; on this project's machines a
# wheel on disk, elsewhere e.g. TORCH_CPU_SOURCE='--index-url https://download.pytorch.org/whl/cpu
# --extra-index-url https://pypi.org/simple --index-strategy unsafe-best-match'), the CUDA locks PyPI's build.
TORCH_CPU_SOURCE ?= --find-links /opt/wheels
LOCK_FLAGS ?=
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --quiet --generate-hashes --custom-compile-command 'make lock' --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 $(LOCK_FLAGS)

lock: $(STAMP)
	$(UV_COMPILE) --extra runtime --extra loadtest --extra upstream --extra dev $(TORCH_CPU_SOURCE) \
		--override requirements/torch-cpu.txt -o requirements/dev.lock
	grep -E '^[A-Za-z0-9._-]+==' requirements/dev.lock | cut -d' ' -f1 | grep -v '^torch==' > requirements/.pins
	$(UV_COMPILE) requirements/build.in -c requirements/.pins -o requirements/gateway.lock
	$(UV_COMPILE) requirements/build.in --extra runtime -c requirements/.pins -o requirements/runtime-cuda.lock
	$(UV_COMPILE) --extra runtime --extra loadtest --extra fastload -c requirements/.pins -o requirements/gpu.lock
	rm requirements/.pins
	{ printf '# pip alone, as dev.lock pins it: `make install` upgrades the venv'"'"'s pip with it first. Written by make lock.\n'; \
		awk '/^pip==/{p=1} p{print} p && !/\\$$/{exit}' requirements/dev.lock; } > requirements/pip.lock

lock-upgrade:
	$(MAKE) lock LOCK_FLAGS=--upgrade

images:
	@test -n "$(CONTAINER_TOOL)" || { echo "make images: neither docker nor podman is on PATH; install one" >&2; exit 1; }
	@command -v $(CONTAINER_TOOL) >/dev/null || { echo "make images: $(CONTAINER_TOOL) not found" >&2; exit 1; }
	@$(CONTAINER_TOOL) info >/dev/null 2>&1 \
		|| { echo "make images: $(CONTAINER_TOOL) cannot reach its engine ('$(CONTAINER_TOOL) info' fails)" >&2; exit 1; }
	@test -n "$(VERSION)" || { echo "make images: no appVersion in $(CHART)/Chart.yaml; set VERSION" >&2; exit 1; }
	$(CONTAINER_TOOL) build -f docker/gateway.Dockerfile -t $(GATEWAY_IMAGE):$(VERSION) .
	$(CONTAINER_TOOL) build -f docker/runtime.Dockerfile -t $(RUNTIME_IMAGE):$(VERSION) .

clean:
	rm -rf $(VENV) $(DEMO_MODEL) .cache .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
