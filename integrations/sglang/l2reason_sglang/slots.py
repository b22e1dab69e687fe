"""The SGLang plugin's per-request slots: the graph-safe tables, the eager path, and each step's records.

SGLang-free (plain Python and torch), so the unit tests drive it without an
engine; :mod:`l2reason_sglang.runtime` feeds it from SGLang's hooks. Slots
are SGLang's ``req_pool_indices``: row 0 of its request pool is the padding
row, which is also the tables' inert slot 0, so padded rows of a replayed
decode graph do nothing.

Two paths per request, fixed when the request is admitted (first seen in its
slot):

- **graph** (every request the tables can run: norm capture, static
  steering, suppression, ERSS, adaptive and calibrated thresholds, bad
  settings that only carry an error): its rows live in
  :class:`~l2reason.serving.graph.SlotTables`; the forward calls
  :func:`~l2reason.serving.graph.graph_step` after every layer, fixed-shape
  tensor code that a captured decode (CUDA) graph replays for any mix of
  requests; the records are read from the tables' persistent buffers after
  the forward (:meth:`SGLangSlots.records`), never inside it (a decode
  replay returns the ``customized_info`` of its capture).
- **eager** (a request using ALRR, whose recursion re-runs layers a
  data-dependent number of times, or ``sae_ablate``, which changes every
  position of its request with its own SAE; and any request the tables
  refuse for a graph reason, e.g. two interventions of one kind or no free
  ERSS row): the reference :class:`~l2reason.serving.slots.SlotRuntime` and
  :mod:`l2reason.serving.ablation`, as before. A step holding such a request
  must run eagerly: :attr:`Step.eager` is True and the plugin makes SGLang's
  graph runners decline it (``can_run_graph``).

Per step, outside the forward: :meth:`SGLangSlots.prepare` (releases the
slots SGLang freed, admits new requests, binds the token → slot map, marks
the step's norm rows "not written"); inside it: :meth:`SGLangSlots.after_layer`
after each layer; after it: :meth:`SGLangSlots.records`, one record per
request row. A row that asked for norms and has none written gets an error
record (``"e"``), never a missing or partial one.

Example:
    >>> import torch
    >>> from l2reason.serving.info import EngineModelInfo
    >>> from l2reason.serving.settings import EngineSettings
    >>> info = EngineModelInfo("doc", num_layers=2, hidden_size=4, dtype=torch.float32)
    >>> slots = SGLangSlots(info, num_slots=4, device="cpu", max_tokens=8)
    >>> step = slots.prepare(["a"], [2], [EngineSettings(layers=[1])], decode=True, num_tokens=1)
    >>> step.eager, slots.active_slots()
    (False, 1)
    >>> o, r = torch.zeros(1, 4), torch.ones(1, 4)
    >>> for layer in range(2):
    ...     slots.after_layer(step, layer, o, r)
    >>> slots.records(step)
    [{'n': [2.0]}]
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor

from l2reason.serving.ablation import AblationRows, SAEAblations, SAEStore, apply_ablations
from l2reason.serving.capabilities import caps
from l2reason.serving.graph import SlotTables, StepConfig, graph_step
from l2reason.serving.graph.buffers import Buffers
from l2reason.serving.prune import confidence_k, token_confidence
from l2reason.serving.settings import EngineSettings
from l2reason.serving.slots import SlotRuntime, StepPlan
from l2reason.signal.certainty import self_certainty
from l2reason.techniques.controllers import ModelInfo

__all__ = ["GRAPH_KINDS", "SGLangSlots", "Step", "TablesView"]

log = logging.getLogger("l2reason_sglang")

#: the kinds compiled into the graph step (ALRR stays eager: SGLang keeps one decode graph per batch size, not a
#: second variant with the recursion passes; see docs/graph_step.md)
GRAPH_KINDS = ("erss", "static_steer", "suppress")
#: most tokens of one step the token map holds (an extend batch is at most --max-prefill-tokens, 16384 by default;
#: a larger step is refused with a message)
MAX_TOKENS = 65536
#: steering-vector rows (one per steered layer of a running request; beyond them a request runs eagerly)
VECTOR_ROWS = 256
#: the prefix of SlotTables' refusals for what only its graph step cannot run (such a request goes eager)
_GRAPH_REFUSAL = "graph step:"
_GRAPH, _EAGER = "graph", "eager"


class TablesView(NamedTuple):
    """The tables as :func:`~l2reason.serving.graph.graph_step` reads them, with a narrower static configuration:
    an eager pass compiles in only the kinds and layers its requests run (the others are no-ops for them, so the
    result is the same, bit for bit, at a fraction of the ops)."""

    config: StepConfig
    buffers: Buffers


@dataclass
class Step:
    """One forward pass as the plugin prepared it (before the forward).

    Attributes:
        decode: one new token per row (interventions run) vs an extend pass (norms only; ablations run).
        rids, slots, settings: per request row (``settings``: None, decoded settings, or the decoding error).
        paths: per row ``"graph"``, ``"eager"`` or None (no settings).
        last: ``[B]`` each row's newest token in the flattened batch (on the model's device).
        eager_plan: the reference runtime's plan for the eager rows (None: no eager row).
        eager_idx: ``[b]`` the eager rows' batch rows (device), ``eager_last`` their newest tokens.
        ablate: layer -> the SAE ablations of this pass (eager rows' tokens).
        view: the graph step's tables for this pass, narrowed to what its graph rows run (an eager pass).
        graph_layers: the layers where the graph rows record a norm or run an intervention (an eager pass runs
            the graph step there only: elsewhere it would write values nobody reads).
    """

    decode: bool
    rids: list[str | None]
    slots: list[int]
    settings: list[EngineSettings | Exception | None]
    paths: list[str | None]
    last: Tensor | None = None
    eager_plan: StepPlan | None = None
    eager_idx: Tensor | None = None
    eager_last: Tensor | None = None
    ablate: dict[int, AblationRows] = field(default_factory=dict)
    view: TablesView | None = None
    graph_layers: frozenset[int] = frozenset()

    @property
    def plain(self) -> bool:
        """No row asked for anything (the plugin may run the stock forward)."""
        return all(p is None for p in self.paths)

    @property
    def eager(self) -> bool:
        """The pass holds a row on the eager path: it must not be a graph replay."""
        return self.eager_plan is not None or bool(self.ablate)

    def rows(self, path: str) -> list[int]:
        """The batch rows on ``path``."""
        return [i for i, p in enumerate(self.paths) if p == path]


class SGLangSlots:
    """Per-request state of one model replica: graph tables, the eager runtime, SAE ablations.

    Args:
        info: the model (layers, hidden size, dtype, calibration).
        num_slots: SGLang's request-pool rows (row 0 its padding row, the tables' inert slot).
        device: the model's device.
        sae_store: where ``sae_ablate`` reads SAE files (default: ``--sae-dir``, from the environment).
        max_tokens: the most tokens one step flattens (:data:`MAX_TOKENS`).
        kinds: the intervention kinds of the graph step (:data:`GRAPH_KINDS`).
    """

    def __init__(
        self,
        info: ModelInfo,
        num_slots: int,
        *,
        device: torch.device | str,
        sae_store: SAEStore | None = None,
        max_tokens: int = MAX_TOKENS,
        kinds: Sequence[str] = GRAPH_KINDS,
    ) -> None:
        self.device = torch.device(device)
        self.tables = SlotTables(
            info,
            num_slots,
            max_tokens,
            device=self.device,
            kinds=kinds,
            vectors=min(4 * (num_slots - 1), VECTOR_ROWS),
        )
        self.eager = SlotRuntime(info, num_slots=num_slots, device=self.device)
        self.ablations = SAEAblations(sae_store or SAEStore.from_env(self.device), info)
        self._rid: dict[int, str | None] = {}  # slot -> the request that holds it
        self._path: dict[int, str] = {}  # slot -> its path (only slots whose request has settings)
        self._freed: set[int] = set()  # slots SGLang freed since the last step
        self._lock = threading.Lock()
        self._inert_bound = False  # the bound token map is all inert (nothing to bind for a plain pass)
        log.info(
            "l2reason: per-request slots: %d (graph step: %s; ALRR and sae_ablate eager)",
            num_slots - 1,
            ", ".join(kinds) or "norms only",
        )

    # ---- outside the forward ----------------------------------------------------------------------------
    def free(self, slots: Sequence[int]) -> None:
        """SGLang gave these request-pool rows back (a request finished, failed, was aborted or retracted);
        they are released at the next :meth:`prepare`. Thread-safe."""
        with self._lock:
            self._freed.update(int(s) for s in slots)

    def active_slots(self) -> int:
        """Slots held by a request with l2reason settings (both paths; released when SGLang frees them)."""
        return len(self._path)

    def prepare(
        self,
        rids: Sequence[str | None],
        slots: Sequence[int],
        settings: Sequence[EngineSettings | Exception | None],
        *,
        decode: bool,
        num_tokens: int,
        extend_lens: Sequence[int] | None = None,
    ) -> Step:
        """Release freed slots, admit new requests, bind this pass's token map (before the forward).

        Args:
            rids, slots, settings: per request row of the pass.
            decode: a decode pass (one token per row) or an extend pass.
            num_tokens: N, the pass's flattened tokens (its ``input_ids``).
            extend_lens: per row, its new tokens (an extend pass; consecutive segments in row order).
        """
        self._release_freed()
        B = len(slots)
        paths: list[str | None] = []
        for rid, slot, s in zip(rids, slots, settings, strict=True):
            paths.append(self._admit(rid, slot, s))
        step = Step(decode, list(rids), list(slots), list(settings), paths)
        rows = torch.arange(B)
        if decode:
            last = rows
        else:
            lens = torch.as_tensor(list(extend_lens or []), dtype=torch.long)
            last = lens.cumsum(0) - 1
        token_slots = torch.zeros(num_tokens, dtype=torch.long)
        graph = step.rows(_GRAPH)
        if graph:
            token_slots[last[graph]] = torch.tensor([slots[i] for i in graph], dtype=torch.long)
            # not written until the step writes it: a row whose norms the forward did not record shows up
            self.tables.buffers.records.norms[torch.tensor([slots[i] for i in graph]).to(self.device)] = math.nan
        if graph or not self._inert_bound:  # an all-inert map stays bound until a step maps a token
            self.tables.bind_step(token_slots.to(self.device), decode)
            self._inert_bound = not graph
        step.last = last.to(self.device)
        step.view = self._narrow([slots[i] for i in graph] if decode else [])  # an extend pass runs no kinds
        wanted = {layer for i in graph if isinstance(s := settings[i], EngineSettings) for layer in s.layers}
        step.graph_layers = frozenset(wanted) | step.view.config.layers
        if step.rows(_EAGER):
            self._plan_eager(step, rows, extend_lens)
        return step

    def _narrow(self, slots: list[int]) -> TablesView:
        """The tables with only the kinds and layers the requests in ``slots`` run compiled in."""
        kinds, layers = self.tables.in_use(slots)
        cfg = self.tables.config
        return TablesView(replace(cfg, kinds=cfg.kinds & kinds, layers=cfg.layers & layers), self.tables.buffers)

    def _admit(self, rid: str | None, slot: int, s: EngineSettings | Exception | None) -> str | None:
        """The row's path; a request seen for the first time in ``slot`` is admitted to it."""
        if rid is not None and self._rid.get(slot) == rid:
            return self._path.get(slot)
        self._release(slot)
        self._rid[slot] = rid
        if s is None:
            return None
        path = _EAGER if _eager_only(s) else _GRAPH
        if path == _GRAPH:
            err = self.tables.admit(slot, s)
            if err is not None and err.startswith(_GRAPH_REFUSAL):
                self.tables.release(slot)
                path = _EAGER
                log.info("l2reason: request %s runs eagerly (%s)", rid, err)
        self._path[slot] = path
        return path

    def _release(self, slot: int) -> None:
        path = self._path.pop(slot, None)
        rid = self._rid.pop(slot, None)
        if path == _GRAPH:
            self.tables.release(slot)
        elif path == _EAGER:
            self.eager.slot_rid[slot] = None  # its controller group is dropped once no slot uses it
            self.eager.slot_group[slot] = None
            if rid is not None:
                self.ablations.forget(rid)

    def _release_freed(self) -> None:
        with self._lock:
            freed, self._freed = self._freed, set()
        for slot in sorted(freed):
            self._release(slot)

    def _plan_eager(self, step: Step, rows: Tensor, extend_lens: Sequence[int] | None) -> None:
        """The eager rows' plan (the reference runtime) and SAE ablations."""
        idx = step.rows(_EAGER)
        rids = [step.rids[i] for i in idx]
        settings = [step.settings[i] for i in idx]
        checked, bad = self.ablations.for_rows([r or "" for r in rids], settings)
        for j, e in bad.items():
            settings[j] = e
        # per flattened token, its eager row j (-1: a graph row's or a plain row's token)
        eager_j = torch.full((len(step.slots),), -1, dtype=torch.long)
        eager_j[idx] = torch.arange(len(idx))
        owner = eager_j if step.decode else torch.repeat_interleave(eager_j, torch.as_tensor(list(extend_lens or [])))
        step.ablate = SAEAblations.plan(checked, owner.to(self.device))
        plan = self.eager.plan([step.slots[i] for i in idx], rids, settings, decode=step.decode)
        plan.norms.fill_(math.nan)  # as the tables' rows: unwritten norms show up in records()
        step.eager_plan = plan
        step.eager_idx = torch.tensor(idx, dtype=torch.long, device=self.device)
        assert step.last is not None
        step.eager_last = step.last[step.eager_idx]

    # ---- inside the forward --------------------------------------------------------------------------
    def after_layer(
        self,
        step: Step | None,
        layer: int,
        o: Tensor,
        r: Tensor | None,
        rerun: Callable[[Tensor], Tensor] | None = None,
        *,
        buffers: Any = None,
    ) -> None:
        """The ℓ2 work after decoder ``layer``, in place on the split stream ``o + r`` (SGLang's pending pair).

        ``r`` None: ``o`` is the stream itself. ``step`` None: a graph capture (the graph step only). The eager
        part (SAE ablations, then the reference runtime on the eager rows, with ALRR's ``rerun`` of the
        layer over the decode rows) runs only in an eager pass; the graph step runs always, so a captured
        graph serves every later mix of graph requests. Eager rows map to the inert slot 0 in the graph step.
        ``buffers``: the tables' buffers as a tracer's input (see :func:`~l2reason.serving.graph.graph_step`).
        """
        if step is not None and step.ablate:
            apply_ablations(step.ablate.get(layer, []), o, r)
        # a capture compiles in every kind the tables hold at every layer; an eager pass only what its requests run
        tables: Any = self.tables if step is None or step.view is None else step.view
        if step is None or layer in step.graph_layers:
            if r is None:  # a written stream: the step on (o, 0), folded back (o + 0 and 0 + x' are exact)
                zero = torch.zeros_like(o)
                graph_step(tables, layer, o, zero, buffers=buffers)
                o.add_(zero)
            else:
                graph_step(tables, layer, o, r, buffers=buffers)
        plan = step.eager_plan if step is not None else None
        if plan is None or layer not in plan.touched_layers:
            return
        assert step is not None and step.eager_last is not None
        last = step.eager_last
        x = o[last] + r[last] if r is not None else o[last]  # [b, d] the eager rows' newest positions
        rr = rerun if (rerun is not None and step.decode) else None
        sub = None if rr is None else _rows_rerun(rr, o, r, step.last, step.eager_idx)
        new = self.eager.step_layer(plan, layer, x, mlp_out=o[last] if r is not None else None, rerun=sub)
        if new is not x:
            if r is not None:
                r[last] = new.to(r.dtype)
                o[last] = 0
            else:
                o[last] = new.to(o.dtype)

    # ---- after the forward --------------------------------------------------------------------------
    def records(self, step: Step, logits: Tensor | None = None) -> list[dict[str, Any] | None]:
        """Per request row, the record of the token this pass produced (None: the row asked for nothing).

        Read from the tables' persistent buffers (one copy) and the eager plan; then self-certainty from
        ``logits [B, V]`` where asked, the probe's capabilities with this replica's slot count, and an error
        for a row whose asked-for norms were not written.
        """
        out: list[dict[str, Any] | None] = [None] * len(step.slots)
        graph = step.rows(_GRAPH)
        if graph:
            got = self.tables.read_records([step.slots[i] for i in graph], [step.decode] * len(graph))
            for i, rec in zip(graph, got, strict=True):
                out[i] = rec
        if step.eager_plan is not None:
            for i, rec in zip(step.rows(_EAGER), self.eager.records(step.eager_plan), strict=True):
                out[i] = rec
        _add_certainty(out, step, logits)
        for i, rec in enumerate(out):
            if rec is None:
                continue
            if "caps" in rec:  # slots held for other requests (the probe's own not counted)
                rec["caps"] = caps(
                    active_slots=self.active_slots() - (step.slots[i] in self._path), features=("prune",)
                )
            n = rec.get("n")
            if n is not None and any(math.isnan(v) for v in n):
                out[i] = _missing_norms(rec, n, step)
        return out


def _eager_only(s: EngineSettings | Exception) -> bool:
    """Whether a request needs the eager path whatever the tables hold (module docstring)."""
    if isinstance(s, Exception):
        return False
    return any(iv.kind in ("alrr", "sae_ablate") for iv in s.interventions)


def _rows_rerun(
    rerun: Callable[[Tensor], Tensor], o: Tensor, r: Tensor | None, last: Tensor | None, idx: Tensor | None
) -> Callable[[Tensor], Tensor]:
    """ALRR's re-run for the eager rows: their streams put into every row's stream, the layer re-run over the
    whole decode batch (SGLang's attention wants every row), their rows taken out."""
    assert last is not None and idx is not None

    def sub(xs: Tensor) -> Tensor:
        full = (o[last] + r[last]) if r is not None else o[last].clone()
        full[idx] = xs.to(full.dtype)
        return rerun(full)[idx]

    return sub


def _add_certainty(out: list[dict[str, Any] | None], step: Step, logits: Tensor | None) -> None:
    """Each row that asked for it (``sc``) gets its token's self-certainty, and each that prunes on confidence
    its DeepConf confidence (``cf``), or an error saying why not."""
    want = [i for i, s in enumerate(step.settings) if isinstance(s, EngineSettings) and s.sc]
    conf = [(i, k) for i, s in enumerate(step.settings) if (k := confidence_k(s))]
    if not want and not conf:
        return
    if logits is not None and logits.shape[0] >= len(step.slots):
        if want:
            for i, v in zip(want, self_certainty(logits[want]).tolist(), strict=True):
                out[i] = {**(out[i] or {}), "sc": v}
        if conf:
            for (i, _), v in zip(
                conf, token_confidence(logits[[i for i, _ in conf]], [k for _, k in conf]), strict=True
            ):
                out[i] = {**(out[i] or {}), "cf": v}
        return
    for i in want + [i for i, _ in conf]:  # asked for and not computable: say so, never leave it out
        out[i] = {**(out[i] or {}), "e": "l2reason: no logits row for self-certainty"}


def _missing_norms(rec: dict[str, Any], n: list[float], step: Step) -> dict[str, Any]:
    """The record of a row whose asked-for norms the forward did not write: an error, no partial list."""
    missing = sum(math.isnan(v) for v in n)
    what = "decode" if step.decode else "extend"
    msg = (
        f"l2reason: {missing} of the {len(n)} asked-for norms of this token were not recorded ({what} pass); "
        "the plugin's step did not run for it (a graph replay without the plugin's step?); please report this"
    )
    bad = {k: v for k, v in rec.items() if k != "n"}
    bad["e"] = f"{bad['e']}; {msg}" if bad.get("e") else msg
    return bad
