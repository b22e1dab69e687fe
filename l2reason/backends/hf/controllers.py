"""Adapters from the pure per-step technique functions to the HF backend's hooks.

Each controller holds per-*row* state (a row is one candidate of one request;
nothing is shared across rows) and calls the fixed-shape step functions of
:mod:`l2reason.techniques`. The only Python branching on tensor values here is
an HF-side shortcut (skip a re-run pass when no row is active), which the
SGLang plugin replaces with unconditional masked computation.

Thresholds τ_l: ``adaptive`` keeps a streaming P² estimate of Q1/Q3 of this
row's pass-0 decode norms (τ from previous tokens, updated after use, +inf
during warm-up); ``calibrated`` reads the model's calibration file.
"""

from __future__ import annotations

from typing import Any

import torch

from l2reason.errors import ConfigError
from l2reason.signal.band import resolve_layers
from l2reason.signal.threshold import TauState, tau_init, tau_update, tau_value
from l2reason.techniques.alrr import alrr_accept, alrr_active, alrr_static_accept
from l2reason.techniques.erss import erss_init, erss_params, erss_step
from l2reason.techniques.specs import ALRRSpec, ERSSSpec, StaticSteerSpec, SuppressSpec, ThresholdSpec, check_vectors
from l2reason.techniques.static_steer import static_steer
from l2reason.techniques.suppress import suppress_step


def _layers(spec_layers: Any, backend: Any) -> list[int]:
    return resolve_layers(spec_layers if spec_layers != "band" else "band", backend.num_layers)


class _Thresholds:
    """Per-layer, per-row τ_l: adaptive (streaming P² per row) or calibrated."""

    def __init__(self, spec: ThresholdSpec, layers: list[int], backend: Any, rows: int, device: torch.device) -> None:
        self.spec = spec
        self.states: dict[int, TauState] = {}
        self.fixed: dict[int, torch.Tensor] = {}
        if spec.mode == "calibrated":
            tau = backend.calibrated_tau(layers, "threshold mode 'calibrated'", "use mode='adaptive'").to(device)
            for i, layer in enumerate(layers):
                self.fixed[layer] = tau[i].expand(rows).clone()
        else:
            for layer in layers:
                self.states[layer] = tau_init((rows,), device=device)

    def tau(self, layer: int) -> torch.Tensor:
        if layer in self.fixed:
            return self.fixed[layer]
        return tau_value(self.states[layer], self.spec.warmup, self.spec.k, self.spec.min_iqr)

    def update(self, layer: int, n: torch.Tensor, valid: torch.Tensor) -> None:
        if layer in self.states:
            self.states[layer] = tau_update(self.states[layer], n, valid)


class ALRRController:
    """Adaptive Layer-wise Reasoning Recursion (or its static block baseline) at decode steps."""

    needs_mlp = False

    def __init__(self, spec: ALRRSpec, *, backend: Any, rows: int, seeds: torch.Tensor) -> None:
        self.spec = spec
        self.layers = _layers(spec.layers, backend)
        self.col = {layer: i for i, layer in enumerate(self.layers)}
        self.th = _Thresholds(spec.threshold, self.layers, backend, rows, seeds.device)
        L = len(self.layers)
        dev = seeds.device
        self.active = torch.zeros(rows, L, dtype=torch.long, device=dev)  # tokens with τ < n⁰ < b·τ
        self.tried = torch.zeros(rows, L, dtype=torch.long, device=dev)
        self.accepted = torch.zeros(rows, L, dtype=torch.long, device=dev)
        self.steps = torch.zeros(rows, dtype=torch.long, device=dev)

    def step(self, layer: int, x: torch.Tensor, n: torch.Tensor, ctx: Any) -> torch.Tensor:
        s, j, valid = self.spec, self.col[layer], ctx.valid
        if j == 0:
            self.steps += valid.long()
        tau = self.th.tau(layer)
        self.th.update(layer, n, valid)
        active = valid.clone() if s.mode == "static" else alrr_active(n, tau, s.b, valid)
        self.active[:, j] += active.long()
        x_k, n_k = x, n
        for _ in range(s.K):
            if not bool(active.any()):  # HF-side shortcut only; the step itself is fixed-shape
                break
            x_tilde = ctx.rerun(x_k)
            st = (
                alrr_static_accept(x_k, n_k, x_tilde, active)
                if s.mode == "static"
                else alrr_accept(x_k, n_k, x_tilde, tau, active, s.g, s.b)
            )
            self.tried[:, j] += active.long()
            self.accepted[:, j] += st.accepted.long()
            x_k, n_k, active = st.x_next, st.n_next, st.still_active
        return x_k

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

    def __init__(self, spec: ERSSSpec, *, backend: Any, rows: int, seeds: torch.Tensor) -> None:
        self.spec = spec
        self.layers = _layers(spec.layers, backend)
        self.params = erss_params(spec, exact=True)
        self.needs_mlp = bool(self.params["exact"])
        self.th = _Thresholds(spec.threshold, self.layers, backend, rows, seeds.device)
        d = backend.hidden_size
        dtype = next(backend.model.parameters()).dtype
        # a distinct counter-hash stream per layer, same per-row seed
        self.state = {
            layer: erss_init(rows, spec.M, d, seeds ^ (layer * 0x9E3779B1), dtype=dtype, device=seeds.device)
            for layer in self.layers
        }
        self.events: list[list[dict[str, Any]]] = [[] for _ in range(rows)]
        self.fires = torch.zeros(rows, dtype=torch.long, device=seeds.device)

    def step(self, layer: int, x: torch.Tensor, n: torch.Tensor, ctx: Any) -> torch.Tensor:
        tau = self.th.tau(layer)
        self.th.update(layer, n, ctx.valid)
        r = None
        if self.params["exact"]:
            if ctx.mlp_out is None:
                raise ConfigError("exact ERSS injection needs the MLP output; this layer reported none")
            r = x - ctx.mlp_out.to(x.dtype)  # residual entering the MLP: x = r + mlp_out
        out = erss_step(self.state[layer], x, n, tau, ctx.valid, r=r, **self.params)
        self.state[layer] = out.state
        self.fires += out.fired.long()
        if bool(out.injected.any()):
            for i in torch.nonzero(out.injected).flatten().tolist():
                self.events[i].append({"step": ctx.step, "layer": layer, "cos": round(float(out.cos[i]), 4)})
        return out.x_out

    def report(self, row: int) -> dict[str, Any]:
        return {
            "erss": {
                "layers": self.layers,
                "injection": "exact" if self.params["exact"] else "interpolate",
                "fires": int(self.fires[row]),
                "injections": self.events[row],
            }
        }


class StaticSteerController:
    """Classic steering: ``x + α·v`` at every decode step (optionally norm-preserving)."""

    needs_mlp = False

    def __init__(self, spec: StaticSteerSpec, *, backend: Any, rows: int, seeds: torch.Tensor) -> None:
        check_vectors(spec, backend.hidden_size, backend.num_layers)
        self.spec = spec
        dtype = next(backend.model.parameters()).dtype
        self.vectors = {
            (layer % backend.num_layers): torch.tensor(v, dtype=dtype, device=seeds.device)
            for layer, v in spec.vectors.items()
        }
        self.layers = sorted(self.vectors)
        self.steered = torch.zeros(rows, dtype=torch.long, device=seeds.device)

    def step(self, layer: int, x: torch.Tensor, n: torch.Tensor, ctx: Any) -> torch.Tensor:
        if layer == self.layers[0]:
            self.steered += ctx.valid.long()
        return static_steer(x, self.vectors[layer], self.spec.alpha, ctx.valid, self.spec.norm_preserving)

    def report(self, row: int) -> dict[str, Any]:
        return {
            "static_steer": {"layers": self.layers, "alpha": self.spec.alpha, "steered_tokens": int(self.steered[row])}
        }


class SuppressController:
    """The paper's causal check: suppress high-norm tokens, or random ones at a matched rate."""

    needs_mlp = False

    def __init__(self, spec: SuppressSpec, *, backend: Any, rows: int, seeds: torch.Tensor) -> None:
        self.spec = spec
        self.layers = _layers(spec.layers, backend)
        self.col = {layer: i for i, layer in enumerate(self.layers)}
        self.th = _Thresholds(spec.threshold, self.layers, backend, rows, seeds.device)
        self.seeds = seeds
        dev = seeds.device
        self.row_step = torch.zeros(rows, dtype=torch.long, device=dev)
        self.count = torch.zeros(rows, len(self.layers), dtype=torch.long, device=dev)
        self.valid_steps = torch.zeros(rows, dtype=torch.long, device=dev)

    def step(self, layer: int, x: torch.Tensor, n: torch.Tensor, ctx: Any) -> torch.Tensor:
        s, j = self.spec, self.col[layer]
        if j == 0:
            self.row_step += ctx.valid.long()
            self.valid_steps += ctx.valid.long()
        tau = self.th.tau(layer)
        self.th.update(layer, n, ctx.valid)
        x_out, hit = suppress_step(
            x,
            n,
            tau,
            ctx.valid,
            target=s.target,
            action=s.action,
            scale=s.scale,
            rate=s.rate,
            seed=self.seeds ^ (layer * 0x85EBCA6B),
            step=self.row_step,
        )
        self.count[:, j] += hit.long()
        return x_out

    def report(self, row: int) -> dict[str, Any]:
        steps = max(int(self.valid_steps[row]), 1)
        return {
            "suppress": {
                "target": self.spec.target,
                "action": self.spec.action,
                "layers": self.layers,
                "suppressed_tokens": self.count[row].tolist(),
                "rate": [round(c / steps, 4) for c in self.count[row].tolist()],
            }
        }


def _factory(cls: Any) -> Any:
    def make(spec: Any, *, backend: Any, rows: int, seeds: torch.Tensor) -> Any:
        return cls(spec, backend=backend, rows=rows, seeds=seeds)

    return make


CONTROLLERS: dict[str, Any] = {
    "alrr": _factory(ALRRController),
    "erss": _factory(ERSSController),
    "static_steer": _factory(StaticSteerController),
    "suppress": _factory(SuppressController),
}
