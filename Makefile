# Two commands on a fresh clone: `make train` and `make test`. Both create .venv when it is missing.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: install train test test-slow test-full lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

train: install  ## the default run: synthetic haystack, 2 CPU cores, 8.5-14 minutes from an empty cache (by machine)
	$(PY) -m attnwsi.train $(ARGS)

test: install  ## the fast test suite: every test but the `slow` ones (under 5 minutes on 2 cores)
	WANDB_MODE=offline $(PY) -m pytest -q

test-slow: install  ## only the `slow` tests, those `make test` leaves out (pytest's status 5: none collected)
	WANDB_MODE=offline $(PY) -m pytest -q -m slow || [ $$? -eq 5 ]

test-full: install  ## everything, `slow` tests included
	WANDB_MODE=offline $(PY) -m pytest -q -m ""

lint: install
	$(PY) -m ruff check attnwsi tests experiments

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
