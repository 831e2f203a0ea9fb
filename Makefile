# Set-up and entry points. `make demo` and `make test` install what they need
# into .venv first (once; again when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BACKENDS ?= tensorflow jax torch
PYTEST_ARGS ?=

.PHONY: install demo test

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: 2.13.0 is a CPU build on this machine's disk; installed
	# later as a dependency, pip would fetch a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	# setuptools (84) boxes an "Editable installation" notice into every
	# install; pip's own messages are not Python warnings and still show.
	PYTHONWARNINGS=ignore $(BIN)/pip install --quiet \
	  -e ".[tensorflow,jax,torch,test,demo]"
	touch $@

install: $(VENV)/.installed

demo: install
	KERAS_BACKEND=jax $(BIN)/python examples/train_digits.py

# The whole suite once per backend, the backends side by side (see
# tests/run_backends.sh; PARALLEL=0 runs them one after another).
PARALLEL ?= 1
test: install
	PARALLEL=$(PARALLEL) tests/run_backends.sh $(BIN)/python "$(BACKENDS)" \
	  $(PYTEST_ARGS)
