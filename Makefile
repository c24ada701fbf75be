# Each target sets itself up from a fresh clone: a .venv with the project and its test
# extras, installed only when pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MUTATE_STAMP := $(VENV)/.installed-mutate

# The page's chart library is committed in static/vendor/; package-lock.json pins the
# version it must be, byte for byte (tests/unit/test_vendor.py checks).
VENDOR := static/vendor

.PHONY: test demo lint typecheck bench bench-perf mutate clean vendor

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# mutmut for `make mutate`, on top of the test extras.
$(MUTATE_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,mutate]'
	touch $(MUTATE_STAMP)

# After changing uplot's version in package.json: `make vendor` updates the lockfile and
# copies the two built files in, to be committed together.
vendor:
	npm install --no-audit --no-fund --loglevel=error
	cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css $(VENDOR)/

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/zai-proxy demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/limiter.py
	$(BIN)/python bench/limiter_e2e.py
	$(BIN)/python bench/tokens.py
	$(BIN)/python bench/dashboard.py
	$(BIN)/python bench/perf.py $(PERF_ARGS)

# Only the comparison with direct, nginx and LiteLLM: `make bench-perf PERF_ARGS=--quick`
# or PERF_ARGS='--soak 120'.  LiteLLM goes into bench/.venv-litellm on first use.
bench-perf: $(STAMP)
	$(BIN)/python bench/perf.py $(PERF_ARGS)

# Mutation testing of the pure cores against their unit tests: the score per module and
# the surviving mutants (bench/mutate.py holds the scope; a full run takes about 10 min
# on 2 cores).  One module: `make mutate MUTATE_ARGS=proxy/paths.py`.
mutate: $(MUTATE_STAMP)
	$(BIN)/python bench/mutate.py $(MUTATE_ARGS)

clean:
	rm -rf $(VENV) bench/.venv-litellm mutants .pytest_cache .mypy_cache .ruff_cache test-artifacts node_modules
