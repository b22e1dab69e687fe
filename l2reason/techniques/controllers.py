"""The per-step controllers every engine drives: ALRR, ERSS, static steering, suppression.

One controller core, many engines. A controller owns per-*row* state in
tensors whose first dimension is the row (a row is one candidate of one
request), and calls the fixed-shape step functions of :mod:`l2reason.techniques`.
The engine decides what a row is:

- the embedded transformers backend builds the controllers for the ``B`` rows
  of one call and passes ``ctx.rows = None`` (the batch *is* the rows);
- an engine with continuous batching (the SGLang and vLLM plugins, through
  :class:`l2reason.serving.slots.SlotRuntime`) builds them with one row per
  request slot of the server and passes ``ctx.rows`` = the slots of the
  batch rows this controller serves; the controller gathers those rows'
  state, runs the step, and scatters it back. :meth:`reset` clears slots that
  a new request takes over.

Thresholds τ_l: ``adaptive`` keeps a streaming P² estimate of Q1/Q3 of the
row's pass-0 decode norms (τ from previous tokens, updated after use, +inf
during warm-up); ``calibrated`` reads the model's calibration file. The only
Python branching on tensor values here is an eager-mode shortcut (skip a
re-run pass when no row is active); see ``docs/techniques.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from l2reason.errors import ConfigError
from l2reason.signal.band import resolve_layers
from l2reason.signal.threshold import TauState, tau_init, tau_update, tau_value
from l2reason.techniques.alrr import alrr_accept, alrr_active, alrr_static_accept
from l2reason.techniques.erss import erss_init, erss_params, erss_step
from l2reason.techniques.specs import ALRRSpec, ERSSSpec, StaticSteerSpec, SuppressSpec, ThresholdSpec, check_vectors
from l2reason.techniques.static_steer import static_steer
from l2reason.techniques.suppress import suppress_step

__all__ = [
    "CONTROLLERS",
    "ALRRController",
    "ERSSController",
    "LayerController",
    "ModelInfo",
    "StaticSteerController",
    "StepContext",
    "SuppressController",
    "build_controllers",
]


class ModelInfo(Protocol):
    """What a controller needs to know of the model it runs in (an engine provides it)."""

    @property
    def num_layers(self) -> int: ...

    @property
    def hidden_size(self) -> int: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def calibrated_tau(self, layers: list[int], what: str, alternative: str) -> torch.Tensor:
        """τ_l of ``layers`` (float32 ``[len(layers)]``); a clear error naming ``what`` if there is none."""
        ...


@dataclass
class StepContext:
    """What a controller sees at one layer of one decode step.

    Args:
        step: 0-based decode step of the call (informational; events carry it).
        valid: ``[B]`` bool, False for finished/padding rows (leave them unchanged).
        rerun: ``f(x [B, d]) -> [B, d]``: the layer applied again to ``x``
            without writing the KV cache.
        mlp_out: ``[B, d]`` output of the layer's MLP for this token (the
            residual entering the MLP is ``x - mlp_out``), when available.
        rows: ``[B]`` int64 state rows of the batch rows (``None`` = row i is
            state row i, the whole state).
        steps: ``[B]`` int64 per-row decode step, when rows are at different
            steps (continuous batching); ``None`` = ``step`` for every row.
    """

    step: int
    valid: torch.Tensor
    rerun: Any
    mlp_out: torch.Tensor | None
    rows: torch.Tensor | None = None
    steps: torch.Tensor | None = None


class LayerController(Protocol):
    """A per-step intervention, driven by an engine's layer loop."""

    layers: list[int]
    needs_mlp: bool

    def step(self, layer: int, x: torch.Tensor, n: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Return the (possibly modified) newest-token state ``[B, d]``."""
        ...

    def reset(self, rows: torch.Tensor, seeds: torch.Tensor) -> None:
        """Clear the state of ``rows`` (a new request took them) and give them ``seeds``."""
        ...

    def report(self, row: int) -> dict[str, Any]:
        """What the controller did for one state row (JSON-safe)."""
        ...


# ---- row gather / scatter over (nested) NamedTuples of tensors ------------------


def _take(tree: Any, rows: torch.Tensor | None) -> Any:
    """The ``rows`` of every tensor in ``tree`` (a tensor or nested NamedTuple); all rows if None."""
    if rows is None:
        return tree
    if isinstance(tree, torch.Tensor):
        return tree[rows]
    return type(tree)(*(_take(t, rows) for t in tree))


def _put(tree: Any, rows: torch.Tensor | None, new: Any) -> Any:
    """``tree`` with ``rows`` replaced by ``new`` (in place when rows are given); ``new`` if None."""
    if rows is None:
        return new
    if isinstance(tree, torch.Tensor):
        tree[rows] = new.to(tree.dtype)
        return tree
    for t, v in zip(tree, new, strict=True):
        _put(t, rows, v)
    return tree


def _add(t: torch.Tensor, rows: torch.Tensor | None, v: torch.Tensor, col: int | None = None) -> None:
    """``t[rows(, col)] += v`` (rows unique)."""
    v = v.to(t.dtype)
    if rows is None:
        if col is None:
            t += v
        else:
            t[:, col] += v
    elif col is None:
        t[rows] += v
    else:
        t[rows, col] += v


def _layers(spec_layers: Any, info: ModelInfo) -> list[int]:
    return resolve_layers(spec_layers, info.num_layers)


class _Thresholds:
    """Per-layer, per-row τ_l: adaptive (streaming P² per row) or calibrated."""

    def __init__(
        self, spec: ThresholdSpec, layers: list[int], info: ModelInfo, rows: int, device: torch.device
    ) -> None:
        self.spec = spec
        self.states: dict[int, TauState] = {}
        self.fixed: dict[int, torch.Tensor] = {}
        self.device = device
        if spec.mode == "calibrated":
            tau = info.calibrated_tau(layers, "threshold mode 'calibrated'", "use mode='adaptive'").to(device)
            for i, layer in enumerate(layers):
                self.fixed[layer] = tau[i].expand(rows).clone()
        else:
            for layer in layers:
                self.states[layer] = tau_init((rows,), device=device)

    def tau(self, layer: int, rows: torch.Tensor | None) -> torch.Tensor:
        if layer in self.fixed:
            return _take(self.fixed[layer], rows)
        return tau_value(_take(self.states[layer], rows), self.spec.warmup, self.spec.k, self.spec.min_iqr)

    def update(self, layer: int, n: torch.Tensor, valid: torch.Tensor, rows: torch.Tensor | None) -> None:
        if layer in self.states:
            new = tau_update(_take(self.states[layer], rows), n, valid)
            self.states[layer] = _put(self.states[layer], rows, new)

    def reset(self, rows: torch.Tensor) -> None:
        for st in self.states.values():
            _put(st, rows, tau_init((len(rows),), device=self.device))


class ALRRController:
    """Adaptive Layer-wise Reasoning Recursion (or its static block baseline) at decode steps."""

    needs_mlp = False

    def __init__(self, spec: ALRRSpec, *, info: ModelInfo, rows: int, seeds: torch.Tensor) -> None:
        self.spec = spec
        self.layers = _layers(spec.layers, info)
        self.col = {layer: i for i, layer in enumerate(self.layers)}
        self.th = _Thresholds(spec.threshold, self.layers, info, rows, seeds.device)
        L = len(self.layers)
        dev = seeds.device
        self.active = torch.zeros(rows, L, dtype=torch.long, device=dev)  # tokens with τ < n⁰ < b·τ
        self.tried = torch.zeros(rows, L, dtype=torch.long, device=dev)
        self.accepted = torch.zeros(rows, L, dtype=torch.long, device=dev)
        self.steps = torch.zeros(rows, dtype=torch.long, device=dev)

    def step(self, layer: int, x: torch.Tensor, n: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        s, j, valid, rows = self.spec, self.col[layer], ctx.valid, ctx.rows
        if j == 0:
            _add(self.steps, rows, valid)
        tau = self.th.tau(layer, rows)
        self.th.update(layer, n, valid, rows)
        active = valid.clone() if s.mode == "static" else alrr_active(n, tau, s.b, valid)
        _add(self.active, rows, active, j)
        x_k, n_k = x, n
        for _ in range(s.K):
            if not bool(active.any()):  # eager shortcut only; the step itself is fixed-shape
                break
            x_tilde = ctx.rerun(x_k)
            st = (
                alrr_static_accept(x_k, n_k, x_tilde, active)
                if s.mode == "static"
                else alrr_accept(x_k, n_k, x_tilde, tau, active, s.g, s.b)
            )
            _add(self.tried, rows, active, j)
            _add(self.accepted, rows, st.accepted, j)
            x_k, n_k, active = st.x_next, st.n_next, st.still_active
        return x_k

    def reset(self, rows: torch.Tensor, seeds: torch.Tensor) -> None:
        self.th.reset(rows)
        for t in (self.active, self.tried, self.accepted, self.steps):
            t[rows] = 0

    def report(self, row: int) -> dict[str, Any]:
        return {
            "alrr": {
                "mode": self.spec.mode,
                "layers": self.layers,
                "decode_steps": int(self.steps[row]),
                "active_tokens": self.active[row].tolist(),
                "passes_tried": self.tried[row].tolist(),
                "passes_accepted": self.accepted[row].tolist(),
            }
        }


class ERSSController:
    """Endogenous Reasoning State Steering: per-row memory bank, trigger, injection."""

    def __init__(self, spec: ERSSSpec, *, info: ModelInfo, rows: int, seeds: torch.Tensor) -> None:
        self.spec = spec
        self.layers = _layers(spec.layers, info)
        self.params = erss_params(spec, exact=True)
        self.needs_mlp = bool(self.params["exact"])
        self.th = _Thresholds(spec.threshold, self.layers, info, rows, seeds.device)
        self.d, self.dtype = info.hidden_size, info.dtype
        self.state = {layer: self._fresh(rows, layer, seeds) for layer in self.layers}
        self.events: list[list[dict[str, Any]]] = [[] for _ in range(rows)]
        self.fires = torch.zeros(rows, dtype=torch.long, device=seeds.device)

    def _fresh(self, rows: int, layer: int, seeds: torch.Tensor) -> Any:
        # a distinct counter-hash stream per layer, same per-row seed
        return erss_init(rows, self.spec.M, self.d, seeds ^ (layer * 0x9E3779B1), dtype=self.dtype, device=seeds.device)

    def step(self, layer: int, x: torch.Tensor, n: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        rows = ctx.rows
        tau = self.th.tau(layer, rows)
        self.th.update(layer, n, ctx.valid, rows)
        r = None
        if self.params["exact"]:
            if ctx.mlp_out is None:
                raise ConfigError("exact ERSS injection needs the MLP output; this layer reported none")
            r = x - ctx.mlp_out.to(x.dtype)  # residual entering the MLP: x = r + mlp_out
        out = erss_step(_take(self.state[layer], rows), x, n, tau, ctx.valid, r=r, **self.params)
        self.state[layer] = _put(self.state[layer], rows, out.state)
        _add(self.fires, rows, out.fired)
        if bool(out.injected.any()):
            for i in torch.nonzero(out.injected).flatten().tolist():
                row = i if rows is None else int(rows[i])
                step = ctx.step if ctx.steps is None else int(ctx.steps[i])
                self.events[row].append({"step": step, "layer": layer, "cos": round(float(out.cos[i]), 4)})
        return out.x_out

    def reset(self, rows: torch.Tensor, seeds: torch.Tensor) -> None:
        self.th.reset(rows)
        for layer in self.layers:
            _put(self.state[layer], rows, self._fresh(len(rows), layer, seeds))
        self.fires[rows] = 0
        for r in rows.tolist():
            self.events[r] = []

    def report(self, row: int) -> dict[str, Any]:
        return {
            "erss": {
                "layers": self.layers,
                "injection": "exact" if self.params["exact"] else "interpolate",
                "fires": int(self.fires[row]),
                "injections": list(self.events[row]),
            }
        }


class StaticSteerController:
    """Classic steering: ``x + α·v`` at every decode step (optionally norm-preserving)."""

    needs_mlp = False

    def __init__(self, spec: StaticSteerSpec, *, info: ModelInfo, rows: int, seeds: torch.Tensor) -> None:
        check_vectors(spec, info.hidden_size, info.num_layers)
        self.spec = spec
        self.vectors = {
            (layer % info.num_layers): torch.tensor(v, dtype=info.dtype, device=seeds.device)
            for layer, v in spec.vectors.items()
        }
        self.layers = sorted(self.vectors)
        self.steered = torch.zeros(rows, dtype=torch.long, device=seeds.device)

    def step(self, layer: int, x: torch.Tensor, n: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if layer == self.layers[0]:
            _add(self.steered, ctx.rows, ctx.valid)
        return static_steer(x, self.vectors[layer], self.spec.alpha, ctx.valid, self.spec.norm_preserving)

    def reset(self, rows: torch.Tensor, seeds: torch.Tensor) -> None:
        self.steered[rows] = 0

    def report(self, row: int) -> dict[str, Any]:
        return {
            "static_steer": {"layers": self.layers, "alpha": self.spec.alpha, "steered_tokens": int(self.steered[row])}
        }


class SuppressController:
    """The paper's causal check: suppress high-norm tokens, or random ones at a matched rate."""

    needs_mlp = False

    def __init__(self, spec: SuppressSpec, *, info: ModelInfo, rows: int, seeds: torch.Tensor) -> None:
        self.spec = spec
        self.layers = _layers(spec.layers, info)
        self.col = {layer: i for i, layer in enumerate(self.layers)}
        self.th = _Thresholds(spec.threshold, self.layers, info, rows, seeds.device)
        self.seeds = seeds.clone()
        dev = seeds.device
        self.row_step = torch.zeros(rows, dtype=torch.long, device=dev)  # valid decode steps seen (RNG counter)
        self.count = torch.zeros(rows, len(self.layers), dtype=torch.long, device=dev)

    def step(self, layer: int, x: torch.Tensor, n: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        s, j, rows = self.spec, self.col[layer], ctx.rows
        if j == 0:
            _add(self.row_step, rows, ctx.valid)
        tau = self.th.tau(layer, rows)
        self.th.update(layer, n, ctx.valid, rows)
        x_out, hit = suppress_step(
            x,
            n,
            tau,
            ctx.valid,
            target=s.target,
            action=s.action,
            scale=s.scale,
            rate=s.rate,
            seed=_take(self.seeds, rows) ^ (layer * 0x85EBCA6B),
            step=_take(self.row_step, rows),
        )
        _add(self.count, rows, hit, j)
        return x_out

    def reset(self, rows: torch.Tensor, seeds: torch.Tensor) -> None:
        self.th.reset(rows)
        self.seeds[rows] = seeds.to(self.seeds)
        self.row_step[rows] = 0
        self.count[rows] = 0

    def report(self, row: int) -> dict[str, Any]:
        steps = max(int(self.row_step[row]), 1)
        return {
            "suppress": {
                "target": self.spec.target,
                "action": self.spec.action,
                "layers": self.layers,
                "suppressed_tokens": self.count[row].tolist(),
                "rate": [round(c / steps, 4) for c in self.count[row].tolist()],
            }
        }


CONTROLLERS: dict[str, type] = {
    "alrr": ALRRController,
    "erss": ERSSController,
    "static_steer": StaticSteerController,
    "suppress": SuppressController,
}


def build_controllers(
    specs: list[Any], *, info: ModelInfo, rows: int, seeds: torch.Tensor, factories: dict[str, Any] | None = None
) -> list[LayerController]:
    """One controller per intervention spec, each with ``rows`` state rows.

    Args:
        specs: parsed intervention specs (see :func:`~l2reason.techniques.specs.parse_interventions`).
        info: the model the controllers run in.
        rows: state rows (the call's candidates, or an engine's KV slots).
        seeds: ``[rows]`` int64 initial per-row seeds.
        factories: ``kind -> factory(spec, info=, rows=, seeds=)``; default :data:`CONTROLLERS`.

    Raises:
        CapabilityError: a spec names an intervention the factories do not have.
    """
    from l2reason.errors import CapabilityError

    table = CONTROLLERS if factories is None else factories
    out: list[LayerController] = []
    for spec in specs:
        kind = getattr(spec, "kind", None) or (spec.get("kind") if isinstance(spec, dict) else None)
        factory = table.get(str(kind))
        if factory is None:
            raise CapabilityError(f"no intervention {kind!r} here; supported: {', '.join(sorted(table)) or 'none'}")
        out.append(factory(spec, info=info, rows=rows, seeds=seeds))
    return out
