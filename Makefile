# Two commands for a newcomer: `make demo` and `make test`.
# Both create .venv when missing. On a machine without CUDA, torch==2.13.0 (the local CPU build)
# is installed before the project so that the project's torch range is already satisfied.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -m "not slow"

.PHONY: setup setup-test demo test bench-stream clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.torch: | $(VENV)/bin/python
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "torch already present: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "CUDA machine: installing the default torch build"; $(PY) -m pip install -q torch; \
	else \
		echo "no CUDA: installing torch==2.13.0 (CPU build)"; $(PY) -m pip install -q torch==2.13.0; \
	fi
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test,bench]"
	@touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

demo: setup
	$(VENV)/bin/cellweave demo

# pytest's exit code is kept in .pytest-rc so that CI can report it exactly (make itself returns 2).
test: setup-test
	@rm -f .pytest-rc; $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; echo $$rc > .pytest-rc; exit $$rc

clean:
	rm -rf $(VENV) .pytest_cache .pytest-rc
