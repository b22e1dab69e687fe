"""Spec validation: defaults, range errors with fix-it messages, parsing."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from l2reason.errors import ConfigError
from l2reason.techniques.specs import (
    ALRRSpec,
    ERSSSpec,
    StaticSteerSpec,
    SuppressSpec,
    ThresholdSpec,
    check_vectors,
    parse_interventions,
)


def test_defaults_are_the_papers() -> None:
    a, e, s, t = ALRRSpec(), ERSSSpec(), SuppressSpec(), ThresholdSpec()
    assert (a.K, a.g, a.b, a.mode, a.layers) == (1, 0.2, 1.5, "adaptive", "band")
    assert (e.M, e.gamma, e.S, e.p, e.C, e.c_min, e.beta) == (32, 1.0, 40, 0.2, 32, 0.5, 0.5)
    assert e.injection == "auto"
    assert (s.target, s.action, s.scale, s.rate) == ("high_norm", "scale", 0.1, 0.05)
    assert (t.mode, t.warmup, t.k, t.min_iqr) == ("adaptive", 32, 1.5, 1e-3)


def test_specs_are_frozen() -> None:
    spec = ALRRSpec()
    with pytest.raises(ValidationError):
        spec.K = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"kind": "alrr", "K": -1}, "K must be an integer in [0, 16] (got -1)"),
        ({"kind": "alrr", "K": 10**9}, "K must be an integer in [0, 16] (got 1000000000)"),
        ({"kind": "erss", "M": 10**9}, "M must be an integer in [1, 4096] (got 1000000000)"),
        ({"kind": "erss", "S": 10**12}, "S must be an integer in [1, 1000000]"),
        ({"kind": "erss", "C": 10**12}, "C must be an integer in [0, 1000000]"),
        ({"kind": "static_steer", "vectors": {1: [1e300]}}, "value(s) beyond ±1e+30"),
        ({"kind": "erss", "beta": 1.5}, "beta must be in [0, 1] (got 1.5)"),
        ({"kind": "alrr", "b": 1.0}, "b must be in (1, 1e+06] (got 1.0)"),
        ({"kind": "alrr", "b": 0.5}, "b must be in (1, 1e+06] (got 0.5)"),
        ({"kind": "erss", "p": -0.1}, "p must be in [0, 1] (got -0.1)"),
        ({"kind": "erss", "c_min": 2.0}, "c_min must be in [-1, 1] (got 2.0)"),
        ({"kind": "erss", "gamma": 0.0}, "gamma must be in (0, 1e+06] (got 0.0)"),
        ({"kind": "erss", "gamma": math.inf}, "gamma must be in (0, 1e+06] (got inf)"),
        ({"kind": "erss", "M": 0}, "M must be an integer in [1, 4096] (got 0)"),
        ({"kind": "suppress", "rate": 1.5}, "rate must be in [0, 1] (got 1.5)"),
        ({"kind": "alrr", "layers": []}, 'layers must not be empty: list layer indices (e.g. [18, 19]) or use "band"'),
        ({"kind": "alrr", "layers": [3, 3]}, "layers must not repeat an index"),
        ({"kind": "alrr", "threshold": {"warmup": -1}}, "warmup must be an integer in [0, 1000000] (got -1)"),
        (
            {"kind": "static_steer", "vectors": {3: [1.0, math.nan]}},
            "vector for layer 3 holds 1 NaN/inf value(s) (first at index 1)",
        ),
        ({"kind": "static_steer", "vectors": {}}, "vectors must name at least one layer"),
        (
            {"kind": "static_steer", "vectors": {1: [1.0]}, "alpha": math.inf},
            "alpha must be in [-1e+30, 1e+30] (got inf)",
        ),
        ({"kind": "alrr", "foo": 1}, "foo: unknown field"),
    ],
)
def test_bad_values_raise_config_error_with_fix(item: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_interventions([item])
    assert message in str(err.value)
    assert "intervention #0" in str(err.value)


def test_direct_construction_raises_validation_error() -> None:
    with pytest.raises(ValidationError, match=r"beta must be in \[0, 1\] \(got 1.5\)"):
        ERSSSpec(beta=1.5)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ALRRSpec(k=1)  # type: ignore[call-arg]


def test_unknown_and_missing_kind() -> None:
    with pytest.raises(ConfigError, match="unknown kind 'foo'; valid kinds: alrr, erss, static_steer, suppress"):
        parse_interventions([{"kind": "foo"}])
    with pytest.raises(ConfigError, match="unknown kind None"):
        parse_interventions([{"K": 1}])
    with pytest.raises(ConfigError, match="must be a dict or a spec"):
        parse_interventions([3])  # type: ignore[list-item]


def test_parse_mixed_list_keeps_order_and_types() -> None:
    ready = SuppressSpec(target="random")
    out = parse_interventions(
        [
            {"kind": "alrr", "layers": [-2, 5], "mode": "static", "K": 2},
            {"kind": "erss", "injection": "interpolate"},
            {"kind": "static_steer", "vectors": {"4": [0.5, 0.5]}},  # JSON-style key
            ready,
        ]
    )
    assert [type(s) for s in out] == [ALRRSpec, ERSSSpec, StaticSteerSpec, SuppressSpec]
    assert out[0].layers == [-2, 5] and out[0].K == 2
    assert out[2].vectors == {4: [0.5, 0.5]}
    assert out[3] is ready


def test_check_vectors() -> None:
    spec = StaticSteerSpec(vectors={3: [0.0] * 100})
    with pytest.raises(ConfigError, match="vector for layer 3 has 100 values; the model's hidden size is 896"):
        check_vectors(spec, hidden_size=896, num_layers=24)
    with pytest.raises(ConfigError, match="steering layer 30 is outside the model"):
        check_vectors(StaticSteerSpec(vectors={30: [0.0] * 4}), hidden_size=4, num_layers=24)
    check_vectors(StaticSteerSpec(vectors={-24: [0.0] * 4, 23: [1.0] * 4}), hidden_size=4, num_layers=24)
