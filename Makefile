# Both entry points build .venv from nothing. torch is pinned (2.13.0) in pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev,hf]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/biossl demo --out demo_output

lint: $(STAMP)
	$(BIN)/ruff check biossl tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV) demo_output .pytest_cache .mypy_cache .ruff_cache
