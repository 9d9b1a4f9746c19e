# The two commands of the README: `make book` and `make test`. Each creates or reuses ./.venv.
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= quick
BIN := $(VENV)/bin
STAMP := $(VENV)/.mexit-installed

.PHONY: book test install clean-book

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(STAMP)

install: $(STAMP)

book: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/mexit book --profile $(PROFILE)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

clean-book:
	rm -rf _build book/generated
