# Two commands do all set-up on a fresh Debian machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The demo needs only the package; tests, lint and benchmarks need the dev extra.
BASE_STAMP := $(VENV)/.installed-base
DEV_STAMP := $(VENV)/.installed-dev
# The benchmarks' peers (pgqueuer, procrastinate) come with the bench extra.
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test lint bench bench-ab system-deps venv clean

$(BASE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(DEV_STAMP): $(BASE_STAMP)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(BENCH_STAMP): $(DEV_STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

venv: $(DEV_STAMP)

system-deps:
	.ci/install-system-deps

demo: $(BASE_STAMP)
	$(BIN)/ceranubis demo

test: venv system-deps
	$(BIN)/python -m pytest -p no:cacheprovider

lint: venv
	$(BIN)/ruff check ceranubis_jupyter tests benchmarks notebooks
	$(BIN)/ruff format --check ceranubis_jupyter tests benchmarks notebooks
	$(BIN)/mypy

bench: $(BENCH_STAMP) system-deps
	$(BIN)/python benchmarks/run.py

# A/B against an earlier commit in alternating blocks: make bench-ab BASE=<rev>
BASE ?= HEAD~1
bench-ab: $(BENCH_STAMP)
	$(BIN)/python benchmarks/ab.py --base $(BASE)

clean:
	rm -rf $(VENV) build *.egg-info
