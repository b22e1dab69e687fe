"""Endogenous Reasoning State Steering (ERSS): memory bank, trigger, injection.

``docs/techniques.md``, "ERSS". Per request and steered layer l, keep a bank of the top-M
past states by norm among those above τ_l; count a streak of consecutive
"low" steps (n < γ·τ_l); when streak ≥ S, cooldown = 0 and a Bernoulli(p)
draw passes, the step *fires*: take v* = argmax_{v ∈ bank} cos(v, x) and
inject it if that cosine ≥ c_min.

Choices the paper leaves open (decided here, and tested):

- **Order within a step**: trigger and injection first, against the bank as
  it stood *before* this step; then the bank update with this step's observed
  (pre-injection) x. So the current state is never its own target, and an
  injected state never enters the bank (the bank holds only the model's own
  states).
- **Streak**: counts consecutive *valid* steps with n < γ·τ, only while τ is
  finite; during the threshold warm-up (τ = +inf) it stays 0 (otherwise
  n < γ·inf would count every warm-up step and fire right after it). It
  includes the current step, so with p = 1 the S-th consecutive low step fires.
- **A fire without injection** (empty bank, or best cosine < c_min) still
  resets the streak and starts the cooldown, as the paper's "then reset" reads:
  the Bernoulli draw, not the bank contents, paces the attempts.
- **Cooldown**: checked at the start of a step, then decremented on every
  valid step (a fire sets it to C): after a fire, the next C valid steps
  cannot fire.
- **Randomness**: u = hash_uniform(seed, step, STREAM_ERSS), step = the row's
  count of valid steps so far; no global RNG.
- Rows with ``valid`` False: state unchanged, x returned unchanged.

State is per row (a row = one request); the backend keeps one
:class:`ERSSState` per steered layer and resets a row (:func:`erss_reset`)
when a slot gets a new request.

Example:
    >>> import torch
    >>> st = erss_init(2, M=4, d=3, seeds=torch.tensor([0, 1]), dtype=torch.float32, device="cpu")
    >>> x = torch.randn(2, 3); n = x.norm(dim=-1)
    >>> out = erss_step(st, x, n, torch.full((2,), float("inf")), torch.ones(2, dtype=torch.bool),
    ...                 r=None, M=4, gamma=1.0, S=40, p=0.2, C=32, c_min=0.5, beta=0.5,
    ...                 exact=False)
    >>> out.fired.tolist(), out.state.step.tolist()      # warm-up: nothing fires
    ([False, False], [1, 1])
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from l2reason.errors import ConfigError
from l2reason.techniques.rng import STREAM_ERSS, hash_uniform
from l2reason.techniques.specs import ERSSSpec

__all__ = [
    "ERSSState",
    "ERSSStep",
    "erss_init",
    "erss_params",
    "erss_reset",
    "erss_step",
]

_EPS = 1e-12  # guards the cosine's denominator against zero-norm states


class ERSSState(NamedTuple):
    """Per-row ERSS state for one layer.

    Attributes:
        bank: [B, M, d] stored states (model dtype; empty slots are zeros).
        bank_norm: [B, M] float32 their norms; -inf marks an empty slot.
        streak: [B] int64 consecutive low steps.
        cooldown: [B] int64 steps left before the row may fire again.
        step: [B] int64 valid steps seen (the RNG counter).
        seed: [B] int64 the row's seed.
    """

    bank: Tensor
    bank_norm: Tensor
    streak: Tensor
    cooldown: Tensor
    step: Tensor
    seed: Tensor


class ERSSStep(NamedTuple):
    """Result of :func:`erss_step`.

    Attributes:
        state: the new state.
        x_out: [B, d] the (possibly steered) state.
        fired: [B] bool, the trigger fired this step.
        injected: [B] bool, v* was injected (fired and cos ≥ c_min).
        cos: [B] float32, best cosine between x and the bank *before* this
            step's update, computed for every row; -inf when the bank is empty.
    """

    state: ERSSState
    x_out: Tensor
    fired: Tensor
    injected: Tensor
    cos: Tensor


def erss_init(
    B: int,
    M: int,
    d: int,
    seeds: Tensor,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
) -> ERSSState:
    """An empty state for B rows.

    Args:
        B: rows.
        M: bank slots.
        d: hidden size.
        seeds: [B] int64 per-row seeds (e.g. :func:`~l2reason.techniques.rng.request_seed`).
        dtype: dtype of the stored states (the model's).
        device: where the state lives.

    Example:
        >>> import torch
        >>> erss_init(1, 2, 3, torch.zeros(1, dtype=torch.int64), dtype=torch.float32,
        ...           device="cpu").bank_norm.tolist()
        [[-inf, -inf]]
    """
    zeros = torch.zeros(B, dtype=torch.int64, device=device)
    return ERSSState(
        bank=torch.zeros(B, M, d, dtype=dtype, device=device),
        bank_norm=torch.full((B, M), float("-inf"), dtype=torch.float32, device=device),
        streak=zeros,
        cooldown=zeros.clone(),
        step=zeros.clone(),
        seed=seeds.to(device=device, dtype=torch.int64).reshape(B),
    )


def erss_reset(state: ERSSState, reset: Tensor, seeds: Tensor) -> ERSSState:
    """Empty the rows where ``reset`` is True (a slot got a new request).

    Args:
        state: the current state.
        reset: [B] bool rows to clear.
        seeds: [B] int64 new seeds (used only where ``reset``).

    Returns:
        The new state; other rows are untouched.

    Example:
        >>> import torch
        >>> st = erss_init(2, 1, 1, torch.tensor([5, 6]), dtype=torch.float32, device="cpu")
        >>> erss_reset(st, torch.tensor([False, True]), torch.tensor([0, 9])).seed.tolist()
        [5, 9]
    """
    r1, r2, r3 = reset[:, None], reset[:, None, None], reset
    zero = torch.zeros_like(state.streak)
    return ERSSState(
        bank=torch.where(r2, torch.zeros_like(state.bank), state.bank),
        bank_norm=torch.where(r1, torch.full_like(state.bank_norm, float("-inf")), state.bank_norm),
        streak=torch.where(r3, zero, state.streak),
        cooldown=torch.where(r3, zero, state.cooldown),
        step=torch.where(r3, zero, state.step),
        seed=torch.where(r3, seeds.to(state.seed), state.seed),
    )


def erss_step(
    state: ERSSState,
    x: Tensor,
    n: Tensor,
    tau: Tensor,
    valid: Tensor,
    *,
    r: Tensor | None,
    M: int,
    gamma: float,
    S: int,
    p: float,
    C: int,
    c_min: float,
    beta: float,
    exact: bool,
) -> ERSSStep:
    """One decode step of ERSS at one layer, for all rows at once.

    Args:
        state: the rows' state (bank with M slots).
        x: [B, d] residual stream after the layer, newest token.
        n: [B] ‖x‖.
        tau: [B] τ_l (+inf during warm-up: nothing enters the bank or fires).
        valid: [B] bool; False rows keep their state and get x back unchanged.
        r: [B, d] the residual entering the layer's MLP (required if ``exact``).
        M: bank size (must match ``state``).
        gamma: a step is low when n < γ·τ.
        S: streak needed to fire.
        p: firing probability once streak and cooldown allow.
        C: cooldown after a fire.
        c_min: minimum cosine to inject.
        beta: injection strength β.
        exact: ``x' = x + β·(v* − r)`` (the MLP's output, computed on the
            unmodified r, is kept) if True, else ``x' = (1 − β)·x + β·v*``.

    Returns:
        An :class:`ERSSStep`.

    Raises:
        ConfigError: ``exact`` without ``r``, or ``M`` not the bank's size.

    Example:
        See the module docstring.

    Long because: its five numbered stages (trigger, v*, injection, bank update, counters) share every
    intermediate tensor and stay one fixed-shape function, traced whole inside the serving graph step
    (``l2reason/serving/graph/step.py``); half its length is the Args block.
    """
    B, d = x.shape
    if state.bank.shape[1] != M:
        raise ConfigError(f"M={M} but the ERSS state has {state.bank.shape[1]} bank slots")
    if exact and r is None:
        raise ConfigError(
            "exact ERSS injection needs r, the residual entering the layer's MLP; "
            'pass r or use injection="interpolate"'
        )
    n = n.to(torch.float32)  # [B]
    tau = tau.to(torch.float32)  # [B]
    tau_finite = torch.isfinite(tau)  # [B] False during warm-up

    # 1. Trigger, against the bank before this step's update.
    low = tau_finite & (n < gamma * tau)  # [B]
    streak = torch.where(low, state.streak + 1, torch.zeros_like(state.streak))  # [B]
    u = hash_uniform(state.seed, state.step, stream=STREAM_ERSS)  # [B] in [0, 1)
    fired = valid & (streak >= S) & (state.cooldown == 0) & (u < p)  # [B]

    # 2. v* = argmax cosine over non-empty slots.
    filled = torch.isfinite(state.bank_norm)  # [B, M]
    dots = torch.einsum("bmd,bd->bm", state.bank.to(torch.float32), x.to(torch.float32))
    denom = state.bank_norm.clamp_min(_EPS) * n.clamp_min(_EPS)[:, None]  # [B, M]
    cos_all = torch.where(filled, dots / denom, float("-inf"))  # [B, M]
    j = cos_all.argmax(dim=-1)  # [B] first max on ties
    cos = cos_all.gather(1, j[:, None]).squeeze(1)  # [B]
    v_star = state.bank.gather(1, j[:, None, None].expand(B, 1, d)).squeeze(1)  # [B, d]
    injected = fired & (cos >= c_min)  # [B] (cos = -inf for an empty bank)

    # 3. Injection.
    xf, vf = x.to(torch.float32), v_star.to(torch.float32)
    if exact:
        assert r is not None
        x_new = xf + beta * (vf - r.to(torch.float32))  # x' = x + β(v* − r)
    else:
        x_new = (1.0 - beta) * xf + beta * vf  # x' = (1 − β)x + βv*
    x_out = torch.where(injected[:, None], x_new.to(x.dtype), x)  # [B, d]

    # 4. Bank update with the observed (pre-injection) x: replace the smallest slot.
    min_norm, slot = state.bank_norm.min(dim=-1)  # [B], [B] (empty slots are -inf)
    insert = valid & tau_finite & (n > tau) & (n > min_norm)  # [B]
    write = insert[:, None] & (torch.arange(M, device=x.device)[None, :] == slot[:, None])
    bank = torch.where(write[:, :, None], x[:, None, :].to(state.bank.dtype), state.bank)
    bank_norm = torch.where(write, n[:, None], state.bank_norm)  # [B, M]

    # 5. Counters (only valid rows move).
    streak = torch.where(fired, torch.zeros_like(streak), streak)
    cooldown = torch.where(fired, torch.full_like(state.cooldown, C), (state.cooldown - 1).clamp_min(0))
    new = ERSSState(
        bank=bank,
        bank_norm=bank_norm,
        streak=torch.where(valid, streak, state.streak),
        cooldown=torch.where(valid, cooldown, state.cooldown),
        step=state.step + valid.to(torch.int64),
        seed=state.seed,
    )
    return ERSSStep(new, x_out, fired, injected, cos)


def erss_params(spec: ERSSSpec, *, exact: bool) -> dict[str, Any]:
    """The keyword arguments of :func:`erss_step` from an :class:`ERSSSpec`.

    Args:
        spec: the ERSS spec.
        exact: whether this backend injects exactly (resolves ``injection="auto"``).

    Example:
        >>> from l2reason.techniques.specs import ERSSSpec
        >>> erss_params(ERSSSpec(), exact=False)["S"]
        40
    """
    if spec.injection == "exact" and not exact:
        raise ConfigError(
            'injection="exact" needs the MLP-input residual, which this backend cannot '
            'see; use injection="interpolate" or "auto"'
        )
    return {
        "M": spec.M,
        "gamma": spec.gamma,
        "S": spec.S,
        "p": spec.p,
        "C": spec.C,
        "c_min": spec.c_min,
        "beta": spec.beta,
        "exact": exact and spec.injection != "interpolate",
    }
