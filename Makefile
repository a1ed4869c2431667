# Two commands on a fresh machine: `make up` starts clickwatch, `make test` runs every check.
# Python 3.12 comes from pyenv here (.python-version selects it through the shims) or from PATH.
PYTHON ?= python3.12
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test system-deps lint typecheck unit bench clean

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 12), f"clickwatch needs Python >= 3.12, {sys.executable} is {sys.version.split()[0]}"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/clickwatch up

system-deps:
	scripts/system-deps

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test: system-deps lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/capture_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
