"""Per-slot ℓ2 state for an engine with continuous batching, and the per-layer step.

An engine batches whatever requests are running; rows change every step. So
state is kept per **KV slot** (the engine's per-request row, e.g. SGLang's
``req_pool_indices``), not per batch position, and a slot is reset when a new
request id shows up in it. Requests with the same interventions share one set
of controllers (:mod:`l2reason.techniques.controllers`) with one state row per
slot; requests with other interventions get their own set, so a steered and
an unsteered request in one batch never see each other's state.

Per forward pass the engine calls :meth:`SlotRuntime.plan` once (before the
layer loop), :meth:`SlotRuntime.step_layer` after each decoder layer with the
newest token's residual stream of every row, and :meth:`SlotRuntime.records`
at the end for the per-token records to send back (a request whose settings
ask for ``probe`` gets :func:`~l2reason.serving.capabilities.caps` in its
prefill's record, so its first one).

Controllers run at decode steps only (one new token per row), as in the
embedded backend; at a prefill the norms of each request's last prompt
position are recorded, nothing is changed.

Example:
    >>> import torch
    >>> from l2reason.serving.settings import EngineSettings
    >>> class Info:
    ...     num_layers, hidden_size, dtype = 2, 4, torch.float32
    ...     def calibrated_tau(self, layers, what, alternative): raise NotImplementedError
    >>> rt = SlotRuntime(Info(), num_slots=4)
    >>> plan = rt.plan([1], ["req-a"], [EngineSettings(layers=[1])], decode=True)
    >>> _ = rt.step_layer(plan, 1, torch.ones(1, 4), mlp_out=None, rerun=None)
    >>> rt.records(plan)
    [{'n': [2.0]}]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from l2reason.errors import ConfigError
from l2reason.serving.capabilities import caps
from l2reason.serving.settings import EngineSettings
from l2reason.signal.norms import token_norms
from l2reason.techniques.controllers import LayerController, ModelInfo, StepContext, build_controllers

__all__ = ["SlotRuntime", "StepPlan"]


@dataclass
class _Group:
    """Controllers shared by every request with the same interventions (one state row per slot)."""

    controllers: list[LayerController]
    by_layer: dict[int, list[LayerController]]
    needs_mlp: bool


@dataclass
class StepPlan:
    """What one forward pass does, decided before its layer loop.

    Attributes:
        decode: one new token per row (controllers run) vs a prefill (norms only).
        slots: ``[B]`` the rows' slots.
        layers: the layers whose norms are recorded (union over rows), sorted.
        norms: ``[B, len(layers)]`` float32, filled by :meth:`SlotRuntime.step_layer`.
        row_cols: per row, the columns of ``norms`` it asked for, in its order.
        by_layer: layer -> [(controller, batch rows [b], slots [b])] to run there.
        reports: per row, the controllers whose reports it gets.
        errors: per row, why its settings were ignored (None = fine).
        settings: per row, its settings (None: none, or rejected).
        mlp_layers: layers where some controller wants the MLP output.
        steps: ``[B]`` each row's decode step (1 = first), at decode passes.
    """

    decode: bool
    slots: torch.Tensor
    layers: list[int]
    norms: torch.Tensor
    row_cols: list[list[int]]
    by_layer: dict[int, list[tuple[LayerController, torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    reports: list[list[LayerController]] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)
    settings: list[EngineSettings | None] = field(default_factory=list)
    mlp_layers: set[int] = field(default_factory=set)
    steps: torch.Tensor | None = None

    @property
    def touched_layers(self) -> set[int]:
        """Every layer where :meth:`SlotRuntime.step_layer` has work."""
        return set(self.layers) | set(self.by_layer)


class SlotRuntime:
    """Per-slot controller state and norm capture for one model replica.

    Args:
        info: the model (layers, hidden size, dtype, calibration).
        num_slots: the engine's number of request slots (state rows).
        device: where state lives (the model's device).
    """

    def __init__(self, info: ModelInfo, num_slots: int, device: torch.device | str = "cpu") -> None:
        if num_slots < 1:
            raise ConfigError(f"num_slots must be >= 1 (got {num_slots})")
        self.info = info
        self.num_slots = num_slots
        self.device = torch.device(device)
        self.slot_rid: list[str | None] = [None] * num_slots
        self.slot_group: list[str | None] = [None] * num_slots
        self.slot_step = torch.zeros(num_slots, dtype=torch.long, device=self.device)
        self.groups: dict[str, _Group] = {}

    # ---- per forward ---------------------------------------------------
    def plan(
        self,
        slots: Sequence[int],
        rids: Sequence[str | None],
        settings: Sequence[EngineSettings | Exception | None],
        *,
        decode: bool,
    ) -> StepPlan:
        """Assign rows to slots (resetting slots that a new request took) and decide the pass's work.

        Args:
            slots: per batch row, its slot (``0 <= slot < num_slots``).
            rids: per row, the request id (a new id in a slot resets it).
            settings: per row, the decoded settings, None (no ℓ2 work for the
                row) or the exception raised decoding them (reported back).
            decode: True for a decode pass (one token per row).
        """
        B = len(slots)
        errors: list[str | None] = [None] * B
        good: list[EngineSettings | None] = []
        for i, s in enumerate(settings):
            if isinstance(s, Exception):
                errors[i], s = str(s), None
            good.append(s)
            if not 0 <= slots[i] < self.num_slots:
                raise ConfigError(f"slot {slots[i]} is outside the runtime's {self.num_slots} slots")
        for i, s in enumerate(good):
            if s is not None and errors[i] is None:
                bad = [layer for layer in s.layers if layer >= self.info.num_layers]
                if bad:
                    errors[i], good[i] = f"layers {bad} do not exist (the model has {self.info.num_layers})", None
        layers = sorted({layer for s in good if s is not None for layer in s.layers})
        col = {layer: j for j, layer in enumerate(layers)}
        plan = StepPlan(
            decode=decode,
            slots=torch.tensor(slots, dtype=torch.long, device=self.device),
            layers=layers,
            norms=torch.zeros(B, len(layers), dtype=torch.float32, device=self.device),
            row_cols=[[col[layer] for layer in s.layers] if s is not None else [] for s in good],
            reports=[[] for _ in range(B)],
            errors=errors,
            settings=good,
        )
        members: dict[str, list[int]] = {}
        for i, s in enumerate(good):
            key = self._assign(slots[i], rids[i], s, errors, i)
            if key is not None:
                members.setdefault(key, []).append(i)
                plan.reports[i] = self.groups[key].controllers
        if decode:
            plan.steps = self._advance(plan.slots)
            for key, rows in members.items():
                g = self.groups[key]
                idx = torch.tensor(rows, dtype=torch.long, device=self.device)
                srows = plan.slots[idx]
                for layer, ctrls in g.by_layer.items():
                    for c in ctrls:
                        plan.by_layer.setdefault(layer, []).append((c, idx, srows))
                if g.needs_mlp:
                    plan.mlp_layers.update(g.by_layer)
        self._gc()
        return plan

    def step_layer(
        self,
        plan: StepPlan,
        layer: int,
        x: torch.Tensor,
        *,
        mlp_out: torch.Tensor | None,
        rerun: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> torch.Tensor:
        """Run the controllers of ``layer`` and record its norms.

        Args:
            plan: this pass's plan.
            layer: the decoder layer just computed.
            x: ``[B, d]`` the residual stream after ``layer`` at each row's
                newest position.
            mlp_out: ``[B, d]`` the layer's MLP output there (exact ERSS), or None.
            rerun: ``f(x [B, d]) -> [B, d]``: the layer applied again to the
                rows' newest positions without changing the KV cache (ALRR).

        Returns:
            ``[B, d]`` the stream after the controllers (``x`` itself when
            nothing changed, so the caller can skip the write-back).
        """
        out = x
        for ctrl, idx, srows in plan.by_layer.get(layer, []):
            xg = out[idx]
            ctx = StepContext(
                step=0,
                valid=torch.ones(len(idx), dtype=torch.bool, device=x.device),
                rerun=_SubsetRerun(rerun, out, idx) if rerun is not None else None,
                mlp_out=mlp_out[idx] if mlp_out is not None else None,
                rows=srows,
                steps=plan.steps[idx] if plan.steps is not None else None,
            )
            new = ctrl.step(layer, xg, token_norms(xg), ctx)
            if new is not xg:
                if out is x:
                    out = x.clone()
                out[idx] = new.to(out.dtype)
        if plan.layers and layer in plan.layers:
            plan.norms[:, plan.layers.index(layer)] = token_norms(out)
        return out

    def records(self, plan: StepPlan) -> list[dict[str, Any] | None]:
        """Per row, the record to send back with the token this pass produced (None: nothing asked)."""
        norms = plan.norms.tolist() if plan.layers else None
        slots = plan.slots.tolist()
        out: list[dict[str, Any] | None] = []
        for i, cols in enumerate(plan.row_cols):
            rec: dict[str, Any] = {}
            if plan.errors[i] is not None:
                rec["e"] = plan.errors[i]
            s = plan.settings[i]
            if s is not None and s.probe and not plan.decode:
                rec["caps"] = caps()
            if cols and norms is not None:
                rec["n"] = [norms[i][j] for j in cols]
            if plan.reports[i]:
                rep: dict[str, Any] = {}
                for c in plan.reports[i]:
                    rep.update(c.report(slots[i]))
                rec["r"] = rep
            out.append(rec or None)
        return out

    # ---- slots and groups ------------------------------------------------
    def _assign(
        self, slot: int, rid: str | None, s: EngineSettings | None, errors: list[str | None], i: int
    ) -> str | None:
        """The slot's group key (building the group, resetting the slot for a new request)."""
        new_request = rid is None or self.slot_rid[slot] != rid
        if new_request:
            self.slot_rid[slot] = rid
            self.slot_group[slot] = None
            self.slot_step[slot] = 0
        if s is None or not s.controller_specs():
            self.slot_group[slot] = None
            return None
        key = s.group_key()
        if new_request or self.slot_group[slot] != key:
            try:
                g = self.groups.get(key) or self._build(key, s)
            except ConfigError as e:  # e.g. a calibrated threshold without a calibration file
                errors[i] = str(e)
                return None
            except (torch.OutOfMemoryError, MemoryError) as e:  # the request's error, not the server's
                errors[i] = f"l2reason: no memory for this request's controller state ({e})"
                return None
            seed = torch.tensor([s.seed], dtype=torch.long, device=self.device)
            rows = torch.tensor([slot], dtype=torch.long, device=self.device)
            for c in g.controllers:
                c.reset(rows, seed)
            self.slot_group[slot] = key
        return key

    def _build(self, key: str, s: EngineSettings) -> _Group:
        from l2reason.errors import CapabilityError

        try:
            ctrls = build_controllers(
                s.controller_specs(),
                info=self.info,
                rows=self.num_slots,
                seeds=torch.zeros(self.num_slots, dtype=torch.long, device=self.device),
            )
        except CapabilityError as e:
            raise ConfigError(str(e)) from e
        by_layer: dict[int, list[LayerController]] = {}
        for c in ctrls:
            for layer in c.layers:
                by_layer.setdefault(layer, []).append(c)
        g = _Group(ctrls, by_layer, any(c.needs_mlp for c in ctrls))
        self.groups[key] = g
        return g

    def _advance(self, slots: torch.Tensor) -> torch.Tensor:
        """Count one more decode step for ``slots`` and return their step numbers (1 = first decode step)."""
        self.slot_step[slots] += 1
        return self.slot_step[slots]

    def _gc(self) -> None:
        """Drop the groups no slot uses any more (their state is per slot and would only be reset)."""
        used = set(self.slot_group)
        for key in [k for k in self.groups if k not in used]:
            del self.groups[key]


class _SubsetRerun:
    """Re-run the layer for a subset of rows: the other rows feed their current state (ignored)."""

    def __init__(self, rerun: Callable[[torch.Tensor], torch.Tensor], full: torch.Tensor, idx: torch.Tensor) -> None:
        self._rerun, self._full, self._idx = rerun, full, idx

    def __call__(self, xg: torch.Tensor) -> torch.Tensor:
        x = self._full.clone()
        x[self._idx] = xg.to(x.dtype)
        return self._rerun(x)[self._idx]
