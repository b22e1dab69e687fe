"""Real packaged models (slow). Run all with L2REASON_REAL=1; CI runs the `ci` subset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from l2reason.backends.base import GenerationRequest, Message, NormSpec, SamplingParams, SelectionSpec

pytestmark = pytest.mark.real

Q = "A baker makes 12 muffins per tray and bakes 7 trays. She sells 59 muffins. How many are left?"


@pytest.fixture(scope="module")
def default_backend():
    from l2reason.backends.hf import HFBackend

    return HFBackend("default")


def req(n=1, max_new=40, temp=0.0, **kw):
    return GenerationRequest(
        messages=[Message(role="user", content=Q)],
        n=n,
        sampling=SamplingParams(max_new_tokens=max_new, temperature=temp, seed=0),
        **kw,
    )


@pytest.mark.ci
def test_converted_logits_equal_gguf_logits():
    from transformers import AutoModelForCausalLM

    from l2reason.models import load_model
    from l2reason.models.load import assemble_gguf
    from l2reason.models.registry import QWEN_05B

    lm = load_model("default")
    gguf = assemble_gguf(QWEN_05B)
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = lm.tokenizer("The answer to 12 * 7 is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a = lm.model(ids).logits
        b = ref(ids).logits
    assert torch.equal(a, b)
    assert lm.num_layers == 24 and lm.hidden_size == 896


@pytest.mark.ci
def test_default_model_norms_and_identity(default_backend):
    on = default_backend.generate(req(norms=NormSpec(layers="band"), logprobs=2)).candidates[0]
    off = default_backend.generate(req(norms=None, logprobs=2)).candidates[0]
    assert on.text == off.text and on.logprobs.logprob == off.logprobs.logprob
    assert on.norms.layers == [18, 19, 20, 21, 22]
    arr = on.norms.array()
    assert arr.shape == (on.completion_tokens, 5)
    assert np.isfinite(arr).all() and (arr > 1).all()
    # residual norms grow with depth inside the band
    assert (np.diff(arr.mean(0)) > 0).all()


@pytest.mark.ci
def test_default_model_selection_and_interventions(default_backend):
    r = default_backend.generate(req(n=4, temp=0.7, max_new=32, logprobs=5, selection=SelectionSpec(method="l2")))
    assert len(r.candidates) == 4 and len({c.text for c in r.candidates}) > 1
    assert r.selection["index"] in range(4)
    iv = [{"kind": "alrr", "threshold": {"warmup": 8}}, {"kind": "erss", "threshold": {"warmup": 8}, "S": 4}]
    c = default_backend.generate(req(max_new=32, interventions=iv)).candidates[0]
    assert c.interventions["alrr"]["decode_steps"] > 0
    assert c.interventions["alrr"]["layers"] == [18, 19, 20, 21, 22]
    assert "injections" in c.interventions["erss"]


def test_fast_model_loads_and_generates():
    from l2reason.backends.hf import HFBackend

    be = HFBackend("fast")
    assert be.num_layers == 30 and be.hidden_size == 576
    c = be.generate(req(norms=NormSpec(layers="all"), max_new=16)).candidates[0]
    assert c.completion_tokens > 0 and len(c.norms.layers) == 30


def test_each_technique_on_default(default_backend):
    for iv in (
        {"kind": "alrr", "mode": "static", "layers": [10, 11]},
        {"kind": "suppress", "target": "random", "rate": 0.2},
        {"kind": "suppress", "threshold": {"warmup": 8}},
    ):
        c = default_backend.generate(req(max_new=24, interventions=[iv])).candidates[0]
        assert c.interventions, iv


@pytest.mark.ci
def test_shipped_calibration_matches_the_default_model(default_backend):
    """The shipped file names these weights, fits the model's sizes, and its medians match a fresh measurement."""
    from l2reason.calibrate import calibrate
    from l2reason.data import PROBLEMS
    from l2reason.models.registry import QWEN_05B
    from l2reason.signal.calibration import shipped_calibration

    assert default_backend.weights_sha256 == QWEN_05B.sha256
    cal = shipped_calibration(QWEN_05B.model_id, QWEN_05B.sha256)
    assert cal is not None
    cal.check_model(
        model_id=default_backend.model_id,
        num_layers=default_backend.num_layers,
        hidden_size=default_backend.hidden_size,
        weights_sha256=default_backend.weights_sha256,
    )
    fresh = calibrate(default_backend, [p for p, _ in PROBLEMS[:2]], max_new_tokens=160)
    ratio = np.asarray(fresh.median) / np.asarray(cal.median)
    assert fresh.layers == cal.layers
    assert np.all(np.abs(ratio - 1) < MEDIAN_TOL), dict(zip(cal.layers, ratio.round(3).tolist(), strict=True))


MEDIAN_TOL = 0.15  # per-layer median norm, 2 problems vs the shipped 16: measured spread below
