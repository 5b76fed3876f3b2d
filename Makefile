# Two commands for a newcomer: `make demo` and `make test`.
# Both create .venv when missing. On a machine without CUDA, torch==2.13.0 (the local CPU build)
# is installed before the project so that the project's torch range is already satisfied.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -m "not slow"

.PHONY: setup setup-test setup-docs demo test docs bench-stream clean

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
	$(PY) -m pip install -q -e ".[test,bench,docs]"
	@touch $@

$(VENV)/.installed-docs: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install -q -e ".[docs]"
	@touch $@

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test
setup-docs: $(VENV)/.installed-docs

demo: setup
	$(VENV)/bin/cellweave demo

# pytest's exit code is kept in .pytest-rc so that CI can report it exactly (make itself returns 2).
test: setup-test
	@rm -f .pytest-rc; $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; echo $$rc > .pytest-rc; exit $$rc

# The documentation site in docs/_build/html: every warning (a broken cross-reference, a bad docstring) is an error,
# and the tutorial notebooks are executed, so a failing cell fails the build. SPHINX_ARGS adds options (e.g. -j 2).
SPHINX_ARGS ?=
docs: setup-docs
	@rm -rf docs/generated
	OMP_NUM_THREADS=1 $(PY) -m sphinx -b html -E -W --keep-going -n $(SPHINX_ARGS) docs docs/_build/html

clean:
	rm -rf $(VENV) .pytest_cache .pytest-rc docs/_build docs/generated docs/jupyter_execute
