# Two entry points on a fresh machine (Python 3.11 + pip, no GPU, no conda):
#   make book   -> set up .venv, then build the executed book into _build/html
#   make test   -> set up .venv, then run the test suite
PY   ?= python3.11
VENV ?= .venv
BIN  := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup book test clean-book

setup: $(VENV)/.installed

# torch from the PyTorch CPU wheel index when it is reachable (no CUDA libraries); otherwise from the
# package index, whose Linux torch wheel is the CUDA build (it pulls the nvidia-* wheels, ~4.4 GB
# installed). TORCH_INDEX= (empty) skips the first try.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

$(VENV)/.installed: pyproject.toml requirements-cpu.txt
	$(PY) -m venv $(VENV)
	@if [ -n "$(TORCH_INDEX)" ]; then \
	  $(BIN)/pip install --timeout 15 --retries 1 --index-url $(TORCH_INDEX) -r requirements-cpu.txt \
	  || echo "note: $(TORCH_INDEX) not reachable: torch comes from the package index (the CUDA build)"; \
	fi
	$(BIN)/pip install --upgrade-strategy only-if-needed -r requirements-cpu.txt -e ".[dev]"
	@$(BIN)/python -c "import torch; print('installed torch', torch.__version__, '(CUDA build)' if torch.version.cuda else '(CPU build)')"
	touch $@

book: setup
	$(BIN)/jupyter-book build . -W -n --keep-going

test: setup
	$(BIN)/pytest

clean-book:
	rm -rf _build
