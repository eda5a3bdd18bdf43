# mailplan: `make test` runs the suite, `make check` adds lint and types; `make interop`
# runs only the tests that need BIND, Dovecot or swaks (tests/interop.py). `make fuzz`, for
# before a release, runs the fuzz suite (tests/test_fuzz.py) long: FUZZ_EXAMPLES examples
# of each of its properties (12,000 each by default, over 100,000 inputs in all), at random.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: test interop fuzz check lint types bench clean run

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

interop: $(STAMP)
	$(BIN)/python -m pytest -q -m interop

fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q --hypothesis-show-statistics tests/test_fuzz.py

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
