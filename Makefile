# Two entry points (see README "Set up"): `make main` runs the main job, `make test` the tests.
# Both create .venv and install the project into it first when needed.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch==2.13.0 first: a CPU build is on this kind of machine; an unpinned torch pulls CUDA.
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[train,dev]" --config-settings editable_mode=strict
	touch $(STAMP)

.PHONY: install main test lint bench
install: $(STAMP)

main: $(STAMP)
	$(BIN)/modi-train

test: $(STAMP)
	$(BIN)/pip install -q -e ".[train,dev]" --config-settings editable_mode=strict
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/modi-bench
