# Two entry points (see README): `make demo` runs the main job, `make test` runs the tests.
# Both build their own virtual environments from this repository's files on first use.
PYTHON ?= python3
VENV ?= .venv
LS_VENV ?= .venv-label-studio
PY := $(VENV)/bin/python

.PHONY: install install-label-studio test demo eval bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0   # the CPU wheel; never an unpinned torch
	$(PY) -m pip install -q -e ".[train,label-studio,cvat,bench,dev]"
	touch $@

install: $(VENV)/.installed

# Label Studio pins many packages of its own: it lives in a venv of its own.
$(LS_VENV)/.installed:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LS_VENV)/bin/python -m pip install -q "label-studio>=1.20"
	touch $@

install-label-studio: $(LS_VENV)/.installed

test: install install-label-studio
	SQSAM_LABEL_STUDIO_BIN=$(abspath $(LS_VENV))/bin/label-studio $(PY) -m pytest -q

demo: install install-label-studio
	SQSAM_LABEL_STUDIO_BIN=$(abspath $(LS_VENV))/bin/label-studio $(VENV)/bin/sqsam demo

eval: install
	$(VENV)/bin/sqsam eval ../shared/data/eval/GrabCut --json eval-grabcut.json
	$(VENV)/bin/sqsam eval ../shared/data/eval/Berkeley --json eval-berkeley.json

bench: install
	$(VENV)/bin/sqsam bench

clean:
	rm -rf $(VENV) $(LS_VENV)
