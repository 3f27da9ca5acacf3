# The README's two commands: `make run` (the embedded default experiment) and `make test`.
# Both create .venv on first use and install kdmem into it from this checkout.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch; a GPU machine installs its own torch first and then `pip install -e .`.
TORCH ?= torch==2.13.0

.PHONY: run smoke test test-all

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

run: $(VENV)/.installed
	$(BIN)/kdmem run

smoke: $(VENV)/.installed
	$(BIN)/kdmem run --preset smoke

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

test-all: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "slow or not slow"
