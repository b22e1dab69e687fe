"""The plain SAE used for feature ablation in every backend: math, file format, the request spec."""

from __future__ import annotations

import pytest
import torch

from l2reason.errors import CapabilityError, ConfigError
from l2reason.techniques.sae_ablate import SAEWeights, load_sae_weights
from l2reason.techniques.specs import SAEAblateSpec, parse_interventions


def _sae(d: int = 6, m: int = 10, activation: str = "topk", k: int = 3, seed: int = 0) -> SAEWeights:
    g = torch.Generator().manual_seed(seed)
    return SAEWeights(
        W_enc=torch.randn(d, m, generator=g),
        b_enc=torch.randn(m, generator=g) * 0.1,
        b_dec=torch.randn(d, generator=g) * 0.1,
        W_dec=torch.randn(m, d, generator=g),
        activation=activation,  # type: ignore[arg-type]
        k=k,
    )


def test_encode_keeps_the_k_largest_positive_preactivations() -> None:
    w = _sae()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    pre = (x - w.b_dec) @ w.W_enc + w.b_enc
    f = w.encode(x)
    for row in range(5):
        top = set(torch.topk(pre[row], 3).indices.tolist())
        for i in range(10):
            want = max(float(pre[row, i]), 0.0) if i in top else 0.0
            assert float(f[row, i]) == pytest.approx(want, abs=1e-6)
    relu = _sae(activation="relu", k=0)
    torch.testing.assert_close(relu.encode(x), ((x - relu.b_dec) @ relu.W_enc + relu.b_enc).relu())


def test_remove_subtracts_exactly_the_chosen_features_contributions() -> None:
    w = _sae(activation="relu", k=0)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    f = w.encode(x)
    feats = torch.tensor([1, 4, 7])
    want = x - f[:, feats] @ w.W_dec[feats]
    torch.testing.assert_close(w.remove(x, feats), want)
    assert w.remove(x, feats[:0]) is x  # nothing chosen: the same tensor
    every = torch.arange(10)  # all features gone: x minus the reconstruction's feature part
    torch.testing.assert_close(w.remove(x, every), x - f @ w.W_dec)
    # dtype is kept, the math runs in float32
    assert w.remove(x.to(torch.bfloat16), feats).dtype == torch.bfloat16
    # a planted feature: x = 3·e-direction of feature 2 (decoder row) with an encoder that reads only it
    d = SAEWeights(W_enc=torch.eye(3), b_enc=torch.zeros(3), b_dec=torch.zeros(3), W_dec=torch.eye(3))
    torch.testing.assert_close(
        d.remove(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([2])), torch.tensor([[1.0, 2.0, 0.0]])
    )


def test_bad_weights_and_features_are_clear_errors() -> None:
    w = _sae()
    with pytest.raises(ConfigError, match=r"do not fit together"):
        SAEWeights(W_enc=w.W_enc, b_enc=w.b_enc, b_dec=w.b_dec, W_dec=w.W_dec.T)
    with pytest.raises(ConfigError, match="NaN/inf"):
        SAEWeights(W_enc=w.W_enc, b_enc=w.b_enc * float("nan"), b_dec=w.b_dec, W_dec=w.W_dec)
    with pytest.raises(ConfigError, match="1 <= k <= 10"):
        SAEWeights(W_enc=w.W_enc, b_enc=w.b_enc, b_dec=w.b_dec, W_dec=w.W_dec, activation="topk", k=11)
    with pytest.raises(ConfigError, match="not supported"):
        SAEWeights(W_enc=w.W_enc, b_enc=w.b_enc, b_dec=w.b_dec, W_dec=w.W_dec, activation="jumprelu")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"feature indices must be in \[0, 10\)"):
        w.check_features([3, 10])
    assert w.check_features([5, 2, 5]).tolist() == [2, 5]
    with pytest.raises(ConfigError, match="reads 6-dim states, got 4"):
        w.encode(torch.zeros(1, 4))


def test_file_round_trip_and_bad_files(tmp_path) -> None:
    w = _sae(k=4)
    p = w.save(tmp_path / "s" / "sae.safetensors")
    back = load_sae_weights(p)
    assert (back.activation, back.k, back.apply_b_dec_to_input) == ("topk", 4, True)
    for n in ("W_enc", "b_enc", "b_dec", "W_dec"):
        torch.testing.assert_close(getattr(back, n), getattr(w, n))
    with pytest.raises(ConfigError, match="does not exist"):
        load_sae_weights(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        load_sae_weights(junk)
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"W_enc": w.W_enc}, str(other))
    with pytest.raises(ConfigError, match="not an l2reason SAE file"):
        load_sae_weights(other)


def test_spec_validation_names_the_field() -> None:
    [spec] = parse_interventions([{"kind": "sae_ablate", "sae": "x.safetensors", "layer": 3, "features": [1, 2]}])
    assert isinstance(spec, SAEAblateSpec) and spec.features == [1, 2]
    for bad, msg in [
        ({"features": []}, "features"),
        ({"features": [1, 1]}, "must not repeat"),
        ({"features": [-1]}, ">= 0"),
        ({"layer": -1}, "layer"),
        ({"sae": ""}, "sae"),
        ({"sae": "/abs/x.safetensors"}, "relative name"),  # a server reads SAE files by name only
        ({"sae": "a/../../x"}, "relative name"),
        ({"sae": ".x"}, "relative name"),
    ]:
        item = {"kind": "sae_ablate", "sae": "x.safetensors", "layer": 3, "features": [1], **bad}
        with pytest.raises(ConfigError, match=msg):
            parse_interventions([item])


def test_embedded_backend_refuses_the_spec_and_points_to_the_hook(tiny_backend) -> None:
    from l2reason.backends.base import GenerationRequest, SamplingParams

    req = GenerationRequest(
        prompt="hello",
        sampling=SamplingParams(max_new_tokens=2),
        interventions=[{"kind": "sae_ablate", "sae": "x.safetensors", "layer": 1, "features": [0]}],
    )
    with pytest.raises(CapabilityError, match="ablate_features"):
        tiny_backend.generate(req)
