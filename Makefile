# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
UV := .tools/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
# `make run PORT=18080` or `VISIONA_PORT=18080 make run`: unset here, the server's own
# settings decide (VISIONA_HOST / VISIONA_PORT, .env, else 127.0.0.1:8080).
HOST ?=
PORT ?=

.PHONY: install install-dev run test lint format bench screenshots system-deps clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

# Two stamps: .installed = what running needs (no dev group), .installed-dev = that plus
# the test and lint tools. `uv sync` is exact, so a runtime-only sync removes the tools;
# .installed-dev depends on .installed and is rebuilt after it. --compile-bytecode writes
# the .pyc files at install time: without them (PYTHONDONTWRITEBYTECODE, a read-only
# venv) every `visiona` run recompiles typer, click and pydantic and takes 2-3x longer.
$(VENV)/.installed: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --no-dev --compile-bytecode --python $(PYTHON)
	rm -f $(VENV)/.installed-dev
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(UV) sync --frozen --compile-bytecode --python $(PYTHON)
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

system-deps:
	bash scripts/system-deps.sh

run: install
	$(VENV)/bin/visiona serve$(if $(HOST), --host $(HOST))$(if $(PORT), --port $(PORT))

lint: install-dev
	$(VENV)/bin/ruff check visiona tests bench testkit
	$(VENV)/bin/ruff format --check visiona tests bench testkit
	$(VENV)/bin/mypy visiona tests bench testkit

format: install-dev
	$(VENV)/bin/ruff format visiona tests bench testkit
	$(VENV)/bin/ruff check --fix visiona tests bench testkit

test: install-dev system-deps lint
	$(VENV)/bin/pytest

bench: install-dev system-deps
	$(VENV)/bin/python -m bench

# the console's pages with demo data, rendered by Chromium into docs/screenshots/
screenshots: install-dev system-deps
	$(VENV)/bin/python -m tests.console.screenshots docs/screenshots

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache testkit/bin
