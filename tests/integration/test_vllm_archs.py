"""The vLLM plugin's Llama and Qwen3 classes against the transformers backend (real vLLM CPU build, compiled).

The Qwen2 class is tested in ``test_vllm_e2e.py`` on the default model. Here:
Llama on the packaged ``fast`` model (SmolLM2-135M, real weights, 30 layers),
and Qwen3 on a small randomly initialised Qwen3 built in the test (3 layers,
the default model's tokenizer): no packaged Qwen3 weights exist. Both servers
run fp32 so their norms compare with the transformers backend's. Needs
``make vllm`` (``$L2REASON_VLLM_PYTHON``); without it these tests fail, they
do not skip.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from engine_e2e import LOGS, Q, serving

from l2reason.backends.base import GenerationRequest, Message, NormSpec, SamplingParams

pytestmark = [pytest.mark.real, pytest.mark.ci, pytest.mark.vllm]

SERVER = dict(dtype="float32", max_model_len=512, max_num_seqs=4)


def _tiny_qwen3(folder: Path) -> Path:
    """A 3-layer Qwen3 with random weights (seeded, peaked logits) and the default model's tokenizer."""
    import json

    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from l2reason.backends.engine_server import resolve_model_path

    src = Path(resolve_model_path("default"))
    base = json.loads((src / "config.json").read_text())
    cfg = Qwen3Config(
        vocab_size=base["vocab_size"],
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,  # vLLM's CPU attention has kernels for some head sizes only (16 is not one)
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.2,  # peaked logits: greedy choices far from ties
        bos_token_id=base.get("bos_token_id"),
        eos_token_id=base.get("eos_token_id"),
    )
    torch.manual_seed(0)
    Qwen3ForCausalLM(cfg).to(torch.float32).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (src / name).is_file():
            shutil.copy(src / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    from l2reason.backends.vllm.server import VLLMServer, free_port

    mp = pytest.MonkeyPatch()
    mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    qwen3 = str(_tiny_qwen3(tmp_path_factory.mktemp("qwen3")))
    p1, p2 = free_port(), free_port()
    llama = VLLMServer("fast", port=p1, log_path=LOGS / f"vllm-llama-{p1}.log", **SERVER)
    q3 = VLLMServer(qwen3, port=p2, log_path=LOGS / f"vllm-qwen3-{p2}.log", **SERVER)
    try:
        with serving(llama, q3, timeout=900):
            yield {"llama": ("fast", llama), "qwen3": (qwen3, q3)}
    finally:
        mp.undo()


def _req(max_new: int, **kw) -> GenerationRequest:
    return GenerationRequest(
        messages=[Message(role="user", content=Q)],
        sampling=SamplingParams(max_new_tokens=max_new, temperature=0.0, seed=0),
        norms=NormSpec(layers="all", mask_massive=False),
        **kw,
    )


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_plugin_class_matches_the_transformers_backend(servers, arch):
    from l2reason.backends.hf import HFBackend
    from l2reason.backends.vllm import VLLMBackend

    model, srv = servers[arch]
    assert f"L2{'Llama' if arch == 'llama' else 'Qwen3'}ForCausalLM" in srv.log_path.read_text(errors="replace")
    be, hf = VLLMBackend(srv.url, model=model), HFBackend(model)
    assert be.num_layers == hf.num_layers == (30 if arch == "llama" else 3)
    plain = _req(8)
    a, b = be.generate(plain).candidates[0], hf.generate(plain).candidates[0]
    assert a.text == b.text and a.completion_tokens == b.completion_tokens >= 4
    assert a.norms.array().shape == b.norms.array().shape == (a.completion_tokens, hf.num_layers)
    np.testing.assert_allclose(a.norms.array(), b.norms.array(), rtol=2e-3, atol=1e-3)
    # the layer re-run (ALRR, static: every decode step, every band layer) goes through the class's layers too
    alrr = _req(6, interventions=[{"kind": "alrr", "mode": "static"}])
    va, ha = be.generate(alrr).candidates[0], hf.generate(alrr).candidates[0]
    assert va.interventions["alrr"] == ha.interventions["alrr"] and va.text == ha.text
    assert sum(va.interventions["alrr"]["passes_accepted"]) > 0
    np.testing.assert_allclose(va.norms.array(), ha.norms.array(), rtol=2e-3, atol=1e-3)
    k = min(va.completion_tokens, a.completion_tokens)
    assert not np.allclose(va.norms.array()[1:k], a.norms.array()[1:k], rtol=1e-2)  # the re-runs changed the states
