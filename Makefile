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
	$(BIN)/pip install -q -e ".[train,server,dev]" --config-settings editable_mode=strict
	touch $(STAMP)

.PHONY: install main test lint bench
install: $(STAMP)

main: $(STAMP)
	$(BIN)/modi-train

test: $(STAMP)
	$(BIN)/pip install -q -e ".[train,server,dev]" --config-settings editable_mode=strict
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/modi-bench

# Hydra's Ray launcher (the `ray` extra) in its own venv: it pins cloudpickle<3 and adds ~320 MB.
# Not part of `test`: hydra-ray-launcher, ray>=2.60 and cloudpickle<3 are not in this machine's
# local wheel indexes, so the install needs the network (PyPI); a clean one took ~2 min here.
# Default (non-strict) editable install: only pytest runs here, and it keeps off the
# build/__editable__ tree that `test` rebuilds.
RAY_VENV ?= .venv-ray
RAY_BIN := $(RAY_VENV)/bin
RAY_STAMP := $(RAY_VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(RAY_STAMP): pyproject.toml
	$(PY) -m venv $(RAY_VENV)
	echo '*' > $(RAY_VENV)/.gitignore
	$(RAY_BIN)/pip install -q --upgrade pip
	$(RAY_BIN)/pip install -q "torch==2.13.0"
	$(RAY_BIN)/pip install -q -e ".[train,dev,ray]"
	$(RAY_BIN)/pip check
	touch $(RAY_STAMP)

.PHONY: install-ray test-ray
install-ray: $(RAY_STAMP)

test-ray: $(RAY_STAMP)
	$(RAY_BIN)/python -m pytest tests/test_ray_sweep.py
