"""Shared fixtures: tiny random models built in the test (no downloads), real models behind a marker."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # A word-level tokenizer over a small fixed vocabulary (99 entries, odd on
    # purpose, as in transformers' own testers) so texts decode readably.
    words = [f"w{i}" for i in range(90)]
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    for extra in ["STOP", "hello", "world", "?", "!", "user", "assistant"]:
        vocab[extra] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    from tokenizers import decoders

    tk.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant {% endif %}"
    )
    return tok


def make_tiny(arch: str = "qwen2", seed: int = 0, layers: int = 4):
    """A tiny randomly initialised causal LM with odd, distinct sizes."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    from l2reason.models import LoadedModel

    tok = _tiny_tokenizer()
    V = len(tok)
    common = dict(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
        tie_word_embeddings=False,
    )
    cfg = Qwen2Config(**common) if arch == "qwen2" else LlamaConfig(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.eval()
    model.generation_config.eos_token_id = 1
    return LoadedModel(model=model, tokenizer=tok, model_id=f"tiny-{arch}-{seed}", source="random")


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
