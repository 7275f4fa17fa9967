# The README's two commands: `make demo` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
RUNTIME ?= process
BIN := $(VENV)/bin

.PHONY: venv demo test lint servers system-deps images clean

# Debian packages first (python3-venv among them when python3 has no ensurepip).
$(BIN)/swiftdeploy: pyproject.toml | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test,dev]'
	@touch $@

venv: $(BIN)/swiftdeploy

system-deps:
	scripts/install-system-deps

servers: system-deps
	scripts/start-servers

# The original's story end to end (scripts/demo); RUNTIME=docker builds the images first.
demo: venv system-deps
	@if [ "$(RUNTIME)" = docker ]; then scripts/start-servers && $(BIN)/python scripts/build-images; fi
	$(BIN)/python scripts/demo --runtime $(RUNTIME) $(DEMO_ARGS)

test: venv servers
	$(BIN)/python -m pytest

# ruff (lint and format) and mypy, configured in pyproject.toml; .ci/run runs it before the tests.
lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf generated .swiftdeploy .demo history.jsonl audit_report.md

# Every image (swiftdeploy/base, workload, nginx, controlplane) built on this dockerd; cached by content.
images: venv servers
	$(BIN)/python scripts/build-images
