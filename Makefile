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

.PHONY: run test lint typecheck install demo-model images clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: this release's CPU build is what dev machines and CI carry; a bare `torch` would
	# pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[runtime,loadtest,dev]'
	touch $@

install: $(STAMP)

$(DEMO_MODEL)/config.json: | $(STAMP)
	$(BIN)/python -m runtime.demo_model --out $(DEMO_MODEL)

demo-model: $(DEMO_MODEL)/config.json

run: $(STAMP) $(DEMO_MODEL)/config.json
	KALTSTART_CONFIG=$${KALTSTART_CONFIG:-kaltstart.toml} $(BIN)/python -m gateway

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-logo

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest

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
