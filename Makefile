# Two commands matter: `make demo` (the main job) and `make test` (the full suite). Both set up first.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-stamp

.PHONY: setup demo test info bench clean-venv

setup: $(STAMP)

$(STAMP): setup/install.sh setup/build_mmcv.sh setup/requirements.txt pyproject.toml
	bash setup/install.sh
	touch $@

demo: setup
	$(VENV)/bin/fourm-bench demo

DEV_STAMP := $(VENV)/.dev-stamp

$(DEV_STAMP): $(STAMP) setup/requirements-dev.txt
	$(PY) -m pip install -q -r setup/requirements-dev.txt
	touch $@

test: setup $(DEV_STAMP)
	$(PY) -m pytest -q -ra tests

info: setup
	$(VENV)/bin/fourm-bench info

bench: setup
	$(VENV)/bin/fourm-bench bench

clean-venv:
	rm -rf $(VENV)
