# The whole set-up on a fresh machine is `make demo` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	MUJOCO_GL=egl $(BIN)/agent demo --out runs/demo

test: $(STAMP)
	MUJOCO_GL=egl $(BIN)/python -m mypy agent sims robot
	MUJOCO_GL=egl $(BIN)/python -m pytest -q tests

bench: $(STAMP)
	MUJOCO_GL=egl $(BIN)/python bench/foundation.py

clean:
	rm -rf $(VENV) runs
