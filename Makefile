# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
UV := .tools/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
HOST ?= 127.0.0.1
PORT ?= 8080

.PHONY: install run test lint format bench screenshots system-deps clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

install: $(VENV)/.installed

system-deps:
	bash scripts/system-deps.sh

run: install
	$(VENV)/bin/visiona serve --host $(HOST) --port $(PORT)

lint: install
	$(VENV)/bin/ruff check visiona tests bench
	$(VENV)/bin/ruff format --check visiona tests bench
	$(VENV)/bin/mypy visiona

format: install
	$(VENV)/bin/ruff format visiona tests bench
	$(VENV)/bin/ruff check --fix visiona tests bench

test: install system-deps lint
	$(VENV)/bin/pytest

bench: install system-deps
	$(VENV)/bin/python -m bench

# the console's pages with demo data, rendered by Chromium into docs/screenshots/
screenshots: install system-deps
	$(VENV)/bin/python -m tests.console.screenshots docs/screenshots

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache tests/interop/bin
