"""The failure rules of ``docs/guide.md`` ("Errors and limits"), one concrete case at a time."""

from __future__ import annotations

import math
import time

import pytest
from pydantic import ValidationError

from l2reason.backends.base import GenerationRequest, Message, NormSpec, SamplingParams, SelectionSpec
from l2reason.backends.hf import HFBackend
from l2reason.backends.validate import validate_request
from l2reason.errors import BackendError, CapabilityError, ConfigError, LayerError, PartialResultsError


def req(**kw):
    base = dict(prompt="hello w1 w2", sampling=SamplingParams(max_new_tokens=2))
    base.update(kw)
    return GenerationRequest(**base)


@pytest.fixture(scope="module")
def counted(tiny):
    """A backend and a counter of the model's forward passes."""
    be = HFBackend(tiny)
    calls = {"n": 0}
    h = be.model.register_forward_pre_hook(lambda m, a: calls.__setitem__("n", calls["n"] + 1))
    yield be, calls
    h.remove()


def refused_before_forward(counted, request, error, match):
    be, calls = counted
    before = calls["n"]
    t0 = time.perf_counter()
    with pytest.raises(error, match=match):
        be.generate(request)
    assert calls["n"] == before, "the request ran the model before it was refused"
    assert time.perf_counter() - t0 < 5.0


# ---- rule 1: validate up front, in one place ----------------------------------------------------------


def test_unknown_selection_method_and_score_at_construction():
    with pytest.raises(ValidationError, match="unknown selection method 'best'; valid: deepconf"):
        SelectionSpec(method="best")
    with pytest.raises(ValidationError, match=r"unknown ℓ2 score 'Q/T'; valid: A/T, B/T"):
        SelectionSpec(score="Q/T")


def test_selection_layers_not_captured(counted):
    r = req(n=2, norms=NormSpec(layers=[0, 1]), selection=SelectionSpec(method="l2", layers=[3]))
    refused_before_forward(
        counted, r, LayerError, r"selection.layers \[3\] are not captured; the request captures \[0, 1\]"
    )


def test_norm_tau_length_mismatch(counted):
    r = req(norms=NormSpec(layers=[0, 1], tau=[1.0]))
    refused_before_forward(counted, r, ConfigError, "norms.tau has 1 values but norms.layers resolves to 2 layers")


def test_calibrated_without_calibration_file(counted):
    refused_before_forward(counted, req(norms=NormSpec(tau="calibrated")), ConfigError, "l2reason calibrate")
    r = req(n=2, selection=SelectionSpec(method="l2", tau="calibrated"))
    refused_before_forward(counted, r, ConfigError, "selection tau='calibrated' needs a calibration file")
    r = req(interventions=[{"kind": "erss", "threshold": {"mode": "calibrated"}}])
    refused_before_forward(counted, r, ConfigError, "threshold mode 'calibrated' needs a calibration file")


def test_logprob_selection_without_logprobs(counted):
    r = req(n=2, selection=SelectionSpec(method="self-certainty"))
    refused_before_forward(counted, r, ConfigError, "needs logprobs")


def test_requests_that_skip_pydantic_are_validated(counted):
    good = req()
    refused_before_forward(counted, good.model_copy(update={"n": 10**9}), ConfigError, r"n .*must be in \[1, 256\]")
    refused_before_forward(
        counted, good.model_copy(update={"interventions": [{"kind": "alrr", "K": 10**9}]}), ConfigError, "K must be"
    )
    bad_sampling = SamplingParams.model_construct(
        max_new_tokens=0, temperature=0.0, top_p=1.0, top_k=None, stop=[], seed=0
    )
    refused_before_forward(counted, good.model_copy(update={"sampling": bad_sampling}), ConfigError, "max_new_tokens")
    fields = {k: getattr(good, k) for k in GenerationRequest.model_fields}
    refused_before_forward(counted, GenerationRequest.model_construct(**{**fields, "prompt": ""}), ConfigError, "empty")
    refused_before_forward(counted, "not a request", ConfigError, "expected a GenerationRequest, got str")


def test_unsupported_intervention_kind_is_a_capability_error(tiny):
    be = HFBackend(tiny)
    be.controller_factories.pop("erss")
    with pytest.raises(CapabilityError, match="cannot run 'erss'; it supports: alrr, static_steer, suppress"):
        be.generate(req(interventions=[{"kind": "erss"}]))


# ---- rule 2: bounds ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(n=10**9), r"must be in \[1, 256\]"),
        (dict(sampling=dict(max_new_tokens=10**12)), r"max_new_tokens must be in \[1, 131072\]"),
        (dict(interventions=[{"kind": "alrr", "K": 10**9}]), r"K must be an integer in \[0, 16\]"),
        (dict(interventions=[{"kind": "erss", "M": 10**9}]), r"M must be an integer in \[1, 4096\]"),
        (
            dict(interventions=[{"kind": "alrr", "threshold": {"warmup": 10**9}}]),
            r"warmup must be an integer in \[0, 1000000\]",
        ),
        (dict(interventions=[{"kind": "erss", "S": 10**9}]), r"S must be an integer in \[1, 1000000\]"),
        (dict(interventions=[{"kind": "erss", "C": 10**9}]), r"C must be an integer in \[0, 1000000\]"),
        (dict(logprobs=10**6), "less than or equal to 50"),
        (dict(sampling=dict(stop=["s"] * 1000)), "at most 64 stop strings"),
    ],
)
def test_bounds_fail_at_once(kw, match):
    t0 = time.perf_counter()
    with pytest.raises(ValidationError, match=match):
        GenerationRequest(prompt="hi", **kw)
    assert time.perf_counter() - t0 < 1.0


def test_batch_bound(counted):
    be, _ = counted
    with pytest.raises(ConfigError, match="ask for 2560 candidates in one call; at most 2048"):
        be.generate_many([req(n=256)] * 10)


def test_context_length(tiny):
    be = HFBackend(tiny)
    old = be.model.config.max_position_embeddings
    be.model.config.max_position_embeddings = 16
    try:
        P = len(be.prompt_ids(req()))
        over = 16 - P + 1
        with pytest.raises(
            ConfigError,
            match=rf"prompt \({P} tokens\) \+ max_new_tokens \({over}\) = 17 exceeds the model's context length \(16\)",
        ):
            be.generate(req(sampling=SamplingParams(max_new_tokens=over)))
        with pytest.raises(ConfigError, match="does not fit the model's context length"):
            be.generate(req(sampling=SamplingParams(max_new_tokens=16)))
        assert (
            be.generate(req(sampling=SamplingParams(max_new_tokens=over - 1))).candidates[0].completion_tokens
            <= over - 1
        )
    finally:
        be.model.config.max_position_embeddings = old


def test_top_k_beyond_vocabulary(counted):
    refused_before_forward(
        counted, req(sampling=SamplingParams(top_k=10**6, max_new_tokens=2)), ConfigError, "exceeds the vocabulary"
    )


# ---- rule 3: no non-finite or out-of-domain number ------------------------------------------------------


@pytest.mark.parametrize("tau", [[math.nan], [math.inf], [-1.0], [0.0], [1e39], []])
def test_selection_tau_must_be_finite_positive(tau):
    with pytest.raises(ValidationError, match="tau"):
        SelectionSpec(tau=tau)


def test_massive_factor_and_seeds():
    with pytest.raises(ValidationError, match="massive_factor"):
        NormSpec(massive_factor=math.inf)
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        SelectionSpec(seed=-1)
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        SamplingParams(seed=-1)


def test_steering_that_overflows(counted):
    iv = [{"kind": "static_steer", "vectors": {1: [1e20] * 32}, "alpha": 1e25}]
    with pytest.raises(ValidationError, match="beyond ±1e"):
        req(interventions=[{"kind": "static_steer", "vectors": {1: [1e31] * 32}}])
    refused_before_forward(counted, req(interventions=iv), ConfigError, "overflows the model's dtype")


@pytest.mark.parametrize(
    ("norms", "interventions", "match"),
    [
        (NormSpec(layers=[-1, 3]), [], r"names a layer twice .*\[-1, 3\]"),
        (NormSpec(), [{"kind": "alrr", "layers": [1, -3]}], "names a layer twice"),
        (
            NormSpec(),
            [{"kind": "static_steer", "vectors": {1: [0.0] * 32, -3: [0.0] * 32}}],
            "two vectors for the same layer",
        ),
    ],
)
def test_duplicate_layers(counted, norms, interventions, match):
    refused_before_forward(counted, req(norms=norms, interventions=interventions), LayerError, match)
    with pytest.raises(ValidationError, match="must not repeat"):
        NormSpec(layers=[1, 1])


# ---- rule 4: every error is one of ours (or a ValidationError) ---------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(interventions=5),
        dict(interventions="alrr"),
        dict(interventions={"kind": "alrr"}),
        dict(interventions=[5]),
        dict(norms=5),
        dict(selection=3),
        dict(sampling="greedy"),
        dict(messages=[{"role": "user", "content": 5}], prompt=None),
    ],
)
def test_wrong_types_are_validation_errors(kw):
    with pytest.raises(ValidationError) as info:
        GenerationRequest(**{"prompt": "hi", **kw})
    assert str(info.value).strip()


def test_empty_questions():
    with pytest.raises(ValidationError, match="no user message has content"):
        GenerationRequest(messages=[Message(role="system", content="be brief"), Message(role="user", content="  ")])
    with pytest.raises(ValidationError, match="prompt is empty"):
        GenerationRequest(prompt=" \n")


def test_stop_string_is_one_string():
    assert SamplingParams(stop="STOP").stop == ["STOP"]


def test_validate_request_returns_the_revalidated_request(tiny_backend):
    good = req(n=2)
    assert validate_request(good, tiny_backend.limits()) == good


# ---- rule 7: generate_many keeps finished work ----------------------------------------------------------


def test_generate_many_keeps_finished_groups(tiny, fail_alrr):
    be = HFBackend(tiny)
    fail_alrr(be)
    plain, failing = req(), req(interventions=[{"kind": "alrr"}])
    with pytest.raises(PartialResultsError, match="1 of 3 requests failed") as info:
        be.generate_many([plain, failing, req(prompt="w3 w4")])
    e = info.value
    assert isinstance(e, BackendError) and isinstance(e.__cause__, BackendError)
    assert e.failed == [1]
    assert e.results[1] is None
    assert e.results[0].text == HFBackend(tiny).generate(plain).text
    assert e.results[2].text == HFBackend(tiny).generate(req(prompt="w3 w4")).text
    # nothing finished: the original error, unchanged
    with pytest.raises(BackendError, match="boom") as info2:
        be.generate_many([failing])
    assert not isinstance(info2.value, PartialResultsError)


def test_prune_checked_against_the_backend(counted):
    from l2reason.backends.base import PruneSpec

    r = req(n=2, prune=PruneSpec(score="l2", layers=[9], threshold=1.0))
    refused_before_forward(counted, r, LayerError, "out of range")
    r = req(n=2, prune=PruneSpec(score="l2", layers=[0, 1], l2_stat="exceedance", tau=[1.0], threshold=0.5))
    refused_before_forward(counted, r, ConfigError, "prune.tau has 1 values for 2 prune layers")
    r = req(n=2, prune=PruneSpec(score="l2", l2_stat="exceedance", tau="calibrated", threshold=0.5))
    refused_before_forward(counted, r, ConfigError, "prune tau='calibrated' needs a calibration file")
    be, _ = counted
    limits = be.limits()
    import dataclasses

    no_prune = dataclasses.replace(limits, capabilities=limits.capabilities.model_copy(update={"pruning": False}))
    with pytest.raises(CapabilityError, match="cannot prune candidates online"):
        validate_request(req(n=2, prune=PruneSpec(score="l2", threshold=1.0)), no_prune)
