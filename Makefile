# The README's two commands: `make run` (the embedded default experiment) and `make test`.
# Both create .venv on first use and install kdmem into it from this checkout.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch; a GPU machine installs its own torch first and then `pip install -e .`.
TORCH ?= torch==2.13.0
# Every package's version, as the README's numbers were measured with; pyproject.toml keeps ranges.
LOCK := requirements-cpu.lock

.PHONY: run smoke paper-mini pilot-mini lint format test test-all lock

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)" -c $(LOCK)
	$(BIN)/python -m pip install --quiet -e ".[test]" -c $(LOCK)
	touch $@

# Refresh the lock: resolve pyproject.toml's ranges afresh in a scratch environment and freeze it.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet "$(TORCH)"
	.lock-venv/bin/python -m pip install --quiet -e ".[test]"
	{ echo "# make lock: the versions make run and .ci/run install (pip install -c $(LOCK)); pyproject.toml keeps ranges."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable; } > $(LOCK)
	rm -rf .lock-venv

run: $(VENV)/.installed
	$(BIN)/kdmem run

smoke: $(VENV)/.installed
	$(BIN)/kdmem run --preset smoke

paper-mini: $(VENV)/.installed
	$(BIN)/kdmem run --preset paper-mini

pilot-mini: $(VENV)/.installed
	$(BIN)/kdmem run --preset pilot-mini

# ruff, configured in pyproject.toml (line length 119): CI runs this before the tests.
lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Apply the formatter and ruff's safe fixes.
format: $(VENV)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

test-all: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "slow or not slow"
