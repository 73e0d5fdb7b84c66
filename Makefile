# Two commands: `make demo` runs the whole pipeline on the bundled sample chat; `make test` runs the test suite.
# Both create or reuse the virtual environment in .venv (scripts/setup.sh).
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.talkalike-installed

.PHONY: demo test setup

$(STAMP): pyproject.toml scripts/setup.sh talkalike/sources/_whatsapp_scan.c
	scripts/setup.sh $(VENV)
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/talkalike demo

test: $(STAMP)
	$(BIN)/python -m pytest -q
