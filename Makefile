# mailplan: `make test` runs the suite, `make check` adds lint and types; `make interop`
# runs only the tests that need BIND, Dovecot or swaks (tests/interop.py).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: test interop check lint types bench clean run

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

interop: $(STAMP)
	$(BIN)/python -m pytest -q -m interop

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy

check: lint types test

bench: $(STAMP)
	$(BIN)/python bench/compile_scale.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

run: $(STAMP)
	$(BIN)/mailplan serve sites/example.com --dev
