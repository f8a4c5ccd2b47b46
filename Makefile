# Two commands on a fresh machine:  make quickstart   and   make test
# Each creates (or reuses) the virtual environment in $(VENV) and installs what it needs.
# Another torch build: make test TORCH_SPEC=torch==2.13.0 TORCH_INDEX=https://download.pytorch.org/whl/cu128
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=

.PHONY: venv test quickstart bench clean-venv

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[test,hf]"
	touch $@

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

quickstart: venv
	PATH="$(abspath $(VENV))/bin:$$PATH" bash examples/pretrain_gpt/quickstart.sh

bench: venv
	$(PY) -m bench.model_overhead
	$(PY) -m bench.pipeline
	$(PY) -m bench.compression
	$(PY) -m bench.data --quick

clean-venv:
	rm -rf $(VENV)
