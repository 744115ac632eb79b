# Two entry points (see README): `make demo` runs the main job, `make test` runs the tests.
# Both build their own virtual environments on first use, from the constraints committed in
# requirements/ (so a new release of any dependency cannot break a fresh machine).
PYTHON ?= python3
VENV ?= .venv
LS_VENV ?= .venv-label-studio
FAST_VENV ?= .venv-fast
TOOLS_VENV ?= .venv-tools
PY := $(VENV)/bin/python
# The data root (train/, eval/<NAME>/); the same default as sqsam_core.config.data_root().
SQSAM_DATA ?= ../shared/data
REQ := requirements
# pip-compile's options for every constraints file: no index URLs or local paths in the output.
COMPILE = $(TOOLS_VENV)/bin/pip-compile -q --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links

.PHONY: install install-label-studio test test-fast lint demo eval bench clean constraints test-latest check-pins

# The dev/test venv: the project (editable) with every extra; torch is the CPU build (dev.txt pins it).
$(VENV)/.installed: pyproject.toml $(REQ)/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip -c $(REQ)/dev.txt
	$(PY) -m pip install -q -c $(REQ)/dev.txt -e ".[train,label-studio,cvat,bench,dev]"
	touch $@

install: $(VENV)/.installed

# Label Studio pins many packages of its own: it lives in a venv of its own.
$(LS_VENV)/.installed: $(REQ)/label-studio.in $(REQ)/label-studio.txt
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --upgrade pip -c $(REQ)/label-studio.txt
	$(LS_VENV)/bin/python -m pip install -q -c $(REQ)/label-studio.txt -r $(REQ)/label-studio.in
	touch $@

install-label-studio: $(LS_VENV)/.installed

# Every installed distribution must be the version its constraints file names.
check-pins: install install-label-studio
	$(PY) .ci/check_pins.py $(REQ)/dev.txt
	$(LS_VENV)/bin/python .ci/check_pins.py $(REQ)/label-studio.txt

test: install install-label-studio
	SQSAM_LABEL_STUDIO_BIN=$(abspath $(LS_VENV))/bin/label-studio $(PY) -m pytest -q

# The inner loop: a venv without torch or Label Studio (the core, both adapters, onnx for the fixture
# model, the Label Studio SDK as a decoder), every test but the e2e and train tiers. `make test` runs all.
$(FAST_VENV)/.installed: pyproject.toml $(REQ)/dev.txt
	$(PYTHON) -m venv $(FAST_VENV)
	$(FAST_VENV)/bin/python -m pip install -q --upgrade pip -c $(REQ)/dev.txt
	$(FAST_VENV)/bin/python -m pip install -q -c $(REQ)/dev.txt -e ".[label-studio,cvat]" pytest pyyaml onnx label-studio-sdk matplotlib
	touch $@

test-fast: $(FAST_VENV)/.installed
	$(FAST_VENV)/bin/python -m pytest -q -m "not e2e and not train"

# Lint (settings in pyproject.toml's [tool.ruff]); .ci/run runs it before the tests.
lint: install
	$(VENV)/bin/ruff check .

demo: install install-label-studio
	SQSAM_LABEL_STUDIO_BIN=$(abspath $(LS_VENV))/bin/label-studio $(VENV)/bin/sqsam demo

eval: install
	$(VENV)/bin/sqsam eval $(SQSAM_DATA)/eval/GrabCut --json eval-grabcut.json
	$(VENV)/bin/sqsam eval $(SQSAM_DATA)/eval/Berkeley --json eval-berkeley.json

bench: install
	$(VENV)/bin/sqsam bench

$(TOOLS_VENV)/.installed:
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install -q "pip-tools>=7.4"
	touch $@

# Refresh every constraints file from the newest releases (run `make test-latest` first).
constraints: $(TOOLS_VENV)/.installed
	$(COMPILE) --upgrade --extra train --extra label-studio --extra cvat --extra bench --extra dev \
		-o $(REQ)/dev.txt pyproject.toml $(REQ)/torch-cpu.in
	$(COMPILE) --upgrade --extra label-studio --extra dask -o $(REQ)/docker.txt pyproject.toml
	$(COMPILE) --upgrade -o $(REQ)/label-studio.txt $(REQ)/label-studio.in

# Newest releases, in throw-away venvs: what `make constraints` would pin, tested before it is.
LATEST := .latest
test-latest: $(TOOLS_VENV)/.installed
	rm -rf $(LATEST) && mkdir -p $(LATEST)/requirements
	cp $(REQ)/*.in $(LATEST)/requirements/
	$(COMPILE) --upgrade --extra train --extra label-studio --extra cvat --extra bench --extra dev \
		-o $(LATEST)/requirements/dev.txt pyproject.toml $(REQ)/torch-cpu.in
	$(COMPILE) --upgrade -o $(LATEST)/requirements/label-studio.txt $(REQ)/label-studio.in
	$(MAKE) test REQ=$(LATEST)/requirements VENV=$(LATEST)/venv LS_VENV=$(LATEST)/venv-label-studio

clean:
	rm -rf $(VENV) $(LS_VENV) $(FAST_VENV) $(TOOLS_VENV) $(LATEST)
