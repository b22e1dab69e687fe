"""Every per-step function compiles with fullgraph=True (no graph break ⇒ CUDA-graph safe).

``aot_eager`` traces the whole function through dynamo and AOTAutograd without
generating kernels, which is what a graph break would fail; outputs must
match eager exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

from l2reason.techniques import (
    alrr_accept,
    alrr_active,
    alrr_counters_add,
    alrr_counters_init,
    alrr_run,
    alrr_static_accept,
    erss_init,
    erss_reset,
    erss_step,
    hash_uniform,
    static_steer,
    suppress_step,
)

B, D, M = 4, 7, 3


def _same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b) or torch.allclose(a, b, equal_nan=True, rtol=1e-6, atol=1e-6)
    elif isinstance(a, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    else:
        assert a == b


def _check(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    _same(compiled(*args, **kwargs), fn(*args, **kwargs))


@pytest.fixture
def data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, D, generator=g) * torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None]
    return {
        "x": x,
        "n": x.norm(dim=-1),
        "tau": torch.tensor([2.0, 3.0, math.inf, 5.0]),
        "valid": torch.tensor([True, True, True, False]),
        "seed": torch.arange(B, dtype=torch.int64) + 3,
        "step": torch.arange(B, dtype=torch.int64) * 11,
    }


def test_hash_uniform(data: dict[str, torch.Tensor]) -> None:
    _check(lambda s, c: hash_uniform(s, c, stream=2), data["seed"], data["step"])


def test_alrr(data: dict[str, torch.Tensor]) -> None:
    x, n, tau, valid = data["x"], data["n"], data["tau"], data["valid"]
    _check(lambda n, t, v: alrr_active(n, t, 1.5, v), n, tau, valid)
    _check(lambda a, b, c, t, act: alrr_accept(a, b, c, t, act, g=0.2, b=1.5), x, n, x * 1.3, tau, valid)
    _check(alrr_static_accept, x, n, x * 1.3, valid)
    w = torch.randn(D, D) * 0.3 + torch.eye(D)
    _check(lambda x0, t, v: alrr_run(x0, t, v, lambda h: h @ w, K=2, g=0.1, b=2.0), x, tau, valid)
    c = alrr_counters_init(B, 3)
    _check(lambda c, a, b: alrr_counters_add(c, 1, a, b), c, valid, valid)


@pytest.mark.parametrize("exact", [False, True])
def test_erss_step(data: dict[str, torch.Tensor], exact: bool) -> None:
    st = erss_init(B, M, D, data["seed"], dtype=torch.float32, device="cpu")
    tau = torch.full((B,), 1.0)
    for _ in range(3):  # put something in the bank
        st = erss_step(st, data["x"], data["n"], tau, data["valid"], r=None, M=M, gamma=1.0, S=1, p=0.0,
                       C=2, c_min=0.0, beta=0.5, exact=False).state  # fmt: skip
    low = data["x"] * 0.01

    def step(st, x, n, t, v, r):  # type: ignore[no-untyped-def]
        return erss_step(st, x, n, t, v, r=r, M=M, gamma=1.0, S=1, p=1.0, C=2, c_min=-1.0, beta=0.5, exact=exact)

    _check(step, st, low, low.norm(dim=-1), torch.full((B,), 5.0), data["valid"], data["x"] * 0.5)
    _check(erss_reset, st, data["valid"], data["seed"] + 1)


@pytest.mark.parametrize("norm_preserving", [False, True])
def test_static_steer(data: dict[str, torch.Tensor], norm_preserving: bool) -> None:
    v = torch.linspace(-1, 1, D)
    _check(lambda x, vv, ok: static_steer(x, vv, 0.7, ok, norm_preserving), data["x"], v, data["valid"])


@pytest.mark.parametrize("target", ["high_norm", "random"])
@pytest.mark.parametrize("action", ["scale", "clamp"])
def test_suppress_step(data: dict[str, torch.Tensor], target: str, action: str) -> None:
    def fn(x, n, t, v, s, k):  # type: ignore[no-untyped-def]
        return suppress_step(x, n, t, v, target=target, action=action, scale=0.1, rate=0.5, seed=s, step=k)

    d = data
    _check(fn, d["x"], d["n"], d["tau"], d["valid"], d["seed"], d["step"])
