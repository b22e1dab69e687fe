"""Per-slot device tables of one model for the graph-safe step, and the host side that fills and reads them.

:class:`SlotTables` is the graph-safe counterpart of
:class:`~l2reason.serving.slots.SlotRuntime`: the same per-request
behaviour, but every piece of per-request data the forward needs is a row
of a persistent device buffer (:mod:`l2reason.serving.graph.buffers`), so
the step (:func:`~l2reason.serving.graph.step.graph_step`) is one fixed
sequence of tensor ops that a CUDA graph can capture once and replay for
any mix of requests. The host works only **outside** the forward:

- :meth:`SlotTables.admit` when a request takes a slot (writes its rows:
  layers to record, intervention parameters, fresh state; allocates its
  ERSS row and steering-vector rows), :meth:`SlotTables.release` when it
  leaves (its rows become inert). Both write into the existing buffers;
  nothing is re-allocated or rebound, so captured graphs stay valid.
- :meth:`SlotTables.bind_step` before each forward: this step's
  token → slot map (the newest token of each request with ℓ2 work; every
  other token, padding included, maps to the inert slot 0) and which tokens
  are decode tokens. Each slot other than 0 appears at most once.
- :meth:`SlotTables.read_records` after the forward: one device → host copy
  of the step's slots, and the per-token records ``SlotRuntime.records``
  would have built.

What the graph step cannot run for a request (see ``docs/graph_step.md``),
:meth:`SlotTables.admit` refuses with a message that says why, and the
request's records carry it (its norms are still recorded): a kind or a
layer the tables did not compile in (``kinds``, ``layers``); two
interventions of one kind; interventions on a shared layer in an order
other than ALRR, ERSS, static steering, suppression; an ALRR ``K`` above
``alrr_passes`` or a layer outside ``alrr_layers``; an ERSS bank above
``bank``; no free ERSS row or steering-vector row.

Example:
    >>> import torch
    >>> from l2reason.serving.settings import EngineSettings
    >>> from l2reason.serving.info import EngineModelInfo
    >>> info = EngineModelInfo("doc", num_layers=4, hidden_size=8, dtype=torch.float32)
    >>> t = SlotTables(info, num_slots=4, max_tokens=16, alrr_layers=[2])
    >>> t.admit(2, EngineSettings(layers=[3], interventions=[{"kind": "alrr", "layers": [2]}]))
    >>> t.needs_rerun([2]), t.needs_rerun([1])
    (True, False)
    >>> t.admit(3, EngineSettings(interventions=[{"kind": "alrr", "layers": [1]}]))
    'graph step: ALRR re-runs only layers [2] here (asked for [1]); start the server with those layers in alrr_layers'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_leaves

from l2reason.errors import ConfigError
from l2reason.serving.graph.buffers import TH_ALRR, TH_ERSS, TH_SUPPRESS, Buffers, alloc_buffers, buffer_bytes
from l2reason.serving.graph.records import SlotHost, Stage, add_events, build_record, snapshot
from l2reason.serving.settings import EngineSettings
from l2reason.signal.band import LayerSpec, resolve_layers
from l2reason.signal.threshold import tau_init
from l2reason.techniques.controllers import CONTROLLERS, ModelInfo
from l2reason.techniques.erss import erss_params
from l2reason.techniques.specs import ThresholdSpec, check_vectors

__all__ = ["ORDER", "SlotTables", "StepConfig"]

log = logging.getLogger(__name__)

#: the order of the kinds within a layer (the order of ``CONTROLLERS``)
ORDER: tuple[str, ...] = ("alrr", "erss", "static_steer", "suppress")
_THRESHOLD_ROW = {"alrr": TH_ALRR, "erss": TH_ERSS, "suppress": TH_SUPPRESS}


@dataclass(frozen=True)
class StepConfig:
    """What is fixed when the step is traced (Python values; changing one means a new graph).

    Attributes:
        num_slots: S (row 0 inert). num_layers: L. hidden: d. max_tokens: T.
        erss_rows: ERSS rows (besides row 0). bank: M, the ERSS bank capacity.
        vectors: steering-vector rows (besides row 0).
        kinds: the intervention kinds compiled into the step (a subset of :data:`ORDER`; empty = norms only).
        layers: the layers where interventions may run (elsewhere the step only records norms).
        alrr_layers: the layers ALRR may re-run. alrr_passes: the re-run passes of the ALRR variant.
    """

    num_slots: int
    num_layers: int
    hidden: int
    max_tokens: int
    erss_rows: int
    bank: int
    vectors: int
    kinds: frozenset[str]
    layers: frozenset[int]
    alrr_layers: frozenset[int]
    alrr_passes: int


class SlotTables:
    """Persistent per-slot device tables for one model, filled outside the forward.

    Args:
        info: the model (layers, hidden size, dtype, calibration).
        num_slots: S, the engine's request slots plus the inert row 0 (e.g. SGLang's
            ``req_to_token_pool`` size, whose row 0 is its padding row).
        max_tokens: T, the most tokens one step flattens (the engine's largest captured size).
        device: the model's device.
        erss_rows: requests that can use ERSS at once (each holds a ``[L, M, d]`` bank);
            default ``min(num_slots - 1, 16)``.
        bank: M, the largest ERSS bank a request may ask for (the paper's 32).
        vectors: steering-vector rows (one per steered layer of each request); default ``4·(num_slots − 1)``.
        kinds: the intervention kinds the step runs (default all of :data:`ORDER`; ``[]`` = norm capture only).
            Each kind costs every step at every layer of ``layers``, used or not; requests asking for another
            kind are refused.
        layers: the layers where interventions may run (default all); the step only records norms elsewhere.
        alrr_layers: the layers ALRR may re-run (default the band); only these re-run in the ALRR variant.
        alrr_passes: the ALRR variant's re-run passes (the largest ``K`` a request may ask for; the paper's 1).
    """

    def __init__(
        self,
        info: ModelInfo,
        num_slots: int,
        max_tokens: int,
        *,
        device: torch.device | str = "cpu",
        erss_rows: int | None = None,
        bank: int = 32,
        vectors: int | None = None,
        kinds: Sequence[str] | None = None,
        layers: LayerSpec = None,
        alrr_layers: LayerSpec = None,
        alrr_passes: int = 1,
    ) -> None:
        if num_slots < 2 or max_tokens < 1 or bank < 1 or alrr_passes < 0:
            raise ConfigError(
                f"SlotTables needs num_slots >= 2 (row 0 is inert), max_tokens >= 1, bank >= 1 and "
                f"alrr_passes >= 0 (got {num_slots}, {max_tokens}, {bank}, {alrr_passes})"
            )
        L = info.num_layers
        unknown = sorted(set(kinds or ()) - set(ORDER))
        if unknown:
            raise ConfigError(f"SlotTables: unknown intervention kinds {unknown}; choose from {list(ORDER)}")
        self.info = info
        self.device = torch.device(device)
        self.config = StepConfig(
            num_slots=num_slots,
            num_layers=L,
            hidden=info.hidden_size,
            max_tokens=max_tokens,
            erss_rows=min(num_slots - 1, 16) if erss_rows is None else erss_rows,
            bank=bank,
            vectors=4 * (num_slots - 1) if vectors is None else vectors,
            kinds=frozenset(ORDER if kinds is None else kinds),
            layers=frozenset(resolve_layers("all" if layers is None else layers, L)),
            alrr_layers=frozenset(resolve_layers(alrr_layers, L)),  # None: the band
            alrr_passes=alrr_passes,
        )
        c = self.config
        self.buffers: Buffers = alloc_buffers(
            num_slots=num_slots,
            num_layers=L,
            hidden=c.hidden,
            max_tokens=max_tokens,
            erss_rows=c.erss_rows,
            bank=bank,
            vectors=c.vectors,
            dtype=info.dtype,
            device=self.device,
        )
        self._hosts: dict[int, SlotHost] = {}
        self._free_erss = list(range(c.erss_rows, 0, -1))
        self._free_vectors = list(range(c.vectors, 0, -1))
        log.info("l2reason graph tables: %d slots, %d layers, %.1f MiB", num_slots, L, self.nbytes / 2**20)

    @property
    def nbytes(self) -> int:
        """Device memory held by the tables."""
        return buffer_bytes(self.buffers)

    # ---- outside the forward: requests in and out ---------------------------------------------------
    def admit(self, slot: int, settings: EngineSettings | Exception | None) -> str | None:
        """A new request takes ``slot``: write its rows (fresh state). Returns the error its records will carry.

        Args:
            slot: 1..S-1.
            settings: the request's settings; None (no ℓ2 work: the slot stays inert) or the exception raised
                decoding them (reported back).
        """
        self.release(slot)
        if settings is None:
            return None
        if isinstance(settings, Exception):
            self._hosts[slot] = SlotHost(settings=None, error=str(settings), layers=[])
            return str(settings)
        L = self.config.num_layers
        bad = [layer for layer in settings.layers if layer >= L]
        if bad:
            self._hosts[slot] = SlotHost(
                settings=None, error=f"layers {bad} do not exist (the model has {L})", layers=[]
            )
            return self._hosts[slot].error
        host = self._hosts[slot] = SlotHost(settings=settings, error=None, layers=list(settings.layers))
        b = self.buffers
        b.records.want[slot] = self._mask(host.layers)
        b.seed[slot] = settings.seed
        specs = settings.controller_specs()
        if specs:
            try:
                stages = [self._resolve(spec) for spec in specs]
                self._check_graph(stages)
                for st in stages:
                    self._write(slot, host, st)
                host.stages = stages
            except ConfigError as e:  # e.g. a calibrated threshold without a calibration file
                self._inert(slot, host)
                host.error = str(e)
        return host.error

    def release(self, slot: int) -> None:
        """The slot's request left: its rows become inert and its ERSS / vector rows free."""
        if not 0 < slot < self.config.num_slots:
            raise ConfigError(f"slot {slot} is outside the tables' slots 1..{self.config.num_slots - 1}")
        host = self._hosts.pop(slot, None)
        self.buffers.records.want[slot] = False
        self._inert(slot, host)

    def needs_rerun(self, slots: Sequence[int]) -> bool:
        """Whether a step over ``slots`` needs the ALRR variant (some request recurses)."""
        return any(
            st.kind == "alrr" and st.spec.K > 0 for s in slots if s in self._hosts for st in self._hosts[s].stages
        )

    def in_use(self, slots: Sequence[int]) -> tuple[frozenset[str], frozenset[int]]:
        """The intervention kinds and layers the requests in ``slots`` run (an uncaptured step over only these
        slots may compile in only these: every other kind and layer is a no-op for them).

        Example:
            >>> import torch
            >>> from l2reason.serving.info import EngineModelInfo
            >>> t = SlotTables(EngineModelInfo("doc", num_layers=4, hidden_size=8, dtype=torch.float32), 3, 4)
            >>> t.admit(1, EngineSettings(interventions=[{"kind": "suppress", "layers": [2]}]))
            >>> t.in_use([1, 2])
            (frozenset({'suppress'}), frozenset({2}))
        """
        stages = [st for s in slots if s in self._hosts for st in self._hosts[s].stages]
        return frozenset(st.kind for st in stages), frozenset(layer for st in stages for layer in st.layers)

    # ---- around the forward ----------------------------------------------------------------------------
    def bind_step(self, token_slots: Tensor, decode: Tensor | bool) -> None:
        """Copy this step's token → slot map into the persistent buffer (before the forward).

        Args:
            token_slots: ``[N]`` int64, per flattened token its slot: the newest token of a request with ℓ2
                work gets the request's slot, every other token (prompt positions before the last, padding,
                requests without settings) 0. A slot other than 0 appears at most once.
            decode: ``[N]`` bool or one bool: which tokens are decode tokens (interventions run there).
        """
        tok, n = self.buffers.tokens, token_slots.numel()
        if n > self.config.max_tokens:
            raise ConfigError(f"{n} tokens in one step; the tables hold {self.config.max_tokens} (max_tokens)")
        tok.slot[:n].copy_(token_slots, non_blocking=True)
        tok.slot[n:].zero_()
        if isinstance(decode, bool):
            tok.decode[:n].fill_(decode)
        else:
            tok.decode[:n].copy_(decode, non_blocking=True)
        tok.decode[n:].fill_(False)

    def read_records(self, slots: Sequence[int], decode: Sequence[bool]) -> list[dict[str, Any] | None]:
        """Per row, the record of the token this step produced (None: nothing asked); after the forward.

        Args:
            slots: per request row of the step, its slot (0 or a slot without settings: None).
            decode: per row, whether it was a decode step (else the prefill's last chunk).
        """
        for s, d in zip(slots, decode, strict=True):
            if d and s in self._hosts:
                self._hosts[s].steps += 1
        live = [s for s in slots if s in self._hosts]
        snaps = dict(zip(live, snapshot(self.buffers, live), strict=True))
        out: list[dict[str, Any] | None] = []
        for s, d in zip(slots, decode, strict=True):
            if s not in self._hosts:
                out.append(None)
                continue
            if d:
                add_events(self._hosts[s], snaps[s])
            out.append(build_record(self._hosts[s], snaps[s], decode=d))
        return out

    # ---- admission: resolve, check, write -----------------------------------------------------------
    def _resolve(self, spec: Any) -> Stage:
        """The spec against the model, with the checks (and messages) its controller's constructor makes."""
        info, L = self.info, self.config.num_layers
        kind = spec.kind
        if kind not in CONTROLLERS:
            raise ConfigError(f"no intervention {kind!r} here; supported: {', '.join(sorted(CONTROLLERS))}")
        if kind == "static_steer":
            check_vectors(spec, info.hidden_size, L)
            vectors = {layer % L: vec for layer, vec in spec.vectors.items()}
            return Stage(kind, spec, sorted(vectors), {"vectors": vectors})
        layers = resolve_layers(spec.layers, L)
        extra: dict[str, Any] = {}
        if kind == "erss":
            extra["params"] = erss_params(spec, exact=True)
        if spec.threshold.mode == "calibrated":
            extra["tau"] = info.calibrated_tau(layers, "threshold mode 'calibrated'", "use mode='adaptive'")
        return Stage(kind, spec, layers, extra)

    def _check_graph(self, stages: list[Stage]) -> None:
        """What the graph step cannot run (module docstring); the message says what to do instead."""
        c = self.config
        kinds = [st.kind for st in stages]
        for st in stages:
            if st.kind not in c.kinds:
                raise ConfigError(
                    f"graph step: this server runs {sorted(c.kinds) or 'no interventions'}, not {st.kind}"
                )
            outside = sorted(set(st.layers) - c.layers)
            if outside:
                raise ConfigError(
                    f"graph step: interventions run only at layers {sorted(c.layers)} here (not {outside})"
                )
        for kind in set(kinds):
            if kinds.count(kind) > 1:
                raise ConfigError(f"graph step: at most one {kind} per request (got {kinds.count(kind)}); merge them")
        for i, a in enumerate(stages):
            for bst in stages[i + 1 :]:
                shared = sorted(set(a.layers) & set(bst.layers))
                if shared and ORDER.index(a.kind) > ORDER.index(bst.kind):
                    raise ConfigError(
                        f"graph step: on a shared layer ({shared[0]}) interventions run in the order "
                        f"{', '.join(ORDER)}; this request puts {a.kind} before {bst.kind}: swap them"
                    )
        for st in stages:
            if st.kind == "alrr":
                if c.alrr_passes < st.spec.K:
                    raise ConfigError(f"graph step: ALRR K={st.spec.K} above this server's alrr_passes={c.alrr_passes}")
                if not set(st.layers) <= c.alrr_layers:
                    raise ConfigError(
                        f"graph step: ALRR re-runs only layers {sorted(c.alrr_layers)} here (asked for {st.layers}); "
                        "start the server with those layers in alrr_layers"
                    )
            if st.kind == "erss":
                if c.bank < st.spec.M:
                    raise ConfigError(f"graph step: ERSS bank M={st.spec.M} above this server's bank={c.bank}")
                if not self._free_erss:
                    raise ConfigError(f"graph step: all {c.erss_rows} ERSS rows are in use; retry later")
            if st.kind == "static_steer" and len(st.layers) > len(self._free_vectors):
                raise ConfigError(f"graph step: no room for {len(st.layers)} more steering vectors; retry later")

    def _mask(self, layers: Sequence[int]) -> Tensor:
        m = torch.zeros(self.config.num_layers, dtype=torch.bool)
        m[list(layers)] = True
        return m.to(self.device)

    def _write(self, slot: int, host: SlotHost, st: Stage) -> None:
        """One intervention's rows for ``slot``: parameters, fresh state, zero counters."""
        b, s, on = self.buffers, st.spec, self._mask(st.layers)
        first = st.layers[0]
        if st.kind in _THRESHOLD_ROW:
            self._write_threshold(slot, _THRESHOLD_ROW[st.kind], s.threshold, st.layers, st.extra.get("tau"))
        if st.kind == "alrr":
            a = b.alrr
            a.on[:, slot], a.static[slot], a.K[slot], a.g[slot], a.b[slot] = on, s.mode == "static", s.K, s.g, s.b
            a.first[slot], a.steps[slot], a.active[slot], a.tried[slot], a.accepted[slot] = first, 0, 0, 0, 0
        elif st.kind == "suppress":
            p = b.suppress
            p.on[:, slot], p.random[slot], p.clamp[slot] = on, s.target == "random", s.action == "clamp"
            p.scale[slot], p.rate[slot], p.first[slot], p.row_step[slot], p.suppressed[slot] = (
                s.scale,
                s.rate,
                first,
                0,
                0,
            )
        elif st.kind == "static_steer":
            v = b.steer
            for layer in st.layers:
                row = self._free_vectors.pop()
                host.vector_rows.append(row)
                v.bank[row] = torch.tensor(st.extra["vectors"][layer], dtype=self.info.dtype).to(self.device)
                v.idx[layer, slot] = row
            v.alpha[slot], v.norm_preserving[slot], v.first[slot], v.steered[slot] = (
                s.alpha,
                s.norm_preserving,
                first,
                0,
            )
        else:
            self._write_erss(slot, host, st, on)

    def _write_erss(self, slot: int, host: SlotHost, st: Stage, on: Tensor) -> None:
        e, prm = self.buffers.erss, st.extra["params"]
        row = host.erss_row = self._free_erss.pop()
        e.on[:, slot], e.row[slot], e.exact[slot], e.fires[slot] = on, row, prm["exact"], 0
        e.gamma[slot], e.streak[slot], e.p[slot], e.cooldown[slot] = prm["gamma"], prm["S"], prm["p"], prm["C"]
        e.c_min[slot], e.beta[slot] = prm["c_min"], prm["beta"]
        e.bank[:, row] = 0
        e.bank_norm[:, row, : prm["M"]] = float("-inf")  # empty
        e.bank_norm[:, row, prm["M"] :] = float("inf")  # beyond this request's M: never used
        e.bank_streak[:, row], e.bank_cooldown[:, row], e.bank_step[:, row] = 0, 0, 0

    def _write_threshold(self, slot: int, row: int, spec: ThresholdSpec, layers: list[int], tau: Tensor | None) -> None:
        t = self.buffers.thresholds
        fresh = tau_init((self.config.num_layers,), device=self.device)
        for dst, src in zip(tree_leaves(t.state), tree_leaves(fresh), strict=True):
            dst[row, :, slot] = src
        t.warmup[row, slot], t.k[row, slot], t.min_iqr[row, slot] = spec.warmup, spec.k, spec.min_iqr
        t.calibrated[row, slot] = tau is not None
        t.fixed[row, :, slot] = 0.0
        if tau is not None:
            t.fixed[row, layers, slot] = tau.to(device=self.device, dtype=torch.float32)

    def _inert(self, slot: int, host: SlotHost | None) -> None:
        """Switch every intervention of ``slot`` off and give back its ERSS / vector rows."""
        b = self.buffers
        b.steer.idx[:, slot] = 0
        b.suppress.on[:, slot] = False
        b.erss.on[:, slot] = False
        b.erss.row[slot] = 0
        b.alrr.on[:, slot] = False
        if host is not None:
            if host.erss_row:
                self._free_erss.append(host.erss_row)
            self._free_vectors.extend(host.vector_rows)
            host.erss_row, host.vector_rows, host.stages = 0, [], []
