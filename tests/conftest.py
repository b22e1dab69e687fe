"""Shared fixtures: tiny random models built in the test (no downloads), real models behind a marker."""

from __future__ import annotations

import os

import pytest
import torch

from benchmarks import _common
from benchmarks._common import random_lm, word_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _tiny_tokenizer():
    """A word-level tokenizer over a small fixed vocabulary (100 entries) so texts decode readably."""
    words = [f"w{i}" for i in range(90)] + ["STOP", "hello", "world", "?", "!", "user", "assistant"]
    return word_tokenizer(
        words,
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant {% endif %}",
    )


def make_tiny(arch: str = "qwen2", seed: int = 0, layers: int = 4):
    """A tiny randomly initialised causal LM with odd, distinct sizes (hidden 32, MLP 37, 4 heads, 2 KV heads)."""
    from l2reason.models import LoadedModel

    tok = _tiny_tokenizer()
    ids = dict(pad_token_id=0, eos_token_id=1, bos_token_id=1, tie_word_embeddings=False)
    model = random_lm((len(tok), 32, 37, layers, 4, 2), arch=arch, seed=seed, **ids)
    model.generation_config.eos_token_id = 1
    return LoadedModel(model=model, tokenizer=tok, model_id=f"tiny-{arch}-{seed}", source="random")


def run_config(be, dataset: str = "chain_sum", **fields):
    """An evaluation ``RunConfig`` for backend ``be`` (its model id and layer count), on chain_sum by default."""
    return _common.run_config(be, dataset, **fields)


class FailingController:
    """A controller whose every step raises ``RuntimeError("boom")``: a technique failing mid-decode."""

    layers = [1]

    def __init__(self, needs_mlp: bool = False):
        self.needs_mlp = needs_mlp

    def step(self, layer, x, n, ctx):
        raise RuntimeError("boom")

    def report(self, row):
        return {}


@pytest.fixture
def fail_alrr():
    """``fail_alrr(backend, needs_mlp=False)``: the backend's ``alrr`` requests get a :class:`FailingController`."""

    def install(be, needs_mlp: bool = False) -> None:
        be.controller_factories["alrr"] = lambda spec, **kw: FailingController(needs_mlp)

    return install


@pytest.fixture(scope="session")
def tiny():
    return make_tiny()


@pytest.fixture(scope="session")
def tiny_backend(tiny):
    from l2reason.backends.hf import HFBackend

    return HFBackend(tiny)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("L2REASON_REAL", "") in ("1", "all"):
        return
    selected = os.environ.get("L2REASON_REAL", "")
    skip = pytest.mark.skip(reason="real-model test: set L2REASON_REAL=1 (all) or run `make test-real`")
    for item in items:
        if "real" in item.keywords and not (selected == "ci" and "ci" in item.keywords):
            item.add_marker(skip)
