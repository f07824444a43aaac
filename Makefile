# pricefit: `make demo` runs the retrain flow on the synthetic demo catalog; `make test` runs the tests.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# real Amazon listings for tests and benchmarks (never copied into the repo)
export PRICEFIT_SHARED_DATA ?= $(abspath ../shared/data)
PYTEST_ARGS ?=

.PHONY: demo test test-fast install browser clean help

help:
	@echo "make demo   - run the retrain flow on the demo profile (creates .venv on first use)"
	@echo "make test   - run the test suite (installs Chromium for the UI test when missing)"
	@echo "make clean  - remove .venv and runs/"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	# torch==2.13.0 is pinned: on a CPU machine pip takes the local CPU wheel
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

browser:
	bash scripts/install-browser.sh

demo: $(STAMP)
	$(BIN)/pricefit run --profile demo

test: $(STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not browser and not server" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs
