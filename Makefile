# `make demo` runs the whole pipeline on the bundled sample chat; `make test` runs the test suite; `make lint` runs ruff.
# Each creates or reuses the virtual environment in .venv (scripts/setup.sh); `make test` also installs the test tools
# (scripts/test-tools.sh). VERBOSE=1 shows the installers' warnings and the libraries' logs (talkalike --verbose).
# `make test-lowest` runs the training, decoding and export tests again with the lowest dependency versions pyproject.toml
# allows, in a fresh .venv-lowest.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.talkalike-installed

.PHONY: demo test test-lowest lint setup

$(STAMP): pyproject.toml scripts/setup.sh talkalike/sources/_whatsapp_scan.c
	$(if $(VERBOSE),,PYTHONWARNINGS=ignore )scripts/setup.sh $(VENV)
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/talkalike $(if $(VERBOSE),--verbose )demo

test: $(STAMP)
	scripts/test-tools.sh
	$(BIN)/python -m pytest -q

test-lowest:
	scripts/test-lowest.sh

lint: $(STAMP)
	$(BIN)/ruff check .
