"""Host side of the graph-safe step: what each slot asked for, and the per-token records read after the step.

The captured step writes norms, counters and this step's ERSS injections
into device buffers; after the forward, :func:`snapshot` copies the rows of
the step's slots to the host in **one** transfer, and :func:`build_record`
turns a row into the record :meth:`~l2reason.serving.slots.SlotRuntime.records`
builds for the same request (``{"n": [...], "r": {...}, "e": ..., "caps": ...}``),
the controllers' report formats included (``docs/techniques.md`` names
each field).

Example:
    >>> import torch
    >>> from l2reason.serving.graph.buffers import alloc_buffers
    >>> b = alloc_buffers(num_slots=2, num_layers=2, hidden=3, max_tokens=2, erss_rows=1, bank=1,
    ...                   vectors=1, dtype=torch.float32, device="cpu")
    >>> snap = snapshot(b, [1])[0]
    >>> build_record(SlotHost(settings=None, error=None, layers=[]), snap, decode=True) is None
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from l2reason.serving.capabilities import caps
from l2reason.serving.graph.buffers import Buffers
from l2reason.serving.settings import EngineSettings

__all__ = ["SlotHost", "Snapshot", "Stage", "build_record", "snapshot"]


@dataclass
class Stage:
    """One intervention of a request, resolved against the model.

    Attributes:
        kind: ``"alrr"``, ``"erss"``, ``"static_steer"`` or ``"suppress"``.
        spec: its spec.
        layers: its layers (sorted, absolute), as the controller resolves them.
        extra: kind-specific: ERSS ``params`` (``erss_params``), steering ``vectors``, calibrated ``tau``.
    """

    kind: str
    spec: Any
    layers: list[int]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SlotHost:
    """What the host keeps for an admitted slot.

    Attributes:
        settings: the request's settings (None: rejected, or none).
        error: why (part of) the settings were ignored, repeated in every record.
        layers: the layers whose norms come back, in the request's order.
        stages: the interventions, in the request's order (empty: none, or rejected).
        steps: decode steps seen (ERSS events carry it).
        events: ERSS injections so far (``{"step", "layer", "cos"}``).
        erss_row: the slot's ERSS row (0 none).
        vector_rows: the steering-vector rows it holds.
    """

    settings: EngineSettings | None
    error: str | None
    layers: list[int]
    stages: list[Stage] = field(default_factory=list)
    steps: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    erss_row: int = 0
    vector_rows: list[int] = field(default_factory=list)


@dataclass
class Snapshot:
    """One slot's device rows after a step (plain Python numbers; layer-indexed lists have L entries)."""

    norms: list[float]
    cos: list[float]
    suppressed: list[int]
    active: list[int]
    tried: list[int]
    accepted: list[int]
    fires: int
    steered: int
    suppress_steps: int
    alrr_steps: int


def snapshot(buffers: Buffers, slots: list[int]) -> list[Snapshot]:
    """The rows of ``slots``, copied to the host in one transfer (the only synchronisation of a step).

    Counters travel as float64, exact below 2**53.
    """
    if not slots:
        return []
    b = buffers
    L = b.records.norms.shape[1]
    idx = torch.tensor(slots, dtype=torch.long).to(b.seed.device, non_blocking=True)
    scalars = torch.stack((b.erss.fires[idx], b.steer.steered[idx], b.suppress.row_step[idx], b.alrr.steps[idx]), 1)
    cols = (
        b.records.norms[idx],
        b.erss.cos[:, idx].T,
        b.suppress.suppressed[idx],
        b.alrr.active[idx],
        b.alrr.tried[idx],
        b.alrr.accepted[idx],
        scalars,
    )
    rows = torch.cat([c.to(torch.float64) for c in cols], dim=1).cpu().tolist()
    out = []
    for row in rows:
        norms, cos, sup, act, tried, acc = (row[i * L : (i + 1) * L] for i in range(6))
        fires, steered, sup_steps, alrr_steps = (int(v) for v in row[6 * L :])
        out.append(
            Snapshot(
                norms, cos, _ints(sup), _ints(act), _ints(tried), _ints(acc), fires, steered, sup_steps, alrr_steps
            )
        )
    return out


def _ints(values: list[float]) -> list[int]:
    return [int(v) for v in values]


def add_events(host: SlotHost, snap: Snapshot) -> None:
    """Append this step's ERSS injections (a decode step) to the slot's events, in layer order."""
    for st in host.stages:
        if st.kind == "erss":
            for layer in st.layers:
                c = snap.cos[layer]
                if not math.isnan(c):
                    host.events.append({"step": host.steps, "layer": layer, "cos": round(c, 4)})


def _report(st: Stage, host: SlotHost, snap: Snapshot) -> dict[str, Any]:
    """The controller's report (the format of its ``report(row)``)."""
    s, layers = st.spec, st.layers
    if st.kind == "alrr":
        return {
            "alrr": {
                "mode": s.mode,
                "layers": layers,
                "decode_steps": snap.alrr_steps,
                "active_tokens": [snap.active[i] for i in layers],
                "passes_tried": [snap.tried[i] for i in layers],
                "passes_accepted": [snap.accepted[i] for i in layers],
            }
        }
    if st.kind == "erss":
        return {
            "erss": {
                "layers": layers,
                "injection": "exact" if st.extra["params"]["exact"] else "interpolate",
                "fires": snap.fires,
                "injections": list(host.events),
            }
        }
    if st.kind == "static_steer":
        return {"static_steer": {"layers": layers, "alpha": s.alpha, "steered_tokens": snap.steered}}
    counts = [snap.suppressed[i] for i in layers]
    steps = max(snap.suppress_steps, 1)
    return {
        "suppress": {
            "target": s.target,
            "action": s.action,
            "layers": layers,
            "suppressed_tokens": counts,
            "rate": [round(c / steps, 4) for c in counts],
        }
    }


def build_record(host: SlotHost, snap: Snapshot, *, decode: bool) -> dict[str, Any] | None:
    """The record of the token this step produced for the slot's request (None: nothing asked)."""
    rec: dict[str, Any] = {}
    if host.error is not None:
        rec["e"] = host.error
    s = host.settings
    if s is not None and s.probe and not decode:
        rec["caps"] = caps()
    if host.layers:
        rec["n"] = [snap.norms[layer] for layer in host.layers]
    if host.stages:
        rep: dict[str, Any] = {}
        for st in host.stages:
            rep.update(_report(st, host, snap))
        rec["r"] = rep
    return rec or None
