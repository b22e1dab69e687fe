"""vLLM glue for the l2reason controllers, worker side: which rows belong to which request, the per-layer op.

Everything ℓ2 is :mod:`l2reason.serving` (per-slot state, the per-layer step)
and :mod:`l2reason.techniques` (the controllers the embedded backend runs
too); this file holds only what is vLLM's (0.32):

- **Inside the compiled graph.** vLLM compiles the inner model's ``forward``
  (torch.compile, full graph). The plugin's layer loop calls
  ``torch.ops.l2reason.after_layer(hidden, residual, positions, layer)`` after every
  decoder layer: a ``torch.library`` custom op is opaque to the compiler (like
  vLLM's own attention op) and runs this module's Python at run time, so the
  per-request work can look at the current batch. It changes its inputs in
  place and only for rows a request asked to change.
- **Rows → requests.** Per step the scheduler side of the plugin's KV connector
  (:mod:`l2reason_vllm.connector`) sends, for every scheduled request that
  carries l2reason settings, its KV block ids, whether this step produces a
  token for it, and (first time only) its settings. Every token's KV slot is
  in ``forward_context.slot_mapping``; ``slot // block_size`` is a block, which
  belongs to exactly one running request (only full blocks are shared through
  the prefix cache, and no token is written into one). A request's tokens are
  contiguous in the flattened batch, so its newest token is the last one
  whose block is its own.
- **Stream convention.** vLLM's Qwen2/Llama layers return ``(o, r)``: ``o`` is the
  layer's MLP output and ``r`` the residual entering the MLP; the next layer's
  fused add+norm forms ``o + r``. So the residual stream after layer ``l`` (the
  transformers backend's ``hidden_states[l+1]``) is ``o + r``; a changed row is
  written back as ``r ← x'``, ``o ← 0``; ``o`` is also the MLP output exact ERSS
  needs.
- **SAE ablation** (``sae_ablate``) is not a controller: it changes every
  position of its request (prompt included), not only the newest token. Its
  tokens are the flattened rows whose KV block the request owns; which SAE
  file (only by name, from the ``--sae-dir`` folder), the checks and the
  grouping are :mod:`l2reason.serving.ablation`'s. The client salts the
  prefix cache of such requests, so no plain request reuses ablated prompt
  blocks or the other way round.
- **Per-request state** lives in :class:`~l2reason.serving.SlotRuntime` rows;
  the plugin gives each running request a slot of its own (freed when the
  scheduler says it finished), so continuous batching never mixes state.

Two paths (:mod:`l2reason_vllm.graphs` says which request takes which):

- **traced** (norms, and the interventions the server traces): one
  :class:`~l2reason.serving.graph.SlotTables` per worker. Before the forward
  (the connector's per-step bind, inside vLLM's forward context) a request
  is admitted to its slot the first time it produces a token, and the step's
  token → slot map is bound; the layer loop calls
  :func:`~l2reason.serving.graph.graph_step`, which vLLM's compiler traces;
  after the forward :meth:`~l2reason.serving.graph.SlotTables.read_records`
  builds the records, and the map is made inert again (so a dummy run of the
  engine touches no request). A finished request's slot is released.
- **eager** (ALRR, SAE ablation, kinds the server does not trace): the opaque
  op and :class:`~l2reason.serving.SlotRuntime`, as below. The op runs
  before the traced step in each layer, and such a request's norms are
  recorded by the traced step too (admitted with its layers only), after the
  op changed its stream: every request's norms come from one kernel.

Records (``{"n": [...], "r": {...}, "sc": ...}`` per token) are collected per
step and handed to the connector, which returns them with the request. Every
token a request with settings produces gets a record: one the step could not
fill is an error record (``"e"``), never a gap.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from l2reason.errors import ConfigError
from l2reason.serving.ablation import AblationRows, SAEAblations, SAEStore, apply_ablations
from l2reason.serving.capabilities import caps, read_settings
from l2reason.serving.graph import SlotTables
from l2reason.serving.graph.buffers import Buffers
from l2reason.serving.info import EngineModelInfo
from l2reason.serving.prune import confidence_k, token_confidence
from l2reason.serving.settings import SETTINGS_KEY, EngineSettings
from l2reason.serving.slots import SlotRuntime, StepPlan
from l2reason.signal.certainty import self_certainty
from l2reason_vllm.graphs import PluginConfig, route

log = logging.getLogger("vllm.l2reason_vllm")  # a child of vLLM's logger: its handler prints it

#: log the plugin's own host time per step (``$L2REASON_VLLM_TIMING``), every this many steps
TIMING = bool(os.environ.get("L2REASON_VLLM_TIMING"))
TIMING_EVERY = 100
#: row kinds the scheduler sends: a decode step, a prefill that ends this step (emits a token), a prefill chunk
DECODE, PREFILL, CHUNK = "d", "p", "c"


@dataclass
class RowInfo:
    """One scheduled request, as the scheduler side describes it for this step."""

    kind: str
    blocks: list[int]
    settings: str | None = None  # the settings JSON, sent the first time the request is scheduled


@dataclass
class _Step:
    """One forward pass's l2reason work."""

    rids: list[str]  # every request in this pass, in batch order
    last: torch.Tensor  # [R] flattened index of each one's newest token
    plans: list[tuple[StepPlan, torch.Tensor, list[str]]] = field(default_factory=list)  # (plan, rows of `last`, rids)
    touched: set[int] = field(default_factory=set)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    sc_rows: list[int] = field(default_factory=list)  # indices into `rids` that asked for self-certainty
    cf_rows: list[tuple[int, int]] = field(default_factory=list)  # (index into `rids`, k): pruning on confidence
    traced: list[tuple[str, int, bool]] = field(default_factory=list)  # (rid, slot, decode) on the traced path
    # layer -> [(SAE, features, flattened token rows)]: SAE ablation, every token of the requests asking
    ablate: dict[int, AblationRows] = field(default_factory=dict)


class WorkerState:
    """The worker's l2reason state: bound metadata, request slots, settings, the current step."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: dict[str, RowInfo] | None = None  # this step's metadata (None: nothing asked)
        self.seq = 0  # bumped per bound metadata
        self.block_size = 16
        self.num_layers = 0
        self.config = PluginConfig()
        self.device = torch.device("cpu")
        self.runtime: SlotRuntime | None = None  # the eager path's per-slot state
        self.tables: SlotTables | None = None  # the traced path's per-slot tables
        self.layers: Any = None  # the inner model's decoder layers (ALRR re-runs them)
        self.settings: dict[str, EngineSettings | Exception | None] = {}
        self.slot_of: dict[str, int] = {}
        self.path: dict[str, str] = {}  # rid -> "traced" / "eager", fixed when it takes its slot
        self.free: list[int] = []
        self.step: _Step | None = None
        self.ablations: SAEAblations | None = None  # SAE files from $L2REASON_SAE_DIR; checked once per request
        self.bound = False  # the tables hold a token map that is not inert
        # graph_step calls that ran as Python at run time (0 in compiled mode: only the trace ran it), op calls
        self.counts = {"graph_step_python": 0, "op": 0, "op_work": 0}
        self._said = False
        # the plugin's own host time (s) per part, logged every TIMING_EVERY steps when $L2REASON_VLLM_TIMING is set
        self.timing = {"bind": 0.0, "records": 0.0, "op": 0.0, "steps": 0.0}

    # ---- from the connector (before the forward, inside vLLM's forward context) ---------------------
    def bind(self, rows: dict[str, RowInfo], finished: set[str]) -> None:
        """This step's requests (and those that finished): release, decode settings, build the step."""
        t0 = time.perf_counter()
        self._bind(rows, finished)
        self.timing["bind"] += time.perf_counter() - t0

    def _bind(self, rows: dict[str, RowInfo], finished: set[str]) -> None:
        for rid in finished:
            self.settings.pop(rid, None)
            if self.ablations is not None:
                self.ablations.forget(rid)
            slot = self.slot_of.pop(rid, None)
            if slot is not None:
                self.path.pop(rid, None)
                if self.tables is not None:
                    self.tables.release(slot)
                self.free.append(slot)
        for rid, row in rows.items():
            if row.settings is not None:
                self.settings[rid] = self._refuse_eager(read_settings({SETTINGS_KEY: row.settings}, "vLLM"))
        self.rows = rows or None
        self.seq += 1
        self._inert()
        self.step = None
        self.rebuild()

    def rebuild(self) -> None:
        """Build the bound step (from the connector's bind, and again once the per-slot state exists).

        The state is set up on the first forward (the model's parameters and device are known then). A compiled
        server runs a warm-up forward before serving; an eager one does not, so the connector binds its first
        request's step before the state exists, and the step is built here, inside that first forward.
        """
        if self.step is None and self.rows is not None and self.runtime is not None:
            self.step = self._build(_slot_mapping())  # None when nobody in the step asked for anything

    def take_records(self) -> dict[str, dict[str, Any]]:
        """This step's records by request id (the dict stays live: self-certainty is added after the forward).

        Every request with settings that this step gives a token (decode, or the prefill's last chunk) has one;
        one the step did not fill is an error record, so the client never sees a short list.
        """
        t0 = time.perf_counter()
        records = self._take_records()
        self._time(time.perf_counter() - t0)
        return records

    def _take_records(self) -> dict[str, dict[str, Any]]:
        step, rows, self.rows = self.step, self.rows, None
        records: dict[str, dict[str, Any]] = {}
        if step is not None:
            self._finish(step)
            records = step.records
        self._inert()
        for rid, row in (rows or {}).items():
            s = self.settings.get(rid)
            if row.kind != CHUNK and s is not None and rid not in records:
                why = str(s) if isinstance(s, Exception) else "the vLLM plugin could not place this token in the step"
                records[rid] = {"e": why if why.startswith("l2reason") else f"l2reason: {why}"}
        for rid, rec in records.items():
            if "caps" in rec:  # a probe: how many slots the other requests hold
                rec["caps"] = caps(active_slots=len(self.slot_of) - (rid in self.slot_of), features=("prune",))
        return records

    def setup(
        self,
        model: torch.nn.Module,
        num_layers: int,
        hidden_size: int,
        max_seqs: int,
        block_size: int,
        *,
        max_tokens: int = 0,
        config: PluginConfig | None = None,
    ) -> None:
        """The per-slot state of both paths (before the first forward, so the compiler traces the tables)."""
        self.num_layers, self.block_size = num_layers, block_size
        self.config = config or PluginConfig()
        self.layers = model.layers
        dtype = next(model.parameters()).dtype
        device = self.device = next(model.parameters()).device
        info = EngineModelInfo("vLLM", num_layers=num_layers, hidden_size=hidden_size, dtype=dtype)
        # slot 0 stays unused (a padding row, as in SGLang); one slot per running request
        self.runtime = SlotRuntime(info, num_slots=max_seqs + 1, device=device)
        if max_tokens > 0:
            self.tables = SlotTables(
                info,
                num_slots=max_seqs + 1,
                max_tokens=max_tokens,
                device=device,
                kinds=self.config.kinds,
                alrr_passes=0,
            )
            register_tables(model, self.tables)
        self.ablations = SAEAblations(SAEStore.from_env(device), info)
        self.free = list(range(max_seqs, 0, -1))
        log.info("l2reason: per-slot state for %d requests, %d layers", max_seqs, num_layers)

    def _refuse_eager(self, s: EngineSettings | Exception | None) -> EngineSettings | Exception | None:
        """On a server without the eager op, what only the op runs is the request's error (never silently skipped)."""
        if self.config.eager or self.tables is None or route(s, self.config) != "eager":
            return s
        return ConfigError(
            f"l2reason: this vLLM server runs no eager op (additional_config l2reason.eager=false): it traces norms "
            f"and {list(self.config.kinds) or 'no interventions'}; ALRR, SAE ablation and other kinds are refused"
        )

    def _time(self, records_s: float) -> None:
        """Count a step's host time; every :data:`TIMING_EVERY` steps log the means (with $L2REASON_VLLM_TIMING)."""
        t = self.timing
        t["records"] += records_s
        t["steps"] += 1
        if TIMING and t["steps"] % TIMING_EVERY == 0:
            n = t["steps"]
            log.info(
                "l2reason timing: %d steps; plugin host time per step: bind %.1f us, records %.1f us, eager op %.1f "
                "us (%d op calls)",
                n,
                1e6 * t["bind"] / n,
                1e6 * t["records"] / n,
                1e6 * t["op"] / n,
                self.counts["op"],
            )

    def _slot(self, rid: str) -> int:
        """The request's slot; the first time, its path is fixed and (traced) it is admitted to the tables."""
        slot = self.slot_of.get(rid)
        if slot is None:
            if not self.free:
                raise ConfigError("l2reason: more running requests than slots (max_num_seqs)")
            slot = self.slot_of[rid] = self.free.pop()
            s = self.settings.get(rid)
            traced = self.tables is not None and route(s, self.config) != "eager"  # refused settings: either
            self.path[rid] = "traced" if traced else "eager"
            if self.tables is not None:  # an eager request's norms come from the traced step too
                self.tables.admit(slot, s if traced or not isinstance(s, EngineSettings) else _norms_only(s))
        return slot

    def _inert(self) -> None:
        """Map every token to the inert slot 0 (after a step: a dummy run of the engine touches no request)."""
        if self.bound and self.tables is not None:
            self.tables.bind_step(torch.zeros(0, dtype=torch.long, device=self.device), False)
        self.bound = False

    def _build(self, slots: torch.Tensor | None) -> _Step | None:
        """The step from this forward's KV slot per token (``slots``, None: unknown) and the bound rows."""
        assert self.rows is not None and self.runtime is not None
        if slots is None or all(self.settings.get(rid) is None for rid in self.rows):
            return None  # nobody in this step asked for anything
        device = self.device
        blocks = torch.div(slots.to(torch.long), self.block_size, rounding_mode="floor")
        blocks = torch.where(slots.to(torch.long) < 0, -1, blocks).cpu()
        owned = [(rid, r) for rid, r in self.rows.items() if r.blocks]
        if not owned or all(self.settings.get(rid) is None for rid, _ in owned):
            return None
        top = max(int(blocks.max().item()), max(max(r.blocks) for _, r in owned)) + 1
        lut = torch.full((top + 1,), -1, dtype=torch.long)
        for j, (_, r) in enumerate(owned):
            lut[torch.tensor(r.blocks, dtype=torch.long)] = j
        owner = lut[blocks]  # padding (-1) maps to lut[-1], which is -1
        idx = torch.arange(owner.numel())
        last = torch.full((len(owned),), -1, dtype=torch.long)
        hit = owner >= 0
        last.scatter_reduce_(0, owner[hit], idx[hit], reduce="amax")
        order = sorted((j for j in range(len(owned)) if int(last[j]) >= 0), key=lambda j: int(last[j]))
        rids = [owned[j][0] for j in order]  # batch order (= the rows of the logits vLLM computes)
        step = _Step(rids=rids, last=last[order].to(device))
        self._plan_ablations(step, owned, owner, device)
        emit = [i for i, rid in enumerate(rids) if self.settings.get(rid) is not None and self.rows[rid].kind != CHUNK]
        slot_of = {rids[i]: self._slot(rids[i]) for i in emit}
        self._bind_traced(step, emit, slot_of, owner.numel())
        for decode in (True, False):
            rows = [i for i in emit if self.path[rids[i]] == "eager" and (self.rows[rids[i]].kind == DECODE) == decode]
            if not rows:
                continue
            rr = [rids[i] for i in rows]
            plan = self.runtime.plan([slot_of[r] for r in rr], rr, [self.settings[r] for r in rr], decode=decode)
            step.plans.append((plan, torch.tensor(rows, dtype=torch.long, device=device), rr))
            step.touched |= plan.touched_layers
        step.sc_rows = [i for i in emit if _wants_sc(self.settings.get(rids[i]))]
        step.cf_rows = [(i, k) for i in emit if (k := confidence_k(self.settings.get(rids[i])))]
        return step

    def _bind_traced(self, step: _Step, rows: list[int], slot_of: dict[str, int], num_tokens: int) -> None:
        """The traced step's token → slot map for this forward: the newest token of each request that produces one
        (both paths: an eager request's norms are recorded by the traced step after the op changed its stream)."""
        if not rows or self.tables is None:
            return
        assert self.rows is not None
        token_slots = torch.zeros(num_tokens, dtype=torch.long)
        decode = torch.zeros(num_tokens, dtype=torch.bool)
        last = step.last.cpu()
        for i in rows:
            rid = step.rids[i]
            d = self.rows[rid].kind == DECODE
            token_slots[last[i]], decode[last[i]] = slot_of[rid], d
            step.traced.append((rid, slot_of[rid], d))
        self.tables.bind_step(token_slots.to(self.device), decode.to(self.device))
        self.bound = True

    def _plan_ablations(
        self, step: _Step, owned: list[tuple[str, RowInfo]], owner: torch.Tensor, device: torch.device
    ) -> None:
        """Which flattened rows each SAE ablation of this step changes (:mod:`l2reason.serving.ablation`). A
        request's specs are checked (and its SAE read) the first step it runs; a bad spec is the request's error."""
        assert self.ablations is not None
        rids = [rid for rid, _ in owned]
        checked, bad = self.ablations.for_rows(rids, [self.settings.get(rid) for rid in rids])
        for j, e in bad.items():
            self.settings[rids[j]] = e
        step.ablate = SAEAblations.plan(checked, owner)
        step.touched |= set(step.ablate)

    def after_layer(self, hidden: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor, layer: int) -> None:
        """The eager path after decoder layer ``layer`` (the opaque op's body)."""
        t0 = time.perf_counter()
        self._after_layer(hidden, residual, positions, layer)
        self.timing["op"] += time.perf_counter() - t0

    def _after_layer(self, hidden: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor, layer: int) -> None:
        self.counts["op"] += 1
        step = self.step if self.rows is not None else None  # no bound rows: a dummy run, or nothing asked
        if step is None or layer not in step.touched:
            return
        assert self.runtime is not None
        self.counts["op_work"] += 1
        apply_ablations(step.ablate.get(layer, []), hidden, residual)  # o + r = the ablated stream; o kept
        for plan, rows, _ in step.plans:
            if layer not in plan.touched_layers:
                continue
            last = step.last[rows]
            o = hidden[last]
            x = o + residual[last]  # [B, d] the residual stream after `layer` (see the module docstring)
            rerun = None
            if plan.decode and layer in plan.by_layer:

                def rerun(xs: torch.Tensor, _last: torch.Tensor = last) -> torch.Tensor:
                    return self._rerun(layer, positions, hidden, residual, _last, xs)

            new = self.runtime.step_layer(plan, layer, x, mlp_out=o, rerun=rerun)
            if new is not x:
                residual[last] = new.to(residual.dtype)
                hidden[last] = 0

    def _rerun(
        self,
        layer: int,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        residual: torch.Tensor,
        last: torch.Tensor,
        xs: torch.Tensor,
    ) -> torch.Tensor:
        """Layer ``layer`` applied again, with ``xs [B, d]`` as the input stream of the tokens ``last``; the
        KV cache is left as it was.

        vLLM's attention runs over the whole step's batch, so the re-run does too (other tokens feed their
        own stream after ``layer``; only the ``last`` rows are used). It writes this step's keys/values
        again: the blocks those writes land in are saved first and put back after, so later tokens see
        pass-0 keys/values only (as in the embedded backend; the re-run attends to its own new ones).
        """
        from vllm.forward_context import get_forward_context
        from vllm.model_executor.layers.attention.attention import get_attention_context

        mod = self.layers[layer]
        name = mod.self_attn.attn.layer_name
        _, _, kv, _ = get_attention_context(name)
        sm = get_forward_context().slot_mapping
        slots = (sm[0] if isinstance(sm, list) else sm)[name].to(torch.long)
        blocks = torch.unique(torch.div(slots[slots >= 0], self.block_size, rounding_mode="floor")).to(kv.device)
        saved = kv[blocks].clone()
        try:
            x_in = hidden + residual  # a new tensor: the step's own tensors stay untouched
            x_in[last] = xs.to(x_in.dtype)
            o, r = mod(positions, x_in, None)  # residual None: the layer takes x_in as its input stream
            return (o + r)[last]
        finally:
            kv[blocks] = saved

    def _finish(self, step: _Step) -> None:
        assert self.runtime is not None
        for plan, _, rids in step.plans:
            for rid, rec in zip(rids, self.runtime.records(plan), strict=True):
                step.records[rid] = rec or {}
        if step.traced and self.tables is not None:
            recs = self.tables.read_records([s for _, s, _ in step.traced], [d for _, _, d in step.traced])
            for (rid, _, _), rec in zip(step.traced, recs, strict=True):
                if self.path.get(rid) == "eager":  # its reports are SlotRuntime's, its norms the traced step's
                    if rec and "n" in rec and "n" in step.records.get(rid, {}):
                        step.records[rid]["n"] = rec["n"]
                else:
                    step.records[rid] = rec or {}
            if not self._said:
                self._said = True
                log.info(
                    "l2reason: first records from the traced step; so far graph_step ran %d times as Python at run "
                    "time (0: only inside vLLM's compiled graph), the eager op was called %d times (%d with work)",
                    self.counts["graph_step_python"],
                    self.counts["op"],
                    self.counts["op_work"],
                )

    def add_self_certainty(self, logits: torch.Tensor) -> None:
        """``logits [R, V]``, one row per request of the step in batch order: add ``sc`` (and, for requests
        pruning on confidence, ``cf``) to the records."""
        step = self.step
        if step is None or not (step.sc_rows or step.cf_rows):
            return
        if logits.shape[0] != len(step.rids):  # asked for and not computable: say so, never leave it out
            for i in step.sc_rows + [i for i, _ in step.cf_rows]:
                step.records.setdefault(step.rids[i], {})["e"] = "l2reason: no logits row for self-certainty"
            return
        if step.sc_rows:
            sc = self_certainty(logits[step.sc_rows]).tolist()
            for i, v in zip(step.sc_rows, sc, strict=True):
                step.records.setdefault(step.rids[i], {})["sc"] = v
        if step.cf_rows:
            cf = token_confidence(logits[[i for i, _ in step.cf_rows]], [k for _, k in step.cf_rows])
            for (i, _), v in zip(step.cf_rows, cf, strict=True):
                step.records.setdefault(step.rids[i], {})["cf"] = v


def register_tables(model: torch.nn.Module, tables: SlotTables) -> None:
    """Register the tables' tensors as (non-persistent) buffers of ``model``, the module whose forward vLLM compiles.

    The compiled forward reads them from the module (:func:`table_buffers`), not through a global: vLLM saves the
    compiled forward to its compile cache (AOT compile) and a later start loads it, and module buffers are taken
    from the live module at every call, like the weights. (With torch 2.13 a module-level global tensor mutated
    in a compiled function was saved into such an artifact as a constant: after loading, its writes went to a
    copy nobody reads.) The buffers are the tables' own tensors (no copy): the host writes into them outside the
    forward.
    """
    leaves, spec = tree_flatten(tables.buffers)
    names = []
    for i, t in enumerate(leaves):
        name = f"_l2reason_table_{i}"
        model.register_buffer(name, t, persistent=False)
        names.append(name)
    model._l2reason_tables = (tuple(names), spec)  # type: ignore[assignment]


def table_buffers(model: torch.nn.Module) -> Buffers:
    """The tables' buffers as ``model``'s (see :func:`register_tables`); traceable (attribute reads, a pytree)."""
    names, spec = model._l2reason_tables  # type: ignore[misc]
    return tree_unflatten([getattr(model, n) for n in names], spec)  # type: ignore[no-any-return]


def close_records(records: list[dict[str, Any]], num_tokens: int) -> int | None:
    """Make a finishing request's record list whole: one record per generated token, never a short list.

    Called when vLLM finishes the request (``request_finished``), which in 0.32 comes before the last token's
    record arrives (the connector docstring): the list then holds ``num_tokens - 1`` records, and a placeholder
    error record is appended where the last one goes (the connector overwrites it when it arrives). Any other
    count means records were lost on the way: every record becomes an error, so no norm is misaligned.

    Returns:
        The index the last token's record goes to, or None when the list is complete already.
    """
    if len(records) == num_tokens:
        return None
    if len(records) != num_tokens - 1:
        msg = f"l2reason: the plugin has {len(records)} records for the first {num_tokens - 1} tokens of this request"
        records[:] = [{"e": msg} for _ in range(max(num_tokens - 1, 0))]
    records.append({"e": "l2reason: the record of this request's last token did not come back"})
    return len(records) - 1


def _norms_only(s: EngineSettings) -> EngineSettings:
    """What the traced step does for a request on the eager path: its norms (after the op's interventions)."""
    return EngineSettings(layers=s.layers, seed=s.seed)


def _slot_mapping() -> torch.Tensor | None:
    """This forward's KV slot per flattened token (vLLM's forward context; None outside one)."""
    from vllm.forward_context import get_forward_context, is_forward_context_available

    if not is_forward_context_available():
        return None
    sm = get_forward_context().slot_mapping
    if isinstance(sm, list):
        sm = sm[0] if sm else {}
    return next(iter(sm.values())) if sm else None


def _wants_sc(s: EngineSettings | Exception | None) -> bool:
    return isinstance(s, EngineSettings) and s.sc


STATE = WorkerState()


@torch.library.custom_op("l2reason::after_layer", mutates_args=("hidden", "residual"))
def after_layer(hidden: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor, layer: int) -> None:
    """The l2reason step after decoder layer ``layer`` (norm capture; interventions write rows in place)."""
    STATE.after_layer(hidden, residual, positions, layer)


@after_layer.register_fake
def _(hidden: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor, layer: int) -> None:
    return None
