# The two set-up commands README.md names: `make run` and `make test`.
PYTHON ?= python3

.PHONY: install install-test run test

install:
	$(PYTHON) -m pip install -e .

install-test:
	$(PYTHON) -m pip install -e ".[test]"

run: install
	vlpbench run experiments/quickstart.yaml

test: install-test
	$(PYTHON) -m pytest -q
