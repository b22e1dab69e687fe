"""The graph-safe per-layer ℓ2 step: one fixed sequence of tensor ops over the flattened token batch.

:func:`graph_step` runs after a decoder layer, inside the engine's forward,
and is written so that tracing it once (a CUDA-graph capture, ``make_fx``,
``torch.compile(fullgraph=True)``) records everything it does:

- **No host synchronisation, no Python decision on tensor values.** Every
  token takes every path; masks choose per token (``torch.where``), state is
  gathered from the :class:`~l2reason.serving.graph.tables.SlotTables` rows
  of each token's slot and scattered back. The only Python-level choices
  are static: the layer index (a Python int, fixed per traced layer), the
  shapes, the kinds and layers the tables compiled in
  (:class:`~l2reason.serving.graph.tables.StepConfig`; with none, the step
  only records norms), and whether an ALRR re-run callable is given (a
  graph variant, below).
- **The math is the controllers'.** The step calls the same step functions
  as :mod:`l2reason.techniques.controllers` (``tau_value``/``tau_update``,
  ``alrr_active``/``alrr_accept``/``alrr_static_accept``, ``erss_step``,
  ``static_steer``, ``suppress_step``) with per-token parameter tensors
  instead of one Python scalar per controller. Where a function still takes
  a Python scalar, a one-line adapter here supplies the per-token value
  (``tau_value``'s warm-up; ``erss_step``'s cooldown ``C``;
  ``suppress_step``'s ``scale``); ``docs/graph_step.md`` lists the signature
  changes that would remove them.
- **Order within a layer** (per token): ALRR, ERSS, static steering,
  suppression (the order of ``CONTROLLERS``), each on the previous one's
  output; the recorded norm is taken after all of them. A request runs at
  most one intervention of each kind, and :meth:`SlotTables.admit` refuses
  a request whose interventions on a shared layer come in another order
  (the result would differ from the reference runtime). Each τ is read
  before the layer's interventions and updated after them with each kind's
  own input norm, as the controllers do.
- **Stream convention** (the engines' split residual): the layer hands over
  ``o`` (its MLP output) and ``r`` (the residual entering the MLP); the
  stream is ``x = o + r``. A token an intervention changed is written back as
  ``r ← x'``, ``o ← 0``; every other token keeps ``o`` and ``r``
  bit-identical (``torch.where``). ``o`` is also the MLP output that exact
  ERSS injection needs (``r_mlp = x − o``).
- **ALRR** re-runs the layer a data-dependent number of times, which a
  captured graph cannot. Here the recursion is a fixed unroll of
  ``tables.config.alrr_passes`` calls of ``rerun`` over *all* tokens (only
  at the layers of ``tables.config.alrr_layers``), with the acceptance rule
  masked per token (``K`` per request, static mode per request). Passing
  ``rerun`` or not makes two graph variants; the host picks per step
  (:meth:`SlotTables.needs_rerun`). Cost and the engine options are in
  ``docs/graph_step.md``.
- ERSS ``injection="interpolate"`` runs as the exact formula with ``r = x``:
  ``x + β·(v* − x)``, equal to ``(1 − β)·x + β·v*`` up to float32 rounding
  (not bit-identical; ``exact``/``auto``, the defaults, are).

Example:
    >>> import torch
    >>> from l2reason.serving.graph.tables import SlotTables
    >>> from l2reason.serving.settings import EngineSettings
    >>> from l2reason.serving.info import EngineModelInfo
    >>> t = SlotTables(EngineModelInfo("doc", num_layers=2, hidden_size=4, dtype=torch.float32), 3, max_tokens=4)
    >>> t.admit(1, EngineSettings(layers=[1]))
    >>> t.bind_step(torch.tensor([0, 1]), decode=True)
    >>> o, r = torch.zeros(2, 4), torch.ones(2, 4)
    >>> for layer in range(2):
    ...     o, r = graph_step(t, layer, o, r)
    >>> t.read_records([1], [True])
    [{'n': [2.0]}]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from l2reason.serving.graph.buffers import (
    TH_ALRR,
    TH_ERSS,
    TH_SUPPRESS,
    ALRRTable,
    Buffers,
    ERSSTable,
    SteerTable,
    SuppressTable,
    ThresholdTable,
)
from l2reason.signal.norms import token_norms
from l2reason.signal.threshold import TauState, tau_update, tau_value
from l2reason.techniques.alrr import alrr_accept, alrr_active, alrr_static_accept
from l2reason.techniques.erss import ERSSState, erss_step
from l2reason.techniques.static_steer import static_steer
from l2reason.techniques.suppress import suppress_step

if TYPE_CHECKING:
    from l2reason.serving.graph.tables import SlotTables

__all__ = ["Rerun", "graph_step"]

#: ``f(x [N, d]) -> [N, d]``: the layer applied again to every token's stream, without changing the KV cache
Rerun = Callable[[Tensor], Tensor]

# The per-layer seed salts of the controllers (ERSSController._fresh, SuppressController.step); the
# equality tests against the reference runtime fail if they drift apart.
_ERSS_LAYER_SALT = 0x9E3779B1
_SUPPRESS_LAYER_SALT = 0x85EBCA6B
_NAN = float("nan")


def graph_step(
    tables: SlotTables,
    layer: int,
    o: Tensor,
    r: Tensor,
    *,
    rerun: Rerun | None = None,
    buffers: Buffers | None = None,
) -> tuple[Tensor, Tensor]:
    """The ℓ2 work after decoder layer ``layer``: interventions, τ updates, norm capture (in place).

    Args:
        tables: the model's slot tables (static configuration and buffers).
        layer: the decoder layer just computed (a Python int: static per traced layer).
        o: ``[N, d]`` the layer's MLP output for the step's N flattened tokens (written in place).
        r: ``[N, d]`` the residual entering the MLP (written in place); the stream is ``o + r``.
        rerun: ALRR's re-run (see :data:`Rerun`); None = the variant without recursion passes.
        buffers: the tables' buffers (default ``tables.buffers``); a tracer passes them as an argument.

    Returns:
        ``(o, r)``, the same tensors, changed only on the tokens an intervention changed.
    """
    cfg = tables.config
    b = tables.buffers if buffers is None else buffers
    N = o.shape[0]
    slot = b.tokens.slot[:N]  # [N] 0 = inert
    x = o + r  # [N, d] the residual stream after `layer`
    if layer in cfg.layers and cfg.kinds:
        x, changed = _interventions(tables, b, layer, x, o, slot, rerun)
        ch = changed[:, None]  # [N, 1]
        r.copy_(torch.where(ch, x.to(r.dtype), r))
        o.copy_(torch.where(ch, torch.zeros_like(o), o))
    rec = b.records
    rec.norms[slot, layer] = torch.where(rec.want[slot, layer], token_norms(x), _NAN)
    return o, r


def _interventions(
    tables: SlotTables, b: Buffers, layer: int, x: Tensor, o: Tensor, slot: Tensor, rerun: Rerun | None
) -> tuple[Tensor, Tensor]:
    """The compiled-in kinds in order, then the τ updates. Returns ``(x', changed [N])``."""
    cfg = tables.config
    N = x.shape[0]
    dec = b.tokens.decode[:N]  # [N] interventions run on decode tokens only
    changed = torch.zeros(N, dtype=torch.bool, device=x.device)
    n_in = [torch.zeros(N, device=x.device)] * 3  # each thresholded kind's input norm (rows TH_*)
    ran = [changed] * 3  # where it ran
    thresholded = bool(cfg.kinds - {"static_steer"})
    # the τ state gathered, and [3, N] τ read before any intervention of the layer (a placeholder if unused)
    th, tau = _read_thresholds(b.thresholds, layer, slot) if thresholded else (None, x.new_zeros(3, N))
    if "alrr" in cfg.kinds:
        loop = rerun if layer in cfg.alrr_layers else None
        x, ch, n_in[TH_ALRR], ran[TH_ALRR] = _alrr(b.alrr, layer, x, slot, dec, tau[TH_ALRR], loop, cfg.alrr_passes)
        changed = changed | ch
    if "erss" in cfg.kinds:
        x, ch, n_in[TH_ERSS], ran[TH_ERSS] = _erss(b.erss, b.seed, layer, x, o, slot, dec, tau[TH_ERSS], cfg.bank)
        changed = changed | ch
    if "static_steer" in cfg.kinds:
        x, ch = _steer(b.steer, layer, x, slot, dec)
        changed = changed | ch
    if "suppress" in cfg.kinds:
        x, ch, n_in[TH_SUPPRESS], ran[TH_SUPPRESS] = _suppress(
            b.suppress, b.seed, layer, x, slot, dec, tau[TH_SUPPRESS]
        )
        changed = changed | ch
    if th is not None:
        _update_thresholds(b.thresholds, layer, slot, th, torch.stack(n_in), torch.stack(ran))
    return x, changed


# ---- gather / scatter of (nested) NamedTuples of [3, L, S, ...] tensors -------------------------


def _take(tree: Any, layer: int, slot: Tensor) -> Any:
    """Every leaf ``[3, L, S, ...]`` of ``tree`` at ``[:, layer, slot]`` -> ``[3, N, ...]``."""
    if isinstance(tree, Tensor):
        return tree[:, layer, slot]
    return type(tree)(*(_take(t, layer, slot) for t in tree))


def _put(tree: Any, layer: int, slot: Tensor, new: Any) -> None:
    """Write ``new`` (leaves ``[3, N, ...]``) back at ``[:, layer, slot]`` (slot 0 repeats carry its own values)."""
    if isinstance(tree, Tensor):
        tree[:, layer, slot] = new
        return
    for t, v in zip(tree, new, strict=True):
        _put(t, layer, slot, v)


def _read_thresholds(t: ThresholdTable, layer: int, slot: Tensor) -> tuple[TauState, Tensor]:
    """The tokens' τ state and τ for every thresholded kind (read before the layer's interventions)."""
    st = _take(t.state, layer, slot)  # TauState, batch [3, N]
    k, floor = t.k[:, slot], t.min_iqr[:, slot]  # [3, N]
    # tau_value takes the warm-up as a Python int: ask it for τ from 1 sample on, then gate per token
    tau = tau_value(st, warmup=1, k=k, min_iqr=floor)  # type: ignore[arg-type]
    tau = torch.where(st.q3.count >= t.warmup[:, slot].clamp_min(1), tau, float("inf"))
    return st, torch.where(t.calibrated[:, slot], t.fixed[:, layer, slot], tau)


def _update_thresholds(t: ThresholdTable, layer: int, slot: Tensor, st: TauState, n: Tensor, valid: Tensor) -> None:
    """Feed each kind's input norm ``n [3, N]`` where it ran (``valid [3, N]``); calibrated τ has no state."""
    _put(t.state, layer, slot, tau_update(st, n, valid & ~t.calibrated[:, slot]))


# ---- the interventions, in the order they run ------------------------------------------------------


def _alrr(
    a: ALRRTable, layer: int, x: Tensor, slot: Tensor, dec: Tensor, tau: Tensor, rerun: Rerun | None, passes: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """ALRR (as ``ALRRController.step``): activity, then ``passes`` masked re-run passes.

    Returns ``(x', changed [N], n⁰ [N], on [N])``.
    """
    on = dec & a.on[layer, slot]  # [N]
    static, K = a.static[slot], a.K[slot]
    a.steps[slot] += (on & (a.first[slot] == layer)).long()
    n0 = token_norms(x)
    active = torch.where(static, on, alrr_active(n0, tau, a.b[slot], on))  # type: ignore[arg-type]
    a.active[slot, layer] += active.long()
    changed = torch.zeros_like(on)
    if rerun is None:
        return x, changed, n0, on
    x_k, n_k = x, n0
    for k in range(passes):  # a static unroll; a request's K masks the passes beyond it
        active = active & (k < K)
        x_t = rerun(x_k)
        st_s = alrr_static_accept(x_k, n_k, x_t, active)
        st_a = alrr_accept(x_k, n_k, x_t, tau, active, a.g[slot], a.b[slot])  # type: ignore[arg-type]
        acc = torch.where(static, st_s.accepted, st_a.accepted)
        a.tried[slot, layer] += active.long()
        a.accepted[slot, layer] += acc.long()
        x_k = torch.where(static[:, None], st_s.x_next, st_a.x_next)
        n_k = torch.where(static, st_s.n_next, st_a.n_next)
        active = torch.where(static, st_s.still_active, st_a.still_active)
        changed = changed | acc
    return x_k, changed, n0, on


def _erss(
    e: ERSSTable, seeds: Tensor, layer: int, x: Tensor, o: Tensor, slot: Tensor, dec: Tensor, tau: Tensor, M: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """ERSS (as ``ERSSController.step``, exact injection from the MLP output ``o``).

    Returns ``(x', injected [N], n [N], on [N])``.
    """
    on = dec & e.on[layer, slot]  # [N]
    row = e.row[slot]  # [N] ERSS row, 0 inert
    state = ERSSState(
        bank=e.bank[layer, row],  # [N, M, d]
        bank_norm=e.bank_norm[layer, row],
        streak=e.bank_streak[layer, row],
        cooldown=e.bank_cooldown[layer, row],
        step=e.bank_step[layer, row],
        seed=seeds[slot] ^ (layer * _ERSS_LAYER_SALT),
    )
    n = token_norms(x)
    r_mlp = torch.where(e.exact[slot][:, None], x - o.to(x.dtype), x)  # interpolate rows: r = x (module doc)
    out = erss_step(
        state,
        x,
        n,
        tau,
        on,
        r=r_mlp,
        M=M,
        gamma=e.gamma[slot],  # type: ignore[arg-type]
        S=e.streak[slot],  # type: ignore[arg-type]
        p=e.p[slot],  # type: ignore[arg-type]
        C=0,  # erss_step takes C as a Python int: the per-token cooldown is set just below
        c_min=e.c_min[slot],  # type: ignore[arg-type]
        beta=e.beta[slot][:, None],  # type: ignore[arg-type]
        exact=True,
    )
    new = out.state
    e.bank[layer, row] = new.bank
    e.bank_norm[layer, row] = new.bank_norm
    e.bank_streak[layer, row] = new.streak
    e.bank_cooldown[layer, row] = torch.where(out.fired, e.cooldown[slot], new.cooldown)
    e.bank_step[layer, row] = new.step
    e.fires[slot] += out.fired.long()
    e.cos[layer, slot] = torch.where(out.injected, out.cos, _NAN)
    return out.x_out, out.injected, n, on


def _steer(s: SteerTable, layer: int, x: Tensor, slot: Tensor, dec: Tensor) -> tuple[Tensor, Tensor]:
    """Static steering (as ``StaticSteerController.step``). Returns ``(x', steered [N])``."""
    vi = s.idx[layer, slot]  # [N] vector row, 0 = the zero vector
    on = dec & (vi > 0)
    s.steered[slot] += (on & (s.first[slot] == layer)).long()
    v, alpha, keep = s.bank[vi], s.alpha[slot][:, None], s.norm_preserving[slot]  # [N, d], [N, 1], [N]
    x = static_steer(x, v, alpha, on & ~keep, norm_preserving=False)  # type: ignore[arg-type]
    x = static_steer(x, v, alpha, on & keep, norm_preserving=True)  # type: ignore[arg-type]
    return x, on


def _suppress(
    p: SuppressTable, seeds: Tensor, layer: int, x: Tensor, slot: Tensor, dec: Tensor, tau: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Suppression (as ``SuppressController.step``): one masked call per (target, action).

    Returns ``(x', suppressed [N], n [N], on [N])``.
    """
    on = dec & p.on[layer, slot]  # [N]
    p.row_step[slot] += (on & (p.first[slot] == layer)).long()
    step, seed = p.row_step[slot], seeds[slot] ^ (layer * _SUPPRESS_LAYER_SALT)
    n = token_norms(x)
    rand, clamp, scale = p.random[slot], p.clamp[slot], p.scale[slot][:, None]
    hit_any = torch.zeros_like(on)
    for target, is_target in (("high_norm", ~rand), ("random", rand)):
        for action, is_action in (("scale", ~clamp), ("clamp", clamp)):
            # suppress_step takes `scale` as a Python float: scale 1 (a no-op), then the per-token factor
            x, hit = suppress_step(
                x,
                n,
                tau,
                on & is_target & is_action,
                target=target,  # type: ignore[arg-type]
                action=action,  # type: ignore[arg-type]
                scale=1.0,
                rate=p.rate[slot],  # type: ignore[arg-type]
                seed=seed,
                step=step,
            )
            if action == "scale":
                x = torch.where(hit[:, None], (x.to(torch.float32) * scale).to(x.dtype), x)
            hit_any = hit_any | hit
    p.suppressed[slot, layer] += hit_any.long()
    return x, hit_any, n, on
