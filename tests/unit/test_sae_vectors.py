"""Steering vectors: CAA from prompt pairs, high- minus low-norm states; a planted difference is recovered."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from l2reason.errors import ConfigError
from l2reason.sae.vectors import caa_vectors, load_pairs, mean_difference, norm_split_vectors, save_vectors


def test_mean_difference_recovers_a_planted_direction() -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(33, generator=g) * 2
    pos = torch.randn(4000, 33, generator=g) + v
    neg = torch.randn(4000, 33, generator=g)
    got = mean_difference(pos, neg)
    assert torch.nn.functional.cosine_similarity(got, v, dim=0) > 0.99
    assert torch.allclose(got, v, atol=0.12)
    with pytest.raises(ConfigError, match="differ in shape"):
        mean_difference(pos, neg[:, :5])


def test_caa_matches_the_models_own_hidden_states(tiny_backend, tiny) -> None:
    """CAA = mean over pairs of hidden_states[l + 1] at the last prompt position, positive minus negative."""
    pairs = [("w1 w2 hello", "w1 w2 world"), ("w5 w6 w7 hello", "w5 w6 world"), ("hello w9", "world w9")]
    # not the last layer: HF's last hidden_states entry is after the final norm, l2reason's layers are before it
    vecs = caa_vectors(tiny_backend, pairs, [0, 2], batch_size=2)
    assert sorted(vecs) == [0, 2]
    tok, model = tiny.tokenizer, tiny.model

    def last(text: str, layer: int) -> torch.Tensor:
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        return hs[layer + 1][0, -1]  # HF index shift: hidden_states[0] is the embeddings

    for layer in (0, 2):
        want = torch.stack([last(p, layer) - last(n, layer) for p, n in pairs]).mean(0)
        torch.testing.assert_close(vecs[layer], want, rtol=1e-4, atol=1e-5)
    same = caa_vectors(tiny_backend, [(p, p) for p, _ in pairs], [2])
    assert float(same[2].abs().max()) == 0.0


def _synthetic_store(path, states: torch.Tensor, layers: list[int]) -> None:
    from safetensors.torch import save_file

    from l2reason.sae.store import FORMAT

    N = states.shape[0]
    save_file(
        {
            "states": states,
            "norms": states.norm(dim=-1),
            "record": torch.zeros(N, dtype=torch.int64),
            "step": torch.arange(N, dtype=torch.int64),
        },
        str(path / "shard_00000.safetensors"),
    )
    (path / "shard_00000.jsonl").write_text(json.dumps({"item": "x", "candidate": 0, "tokens": ["t"] * N}) + "\n")
    manifest = {
        "format": FORMAT,
        "model_id": "synthetic",
        "layers": layers,
        "hidden_size": states.shape[-1],
        "dtype": "float32",
        "positions": "decode",
        "settings": {},
        "shards": [{"name": "shard_00000", "tokens": N, "items": ["x"]}],
    }
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_norm_split_vector_recovers_a_planted_direction(tmp_path) -> None:
    from l2reason.sae.store import ActivationStore

    g = torch.Generator().manual_seed(1)
    d, N = 24, 5000
    base = torch.randn(N, 2, d, generator=g)
    v = torch.zeros(d)
    v[3], v[10] = 6.0, -4.0  # high-norm states carry v on layer 7 only
    high = torch.rand(N, generator=g) < 0.1
    base[high, 0] += v
    _synthetic_store(tmp_path, base, [7, 9])
    vecs = norm_split_vectors(ActivationStore(tmp_path), [7, 9], quantile=0.9)
    assert torch.nn.functional.cosine_similarity(vecs[7], v, dim=0) > 0.9
    assert float(vecs[9].norm()) < 0.5 * float(vecs[7].norm())
    with pytest.raises(ConfigError, match="quantile"):
        norm_split_vectors(ActivationStore(tmp_path), [7], quantile=1.0)


def test_vector_file_is_what_static_steer_reads(tmp_path) -> None:
    from l2reason.eval.methods import generation_config
    from l2reason.techniques.specs import StaticSteerSpec

    v = {20: torch.arange(5, dtype=torch.float32), 21: torch.ones(5)}
    p = save_vectors(v, tmp_path / "v.json")
    cfg = generation_config(f"static-steer:vectors={p},alpha=2")
    from l2reason.backends.base import GenerationRequest

    spec = GenerationRequest(prompt="x", interventions=cfg.interventions).interventions[0]
    assert isinstance(spec, StaticSteerSpec)
    assert spec.vectors[20] == [0.0, 1.0, 2.0, 3.0, 4.0] and spec.alpha == 2
    np.testing.assert_array_equal(spec.vectors[21], np.ones(5))


def test_load_pairs_errors(tmp_path) -> None:
    f = tmp_path / "pairs.jsonl"
    f.write_text('{"positive": "a", "negative": "b"}\n\n{"positive": "c"}\n')
    with pytest.raises(ConfigError, match=r"pairs.jsonl:3: expected"):
        load_pairs(f)
    f.write_text('{"positive": "a", "negative": "b"}\n')
    assert load_pairs(f) == [("a", "b")]
