# Two commands do all set-up on a fresh machine: `make demo` (the main job) and `make test`.
VENV := .venv
BIN := $(VENV)/bin
# The CPU wheel by default, so pip never pulls several GB of CUDA packages onto a CPU machine. On a GPU machine,
# install your CUDA build of torch into .venv first (see README); an installed torch is kept.
TORCH_SPEC ?= torch==2.13.0
# The versions CI tests with, so that a new upstream release cannot break a fresh set-up; `make CONSTRAINTS= demo`
# installs the newest versions pyproject.toml allows instead.
CONSTRAINTS ?= constraints.txt

$(VENV)/installed: pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "$(TORCH_SPEC)"
	$(BIN)/pip install -e ".[dev]" $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	touch $@

.PHONY: demo test test-fast screenshots bench
demo: $(VENV)/installed
	$(BIN)/storybook --home demo demo

# Two test processes (pytest-xdist), a file at a time each, one torch thread each (tests/conftest.py), as CI runs
# them; `make test PYTEST_ARGS=` runs the suite in one process.
PYTEST_ARGS ?= -n 2 --dist loadfile
test: $(VENV)/installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/pytest -q --durations 15 $(PYTEST_ARGS)

# The inner loop while changing code: the tests not marked slow (minutes); `make test` runs them all, as CI does.
test-fast: $(VENV)/installed
	$(BIN)/pytest -q -m "not slow"

# The README's pictures (docs/screenshots/), from a book storybook-mini draws; the tests never write them. Needs
# Debian's chromium. A few minutes on a CPU.
screenshots: $(VENV)/installed
	$(BIN)/python scripts/screenshots.py

bench: $(VENV)/installed
	$(BIN)/python bench/train.py
