# Two entry points on a fresh machine (Python 3.11 + pip, no GPU, no conda):
#   make book   -> set up .venv, then build the executed book into _build/html
#   make test   -> set up .venv, then run the test suite
PY   ?= python3.11
VENV ?= .venv
BIN  := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup book test clean-book

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-cpu.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade-strategy only-if-needed -r requirements-cpu.txt -e ".[dev]"
	touch $@

book: setup
	$(BIN)/jupyter-book build . -W -n --keep-going

test: setup
	$(BIN)/pytest

clean-book:
	rm -rf _build
