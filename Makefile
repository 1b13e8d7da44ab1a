# The two set-up commands of README.md. Both bootstrap .venv from nothing on a fresh clone.
#   make reproduce   # create .venv if missing, install, run the smoke profile, render the manuscript
#   make test        # the test suite (what CI runs)
PYTHON  ?= python3
VENV    ?= .venv
PROFILE ?= smoke
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp

.PHONY: reproduce test test-fast lint install export clean-nbs bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel lies on disk; an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

reproduce: install
	$(BIN)/xai-hsg reproduce --profile $(PROFILE)

# the library is formatted and lint-clean (ruff, config in pyproject.toml), then every test, slowest ten listed
test: install lint
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=10 tests

# the fast lane while editing: skips notebook execution and heavy statistics (marked slow)
test-fast: install lint
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=10 -m "not slow" tests

lint: install
	$(BIN)/ruff format --check nbs xai_hsg tests bench
	$(BIN)/ruff check xai_hsg tests bench

# notebooks -> library (format the notebooks with `ruff format nbs` first: they are the source)
export: install
	$(BIN)/nbdev-export

clean-nbs: install
	$(BIN)/nbdev-clean

bench: install
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done
