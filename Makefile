# Two commands on a fresh machine: `make smoke` (the smoke run) and `make test` (the tests).
# Both create the virtual environment from the pinned requirements.txt first when it is missing
# or older than requirements.txt (the stamp file records the last install).
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: venv smoke test lint

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -r requirements.txt
	touch $(STAMP)

smoke: $(STAMP)
	$(VENV)/bin/python train.py experiment=rdeic_l2 debug=smoke

test: $(STAMP)
	$(VENV)/bin/python -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
