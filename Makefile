# `make demo` and `make test` do all set-up: a .venv is created when missing, torch is
# installed first from the pinned CPU wheel (a looser spec would pull a multi-GB CUDA build),
# then the package with its test extra. The stamp re-runs the install when pyproject changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.genctr-installed

.PHONY: demo test install clean-cache

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/genctr demo

test: $(STAMP)
	$(PY) -m pytest -q

clean-cache:
	rm -rf .cache/genctr
