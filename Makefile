# kaltstart: `make run` starts the whole thing locally; `make test` checks everything. Nothing else is needed
# on a fresh machine with Python 3.11+.

PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_MODEL := .demo-model

.PHONY: run test lint typecheck install demo-model clean

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

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(DEMO_MODEL) .cache .mypy_cache .ruff_cache .pytest_cache
