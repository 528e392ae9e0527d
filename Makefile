# One entry point for a fresh machine: `make demo` and `make test` create the venv themselves.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first and alone: the pin takes the local CPU wheel, and deepspeed's setup.py looks for torch.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" ; test $${PIPESTATUS[0]} -eq 0
	$(BIN)/pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" ; test $${PIPESTATUS[0]} -eq 0
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/genrec pipeline --config configs/local.yaml

test: install
	$(BIN)/pytest -q tests

clean:
	rm -rf $(VENV) genrec-runs .pytest_cache
