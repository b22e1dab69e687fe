"""A simulated continuous-batching run, for proving the graph step equal to the reference runtime.

The unit tests and ``benchmarks/gpu_graph_check.py`` share this: a
scheduler that lets requests with mixed settings join (a prefill of several
tokens), decode and leave, reusing slots, with requests without ℓ2 work and
padding tokens in the same flattened batch; a stand-in decoder (per layer an
RMS-normed gated MLP whose output ``o`` and input ``r`` form the stream
``o + r``, as the engines split it; attention is left out, so every token is
computed independently); and three ways to run the same schedule:

- :func:`run_reference`: :class:`~l2reason.serving.slots.SlotRuntime` and
  the controllers, driven the way the vLLM plugin drives them (one plan for
  the decode rows, one for the prefill rows, the newest token of each
  request, the re-run over the whole batch);
- :func:`run_tables` with :func:`eager_forward`: :class:`SlotTables` and
  :func:`graph_step` run eagerly;
- :func:`run_tables` with any other ``forward``: e.g. a graph traced once
  (``make_fx``, a CUDA graph) and replayed.

Example:
    >>> import torch
    >>> from l2reason.serving.settings import EngineSettings
    >>> model = StandIn(num_layers=2, hidden=4, inter=5, seed=0)
    >>> reqs = [Req("a", EngineSettings(layers=[1]), arrive=0, prompt=2, decode=3)]
    >>> steps = schedule(reqs, num_slots=3, tokens=4, hidden=4, seed=0)
    >>> ref = run_reference(model, steps, num_slots=3)
    >>> tables = SlotTables(model.info, num_slots=3, max_tokens=4)
    >>> got = run_tables(model, steps, tables, eager_forward(model, tables))
    >>> compare(ref, got)["records_equal"]
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from l2reason.serving.graph.step import Rerun, graph_step
from l2reason.serving.graph.tables import SlotTables
from l2reason.serving.settings import EngineSettings
from l2reason.serving.slots import SlotRuntime
from l2reason.signal.band import resolve_layers

__all__ = [
    "BatchStep",
    "Req",
    "Row",
    "StandIn",
    "Trace",
    "compare",
    "eager_forward",
    "mixed_requests",
    "run_reference",
    "run_tables",
    "schedule",
]

#: ``forward(x [N, d], alrr: bool) -> [N, d]``: the stream after the last layer (the graph step after each)
Forward = Callable[[Tensor, bool], Tensor]


@dataclass(frozen=True)
class Req:
    """A request of the simulation: its settings, when it arrives, its prompt and decode lengths."""

    rid: str
    settings: EngineSettings | None
    arrive: int
    prompt: int
    decode: int


@dataclass
class Row:
    """One request in one step: its tokens are ``start .. start + ntok - 1`` of the flattened batch."""

    rid: str
    slot: int  # 0: a request without settings (no slot)
    settings: EngineSettings | None
    decode: bool
    start: int
    ntok: int

    @property
    def last(self) -> int:
        """The request's newest token (the one whose next token this step produces)."""
        return self.start + self.ntok - 1


@dataclass
class BatchStep:
    """One forward pass of the simulation.

    Attributes:
        rows: the requests in the batch, in batch order.
        joins: the rows whose request starts here (admitted before the step).
        leaves: the slots whose request ends with this step (released after it).
        x: ``[N, d]`` float32 the tokens' streams entering layer 0 (padding included).
    """

    rows: list[Row]
    joins: list[Row]
    leaves: list[int]
    x: Tensor

    def token_map(self) -> tuple[Tensor, Tensor]:
        """``(token_slots [N], decode [N])`` as :meth:`SlotTables.bind_step` takes them."""
        N = self.x.shape[0]
        slots = torch.zeros(N, dtype=torch.long)
        dec = torch.zeros(N, dtype=torch.bool)
        for row in self.rows:
            slots[row.last] = row.slot
            dec[row.start : row.start + row.ntok] = row.decode
        return slots, dec

    def l2_rows(self) -> list[Row]:
        """The rows with settings (the ones a plugin gives a slot and a record)."""
        return [row for row in self.rows if row.slot]


def schedule(
    reqs: Sequence[Req], *, num_slots: int, tokens: int, hidden: int, seed: int, max_steps: int = 10_000
) -> list[BatchStep]:
    """A continuous-batching run: arrived requests join (prefill) while their prompt fits in ``tokens`` and a
    slot is free, then decode one token per step, and leave after their last decode step (their slot is free
    for the next step; the lowest free slot is taken first). The rest of the ``tokens`` is padding."""
    g = torch.Generator().manual_seed(seed)
    pending = sorted(reqs, key=lambda q: q.arrive)
    running: list[tuple[Req, int, int]] = []  # (request, slot, decode steps left)
    free = list(range(1, num_slots))
    steps: list[BatchStep] = []
    for t in range(max_steps):
        if not pending and not running:
            break
        rows, joins, used, nxt = [], [], 0, []
        for q, slot, left in running:
            rows.append(Row(q.rid, slot, q.settings, True, used, 1))
            used += 1
            nxt.append((q, slot, left - 1))
        while pending and pending[0].arrive <= t and used + pending[0].prompt <= tokens:
            q = pending[0]
            if q.settings is not None and not free:
                break
            pending.pop(0)
            slot = free.pop(free.index(min(free))) if q.settings is not None else 0
            row = Row(q.rid, slot, q.settings, False, used, q.prompt)
            rows.append(row)
            joins.append(row)
            used += q.prompt
            nxt.append((q, slot, q.decode))
        running = [(q, s, left) for q, s, left in nxt if left > 0]
        leaves = [s for q, s, left in nxt if left <= 0 and s]
        free.extend(leaves)
        x = torch.randn(tokens, hidden, generator=g) * (1 + 3 * torch.rand(tokens, 1, generator=g))
        steps.append(BatchStep(rows, joins, leaves, x))
    return steps


class StandIn:
    """A stand-in decoder: per layer ``o = MLP(rmsnorm(x))`` (SiLU-gated), ``r = x``, stream ``o + r``.

    Args:
        num_layers: L. hidden: d. inter: the MLP's width.
        seed: the weights' seed. dtype, device: the model's.
    """

    def __init__(
        self,
        num_layers: int,
        hidden: int,
        inter: int,
        *,
        seed: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        g = torch.Generator(device=device).manual_seed(seed)  # weights drawn where they live (fast on a GPU)
        L, d = num_layers, hidden

        def w(rows: int, cols: int) -> Tensor:
            return (torch.randn(L, rows, cols, generator=g, device=device) / math.sqrt(rows)).to(dtype)

        self.gate, self.up, self.down = w(d, inter), w(d, inter), w(inter, d)
        self.num_layers, self.hidden_size, self.dtype = L, d, dtype
        self.device = torch.device(device)

    @property
    def info(self) -> StandIn:
        """The model as the controllers see it (:class:`~l2reason.techniques.controllers.ModelInfo`)."""
        return self

    def calibrated_tau(self, layers: list[int], what: str, alternative: str) -> Tensor:
        """No calibration file for a random model (the error a request with a calibrated threshold gets)."""
        from l2reason.errors import ConfigError

        raise ConfigError(f"{what}: the stand-in model has no calibration; {alternative}")

    def mlp(self, layer: int, x: Tensor) -> Tensor:
        """``o [N, d]``, the layer's MLP output for the streams ``x [N, d]``."""
        h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return (torch.nn.functional.silu(h @ self.gate[layer]) * (h @ self.up[layer])) @ self.down[layer]

    def rerun(self, layer: int) -> Rerun:
        """The layer applied again (ALRR): ``x ↦ x + MLP(x)``."""
        return lambda x: x + self.mlp(layer, x)


@dataclass
class Trace:
    """What a run produced: per step the final streams ``[N, d]``, and each request's records in order."""

    streams: list[Tensor] = field(default_factory=list)
    records: dict[str, list[dict[str, Any] | None]] = field(default_factory=dict)


def run_reference(model: StandIn, steps: Sequence[BatchStep], *, num_slots: int) -> Trace:
    """The schedule through :class:`~l2reason.serving.slots.SlotRuntime` (as the vLLM plugin drives it)."""
    rt = SlotRuntime(model.info, num_slots=num_slots, device=model.device)
    out = Trace()
    for st in steps:
        plans = []
        for decode in (True, False):
            rows = [row for row in st.l2_rows() if row.decode == decode]
            if rows:
                plan = rt.plan([r.slot for r in rows], [r.rid for r in rows], [r.settings for r in rows], decode=decode)
                plans.append((plan, rows, torch.tensor([r.last for r in rows], device=model.device)))
        x = st.x.to(device=model.device, dtype=model.dtype)
        for layer in range(model.num_layers):
            o = model.mlp(layer, x)
            x = o + x
            for plan, _, last in plans:
                new = rt.step_layer(plan, layer, x[last], mlp_out=o[last], rerun=_rows_rerun(model, layer, x, last))
                x[last] = new
        out.streams.append(x)
        for plan, rows, _ in plans:
            for row, rec in zip(rows, rt.records(plan), strict=True):
                out.records.setdefault(row.rid, []).append(rec)
    return out


def _rows_rerun(model: StandIn, layer: int, x: Tensor, last: Tensor) -> Rerun:
    """The reference's re-run: the rows' streams put into the whole batch, the layer run on all of it (as the
    plugins do), the rows taken out."""

    def rerun(xs: Tensor) -> Tensor:
        full = x.clone()
        full[last] = xs
        return model.rerun(layer)(full)[last]

    return rerun


def eager_forward(model: StandIn, tables: SlotTables, buffers: Any = None) -> Forward:
    """The stand-in's layer loop with :func:`graph_step` after every layer (``buffers``: see :func:`graph_step`)."""

    def forward(x: Tensor, alrr: bool) -> Tensor:
        for layer in range(model.num_layers):
            o = model.mlp(layer, x)
            r = x.clone()
            o, r = graph_step(tables, layer, o, r, rerun=model.rerun(layer) if alrr else None, buffers=buffers)
            x = o + r
        return x

    return forward


def run_tables(model: StandIn, steps: Sequence[BatchStep], tables: SlotTables, forward: Forward) -> Trace:
    """The schedule through :class:`SlotTables`: admit joins, bind the token map, ``forward``, read records,
    release leavers."""
    out = Trace()
    for st in steps:
        for row in st.joins:
            if row.slot:
                tables.admit(row.slot, row.settings)
        token_slots, dec = st.token_map()
        tables.bind_step(token_slots.to(model.device), dec.to(model.device))
        rows = st.l2_rows()
        x = forward(st.x.to(device=model.device, dtype=model.dtype), tables.needs_rerun([r.slot for r in rows]))
        out.streams.append(x.clone())
        for row, rec in zip(rows, tables.read_records([r.slot for r in rows], [r.decode for r in rows]), strict=True):
            out.records.setdefault(row.rid, []).append(rec)
        for slot in st.leaves:
            tables.release(slot)
    return out


def compare(a: Trace, b: Trace) -> dict[str, Any]:
    """How two runs differ: streams (bit-equal, largest difference), records (equal, first difference), and the
    records' norms (largest relative difference) and everything else in them (equal), apart."""
    pairs = list(zip(a.streams, b.streams, strict=True))
    diff = max((float((x.float() - y.float()).abs().max()) for x, y in pairs), default=0.0)
    first = next((rid for rid in a.records if a.records[rid] != b.records.get(rid)), None)
    rel, rest_equal = 0.0, set(a.records) == set(b.records)
    for rid, recs in a.records.items():
        for ra, rb in zip(recs, b.records.get(rid, []), strict=False):
            na, nb = (ra or {}).get("n", []), (rb or {}).get("n", [])
            rel = max([rel, *(abs(u - v) / max(abs(u), 1e-30) for u, v in zip(na, nb, strict=False))])
            rest_equal &= len(na) == len(nb) and _without_norms(ra) == _without_norms(rb)
    return {
        "steps": len(a.streams),
        "streams_equal": all(torch.equal(x, y) for x, y in pairs),
        "stream_max_abs_diff": diff,
        "records_equal": first is None and set(a.records) == set(b.records),
        "norm_max_rel_diff": rel,
        "records_equal_but_norms": rest_equal,
        "first_record_diff": None if first is None else (first, a.records[first], b.records.get(first)),
    }


def _without_norms(rec: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if rec is None else {k: v for k, v in rec.items() if k != "n"}


def mixed_requests(num_layers: int, hidden: int, *, rounds: int = 2) -> list[Req]:
    """Requests with every intervention (and combinations the graph step runs), norms only, none, a probe, and
    two that fail (a calibrated threshold, a missing layer), arriving over time; ``rounds`` copies."""
    L, d = num_layers, hidden
    band = resolve_layers("band", L)
    fast = {"warmup": 2, "k": 0.0}  # thresholds that act within a few steps
    erss = {"kind": "erss", "layers": [1, L - 1], "S": 2, "p": 1.0, "C": 1, "c_min": -1.0, "M": 3, "threshold": fast}
    alrr = {"kind": "alrr", "layers": [0, band[0]], "K": 2, "g": 0.0, "b": 100.0, "threshold": {"warmup": 1, "k": 0.0}}
    steer = {"kind": "static_steer", "vectors": {1: [0.5] * d, -1: [(-1.0) ** i for i in range(d)]}, "alpha": 0.7}
    kinds: list[tuple[list[int], list[dict[str, Any]]]] = [
        ([0, L - 1], []),
        ([0, band[0]], [alrr]),
        ([band[0]], [{**steer, "norm_preserving": True}]),
        ([1, L - 1], [erss]),
        ([L - 1], [{"kind": "suppress", "target": "random", "rate": 0.5, "layers": [1, L - 1]}]),
        ([band[0]], [{"kind": "suppress", "action": "clamp", "layers": [band[0]], "threshold": fast}]),
        ([1], [{**alrr, "mode": "static", "K": 1, "layers": [band[0]]}, steer]),
        (
            [1],
            [
                {**erss, "M": 4, "threshold": {"warmup": 3, "k": 0.5}},
                {"kind": "suppress", "layers": [L - 1], "threshold": fast},
            ],
        ),
        ([1], [{"kind": "erss", "threshold": {"mode": "calibrated"}}]),
        ([L + 5], []),
    ]
    reqs = []
    for k in range(rounds):
        for i, (layers, ivs) in enumerate(kinds):
            s = EngineSettings(layers=layers, interventions=ivs, seed=100 * k + i, probe=(i == 0))
            reqs.append(Req(f"r{k}.{i}", s, arrive=3 * i + 10 * k, prompt=2 + i % 3, decode=6 + (i * 5) % 9))
        reqs.append(Req(f"plain{k}", None, arrive=4 + 10 * k, prompt=3, decode=9))
    return reqs
