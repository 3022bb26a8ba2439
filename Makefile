# Two entry points (see README "Set up"): `make main` runs the main job, `make test` the tests.
# Both create .venv and install the project into it first when needed.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The install is strict-editable (new modules and config files are invisible until reinstalled),
# so the stamp's name hashes pyproject.toml *and* the names of the packages' .py/.yaml files:
# `make test` reinstalls when either changes, and only then.
PKG_DIRS := $(shell sed -n '/^\[tool.setuptools.package-dir\]/,/^$$/p' pyproject.toml | sed -n 's/.*= *"\(.*\)"/\1/p')
SRC_LIST := $(shell find $(PKG_DIRS) \( -name '*.py' -o -name '*.yaml' \) -not -path '*/__pycache__/*' 2>/dev/null | LC_ALL=C sort)
STAMP := $(VENV)/.installed-$(shell (cat pyproject.toml; echo $(SRC_LIST)) | cksum | cut -d' ' -f1)
EXTRAS := train,server,dev,docs

$(STAMP): pyproject.toml
	@echo "== [1/4] virtual environment $(VENV)"
	$(PY) -m venv $(VENV)
	@echo "== [2/4] pip"
	$(BIN)/pip install -q --upgrade pip
	@echo "== [3/4] torch 2.13.0 (CPU build; ~1-2 min on a fresh machine)"
	# torch==2.13.0 first: a CPU build is on this kind of machine; an unpinned torch pulls CUDA.
	$(BIN)/pip install --progress-bar on "torch==2.13.0"
	@echo "== [4/4] modi with extras [$(EXTRAS)] (~2-3 min on a fresh machine)"
	$(BIN)/pip install --progress-bar on -e ".[$(EXTRAS)]" --config-settings editable_mode=strict
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

.PHONY: install main test lint bench docs print-stamp
install: $(STAMP)

# The install stamp's path (tests/test_hygiene.py checks that it follows the package's files).
print-stamp:
	@echo $(STAMP)

main: $(STAMP)
	$(BIN)/modi-train

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest tests

# The documentation site (mkdocs.yml, docs/) into site/; warnings are errors.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

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
