# Two commands matter: `make demo` and `make test`. Both bootstrap .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the test command also installs the scale-out engines (pyspark, dask, nats-py: docs/scaling.md), so CI runs
# their suites; the demo does without them. pip caches the built wheels between runs.
SCALE_STAMP := $(VENV)/.installed-scale

.PHONY: demo test figures lint format bench evaluate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch==2.13.0 resolves to the local CPU wheel; a plain `torch` would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(SCALE_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,scale]'
	touch $(SCALE_STAMP)

demo: $(STAMP)
	$(BIN)/mlsd demo

test: $(SCALE_STAMP)
	# Debian's headless Chromium for the dashboard's browser test (no-op when installed; needs root or sudo).
	bash scripts/install-browser.sh || echo "warning: chromium not installed; the browser test will skip" >&2
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

# The README's figures, rerun: the deterministic ones (quality) are checked against the README's text
# (exit 1 on a mismatch); `make figures GROUPS="quality experiments bench demo"` reruns everything.
FIGURES_DIR ?= /tmp/mlsd-figures
GROUPS ?= quality
figures: $(STAMP)
	MLSD=$(BIN)/mlsd bash benchmarks/readme_figures.sh $(FIGURES_DIR) $(GROUPS)
	$(BIN)/python benchmarks/check_figures.py $(FIGURES_DIR)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
