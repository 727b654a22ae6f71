# Both entry points build .venv from nothing, with the exact tested versions of constraints.txt
# (pyproject.toml declares ranges; constraints.txt pins the set CI passed with).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-slow lint docs venv constraints clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,hf]"
	touch $(STAMP)

# Rewrite constraints.txt from the packages of .venv (after changing a range in pyproject.toml and testing).
constraints: $(STAMP)
	{ sed -n '1,2p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^biossl' \
	  | sed -E 's/^(torch==[0-9.]+)\+[a-z0-9]+$$/\1/'; } > constraints.txt.tmp && mv constraints.txt.tmp constraints.txt

demo: $(STAMP)
	$(BIN)/biossl demo --out demo_output

lint: $(STAMP)
	$(BIN)/ruff check biossl tests benchmarks
	$(BIN)/mypy

# The documentation site; every warning (a broken link or cross-reference, a failed autodoc import) fails it.
docs: $(STAMP)
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

test: lint docs
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV) demo_output docs/_build .pytest_cache .mypy_cache .ruff_cache
