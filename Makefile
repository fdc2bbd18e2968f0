# melalib developer commands. `make install` is the README Quick start's first command.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= outputs/demo
# nbstripout's extra keys (language_info, widgets, ...) live in the versioned .gitconfig.
NB_KEYS = $(shell git config -f .gitconfig filter.nbstripout.extrakeys)

export NO_ALBUMENTATIONS_UPDATE := 1
export MPLBACKEND := Agg

.PHONY: help install git-setup lab test test-slow test-browser demo demo-quick lint strip

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-11s %s\n", $$1, $$2}'

install:  ## create .venv and install melalib + dev tools, pinned (torch 2.14.1 / torchvision 0.29.1)
	$(PYTHON) -m venv $(VENV) && $(BIN)/pip install -c requirements/constraints.txt -e ".[dev,weights]"

git-setup:  ## once per clone: strip notebooks on commit (nbstripout filter + .gitconfig's extra keys)
	$(BIN)/nbstripout --install
	git config include.path ../.gitconfig

lab:  ## open the notebook series in JupyterLab
	$(BIN)/jupyter lab notebooks/

test:  ## the test suite (slow end-to-end runs deselected)
	$(BIN)/python -m pytest

test-slow:  ## only the slow end-to-end runs (full demo, notebooks on the real tables)
	$(BIN)/python -m pytest -m slow

test-browser:  ## JupyterLab driven by headless Chromium (apt-get install chromium)
	$(BIN)/python -m pytest -m browser

demo:  ## notebooks 01 -> 05 headless on synthetic data into $(DEMO_DIR) (minutes on 2 cores)
	$(BIN)/melalib demo --output-dir $(DEMO_DIR)

demo-quick:  ## the same series on the tiny configuration (seconds per notebook)
	$(BIN)/melalib demo --quick --output-dir $(DEMO_DIR)-quick

lint:  ## ruff, and notebooks committed without outputs
	$(BIN)/ruff check melalib tests benchmarks
	$(BIN)/nbstripout --verify --extra-keys "$(NB_KEYS)" notebooks/[0-9][0-9]_*.ipynb

strip:  ## remove outputs and execution counts from the notebooks (keeps tags, kernelspec)
	$(BIN)/nbstripout --extra-keys "$(NB_KEYS)" notebooks/[0-9][0-9]_*.ipynb
