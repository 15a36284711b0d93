# MarketPrism: two commands on a fresh machine.
#   make run   - create .venv, install, run MarketPrism on the embedded default (NATS + chDB)
#   make test  - create .venv, install dev extras, lint, type-check (mypy), run the whole suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# two workers: the suite waits a lot (a 30 s store outage, Dagster daemon intervals), so they overlap well
PYTEST_ARGS ?= -n 2 --dist worksteal

.PHONY: run demo test lint bench clean-data

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 required, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/marketprism dev

demo: $(STAMP)
	$(BIN)/marketprism demo

test: $(STAMP)
	bash scripts/system-deps.sh
	$(BIN)/ruff check .
	$(BIN)/mypy
	@# bytecode written once: the suite starts hundreds of Python processes (writers, collectors, Dagster
	@# run workers), which otherwise each compile the package again where PYTHONDONTWRITEBYTECODE is set
	$(BIN)/python -m compileall -q marketprism_dagster sensors resources tests benchmarks
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# every benchmark; bench_soak runs collector + writer + NATS + chDB at ~50 and ~5k rows/s (BENCH=soak: only it)
bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH)

clean-data:
	rm -rf .marketprism
