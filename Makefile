# The two commands of the README, and what they need.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# Trust this machine's CA bundle inside the test image build (needed behind a
# TLS-intercepting proxy; harmless elsewhere).
export KIISRV_TEST_EXTRA_CA ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)

.PHONY: serve test lint

$(BIN)/kiisrv: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

serve: $(BIN)/kiisrv
	$(BIN)/kiisrv serve

lint: $(BIN)/kiisrv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: lint
	$(BIN)/pytest
