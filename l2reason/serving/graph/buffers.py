"""The persistent device buffers of the graph-safe step, field by field.

Everything the captured step reads or writes lives here, allocated once by
:func:`alloc_buffers` and afterwards only written in place (``copy_``,
``fill_``, indexed assignment): a captured CUDA graph holds the addresses, so
a buffer that were re-allocated or rebound would silently stop being read.

Symbols (shape comments below use them):

- ``S`` slots; **row 0 is inert**: padding tokens and tokens without ℓ2 work
  map to it, and nothing in it ever changes (every ``on`` mask is False
  there, every update is gated by it).
- ``L`` decoder layers, ``d`` hidden size, ``T`` most tokens in one step.
- ``E`` ERSS rows (row 0 inert): an ERSS bank ``[M, d]`` per layer is big, so
  only requests that use ERSS get a row (``erss.row[slot]``).
- ``M`` bank capacity: a request with a smaller ``M`` uses the first ``M``
  entries; the others hold the norm ``+inf``, which ``erss_step`` never picks
  (not "filled" for the cosine, never the smallest norm to replace).
- ``V`` steering-vector rows (row 0 = zeros).
- Threshold tables have a leading axis of 3, one per thresholded kind
  (:data:`TH_ALRR`, :data:`TH_ERSS`, :data:`TH_SUPPRESS`): each request runs
  at most one intervention of a kind, so one τ state per (kind, layer, slot).

Example:
    >>> import torch
    >>> b = alloc_buffers(num_slots=3, num_layers=2, hidden=4, max_tokens=5, erss_rows=1,
    ...                   bank=2, vectors=3, dtype=torch.float32, device="cpu")
    >>> b.records.norms.shape, b.steer.bank.shape, b.erss.bank.shape
    (torch.Size([3, 2]), torch.Size([4, 4]), torch.Size([2, 2, 2, 4]))
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from l2reason.signal.threshold import TauState, tau_init

__all__ = [
    "TH_ALRR",
    "TH_ERSS",
    "TH_SUPPRESS",
    "ALRRTable",
    "Buffers",
    "ERSSTable",
    "RecordTable",
    "SteerTable",
    "SuppressTable",
    "ThresholdTable",
    "TokenMap",
    "alloc_buffers",
    "buffer_bytes",
]

#: rows of the threshold tables (one τ state per thresholded kind)
TH_ALRR, TH_ERSS, TH_SUPPRESS = 0, 1, 2
_N_TH = 3


class TokenMap(NamedTuple):
    """This step's flattened tokens (filled by :meth:`SlotTables.bind_step` before the forward).

    Attributes:
        slot: ``[T]`` int64 the token's slot; 0 = inert (padding, no ℓ2 work, not a request's newest token).
        decode: ``[T]`` bool the token is a decode token (interventions run; at a prefill only norms).
    """

    slot: Tensor
    decode: Tensor


class RecordTable(NamedTuple):
    """Norm capture.

    Attributes:
        want: ``[S, L]`` bool the slot records layer l.
        norms: ``[S, L]`` float32 ‖x‖ after layer l (all interventions applied), written in-graph; NaN where
            not wanted.
    """

    want: Tensor
    norms: Tensor


class ThresholdTable(NamedTuple):
    """τ per (kind, layer, slot): adaptive (P² quartiles) or calibrated (fixed).

    Attributes:
        state: :class:`~l2reason.signal.threshold.TauState`, batch shape ``[3, L, S]``.
        warmup: ``[3, S]`` int64 samples before τ is finite.
        k: ``[3, S]`` float32 fence multiplier.
        min_iqr: ``[3, S]`` float32 IQR floor.
        calibrated: ``[3, S]`` bool τ is ``fixed`` (no state update).
        fixed: ``[3, L, S]`` float32 calibrated τ.
    """

    state: TauState
    warmup: Tensor
    k: Tensor
    min_iqr: Tensor
    calibrated: Tensor
    fixed: Tensor


class SteerTable(NamedTuple):
    """Static steering ``x + α·v``.

    Attributes:
        bank: ``[V, d]`` model dtype vectors; row 0 = zeros.
        idx: ``[L, S]`` int64 the slot's vector row at layer l (0 = not steered there).
        alpha: ``[S]`` float32 α.
        norm_preserving: ``[S]`` bool rescale to ‖x‖.
        first: ``[S]`` int64 the slot's first steered layer (-1 none): the step counter moves there.
        steered: ``[S]`` int64 steered decode steps (report).
    """

    bank: Tensor
    idx: Tensor
    alpha: Tensor
    norm_preserving: Tensor
    first: Tensor
    steered: Tensor


class SuppressTable(NamedTuple):
    """Suppression (the causal check).

    Attributes:
        on: ``[L, S]`` bool suppress at layer l.
        random: ``[S]`` bool target ``"random"`` (else ``"high_norm"``).
        clamp: ``[S]`` bool action ``"clamp"`` (else ``"scale"``).
        scale: ``[S]`` float32 factor of ``"scale"``.
        rate: ``[S]`` float32 rate of ``"random"``.
        first: ``[S]`` int64 first suppressed layer (-1 none).
        row_step: ``[S]`` int64 valid decode steps seen (RNG counter, rate denominator).
        suppressed: ``[S, L]`` int64 suppressed tokens (report).
    """

    on: Tensor
    random: Tensor
    clamp: Tensor
    scale: Tensor
    rate: Tensor
    first: Tensor
    row_step: Tensor
    suppressed: Tensor


class ERSSTable(NamedTuple):
    """ERSS parameters per slot, state per (layer, ERSS row).

    Attributes:
        on: ``[L, S]`` bool steer at layer l.
        row: ``[S]`` int64 the slot's ERSS row (0 inert).
        gamma, p, c_min, beta: ``[S]`` float32 the spec's values.
        streak: ``[S]`` int64 the spec's S (streak length needed to fire).
        cooldown: ``[S]`` int64 the spec's C.
        exact: ``[S]`` bool exact injection (else interpolate).
        fires: ``[S]`` int64 fires (report).
        cos: ``[L, S]`` float32 this step's injection cosine, NaN where nothing was injected (read after the
            step for the report's events).
        bank: ``[L, E, M, d]`` model dtype; ``bank_norm``: ``[L, E, M]`` float32 (-inf empty, +inf unused).
        bank_streak, bank_cooldown, bank_step: ``[L, E]`` int64 the fields of
            :class:`~l2reason.techniques.erss.ERSSState` (the seed is derived from the slot's).
    """

    on: Tensor
    row: Tensor
    gamma: Tensor
    streak: Tensor
    p: Tensor
    cooldown: Tensor
    c_min: Tensor
    beta: Tensor
    exact: Tensor
    fires: Tensor
    cos: Tensor
    bank: Tensor
    bank_norm: Tensor
    bank_streak: Tensor
    bank_cooldown: Tensor
    bank_step: Tensor


class ALRRTable(NamedTuple):
    """ALRR parameters and counters per slot.

    Attributes:
        on: ``[L, S]`` bool recurse at layer l.
        static: ``[S]`` bool static mode.
        K: ``[S]`` int64 passes; ``g``, ``b``: ``[S]`` float32.
        first: ``[S]`` int64 first recursion layer (-1 none).
        steps: ``[S]`` int64 decode steps (report).
        active, tried, accepted: ``[S, L]`` int64 (report).
    """

    on: Tensor
    static: Tensor
    K: Tensor
    g: Tensor
    b: Tensor
    first: Tensor
    steps: Tensor
    active: Tensor
    tried: Tensor
    accepted: Tensor


class Buffers(NamedTuple):
    """Every persistent buffer of one model's step (a pytree of tensors: pass it to a tracer as one argument).

    Attributes:
        tokens: this step's token map.
        seed: ``[S]`` int64 the request's seed (the controllers' counter-hash RNG).
        records, thresholds, steer, suppress, erss, alrr: see each table.
    """

    tokens: TokenMap
    seed: Tensor
    records: RecordTable
    thresholds: ThresholdTable
    steer: SteerTable
    suppress: SuppressTable
    erss: ERSSTable
    alrr: ALRRTable


def alloc_buffers(
    *,
    num_slots: int,
    num_layers: int,
    hidden: int,
    max_tokens: int,
    erss_rows: int,
    bank: int,
    vectors: int,
    dtype: torch.dtype,
    device: torch.device | str,
) -> Buffers:
    """Allocate every buffer, inert (the only allocation the tables ever make).

    Args:
        num_slots: S, row 0 included.
        num_layers: L.
        hidden: d.
        max_tokens: T.
        erss_rows: ERSS rows besides the inert row 0 (E − 1).
        bank: M, the ERSS bank capacity.
        vectors: steering-vector rows besides the zero row 0 (V − 1).
        dtype: the model's dtype (ERSS banks and steering vectors are kept in it, as the controllers do).
        device: the model's device.

    Long because: it is the one place every table's tensors are allocated, a flat list of fields and shapes
    that reads against the table classes above; splitting it would scatter the shapes.
    """
    S, L, d, T, E, M, V = num_slots, num_layers, hidden, max_tokens, erss_rows + 1, bank, vectors + 1
    dev = torch.device(device)

    def z(*shape: int, dt: torch.dtype = torch.int64) -> Tensor:
        return torch.zeros(shape, dtype=dt, device=dev)

    def f(*shape: int) -> Tensor:
        return z(*shape, dt=torch.float32)

    def b(*shape: int) -> Tensor:
        return z(*shape, dt=torch.bool)

    def none(*shape: int) -> Tensor:
        return torch.full(shape, -1, dtype=torch.int64, device=dev)

    return Buffers(
        tokens=TokenMap(slot=z(T), decode=b(T)),
        seed=z(S),
        records=RecordTable(want=b(S, L), norms=torch.full((S, L), float("nan"), device=dev)),
        thresholds=ThresholdTable(
            state=tau_init((_N_TH, L, S), device=dev),
            warmup=z(_N_TH, S),
            k=f(_N_TH, S),
            min_iqr=f(_N_TH, S),
            calibrated=b(_N_TH, S),
            fixed=f(_N_TH, L, S),
        ),
        steer=SteerTable(
            bank=z(V, d, dt=dtype),
            idx=z(L, S),
            alpha=f(S),
            norm_preserving=b(S),
            first=none(S),
            steered=z(S),
        ),
        suppress=SuppressTable(
            on=b(L, S),
            **{k: b(S) for k in ("random", "clamp")},
            **{k: f(S) for k in ("scale", "rate")},
            first=none(S),
            row_step=z(S),
            suppressed=z(S, L),
        ),
        erss=ERSSTable(
            on=b(L, S),
            row=z(S),
            **{k: f(S) for k in ("gamma", "p", "c_min", "beta")},
            **{k: z(S) for k in ("streak", "cooldown", "fires")},
            exact=b(S),
            cos=torch.full((L, S), float("nan"), device=dev),
            bank=z(L, E, M, d, dt=dtype),
            bank_norm=torch.full((L, E, M), float("-inf"), device=dev),
            **{k: z(L, E) for k in ("bank_streak", "bank_cooldown", "bank_step")},
        ),
        alrr=ALRRTable(
            on=b(L, S),
            static=b(S),
            **{k: z(S) for k in ("K", "steps")},
            **{k: f(S) for k in ("g", "b")},
            first=none(S),
            **{k: z(S, L) for k in ("active", "tried", "accepted")},
        ),
    )


def buffer_bytes(buffers: Buffers) -> int:
    """Device memory the buffers hold, in bytes."""
    from torch.utils._pytree import tree_leaves

    return sum(t.numel() * t.element_size() for t in tree_leaves(buffers) if isinstance(t, Tensor))
