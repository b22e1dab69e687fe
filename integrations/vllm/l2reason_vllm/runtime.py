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

Records (``{"n": [...], "r": {...}, "sc": ...}`` per token) are collected per
step and handed to the connector, which returns them with the request. Every
token a request with settings produces gets a record: one the step could not
fill is an error record (``"e"``), never a gap.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from l2reason.errors import ConfigError
from l2reason.serving.ablation import AblationRows, SAEAblations, SAEStore, apply_ablations
from l2reason.serving.capabilities import read_settings
from l2reason.serving.info import EngineModelInfo
from l2reason.serving.settings import SETTINGS_KEY, EngineSettings
from l2reason.serving.slots import SlotRuntime, StepPlan
from l2reason.signal.certainty import self_certainty

log = logging.getLogger("l2reason_vllm")

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
        self.runtime: SlotRuntime | None = None
        self.layers: Any = None  # the inner model's decoder layers (ALRR re-runs them)
        self.settings: dict[str, EngineSettings | Exception | None] = {}
        self.slot_of: dict[str, int] = {}
        self.free: list[int] = []
        self.step: _Step | None = None
        self.step_seq = -1
        self.ablations: SAEAblations | None = None  # SAE files from $L2REASON_SAE_DIR; checked once per request

    # ---- from the connector ----------------------------------------------
    def bind(self, rows: dict[str, RowInfo], finished: set[str]) -> None:
        for rid in finished:
            self.settings.pop(rid, None)
            if self.ablations is not None:
                self.ablations.forget(rid)
            slot = self.slot_of.pop(rid, None)
            if slot is not None:
                self.free.append(slot)
        for rid, row in rows.items():
            if row.settings is not None:
                self.settings[rid] = read_settings({SETTINGS_KEY: row.settings}, "vLLM")
        self.rows = rows or None
        self.seq += 1
        self.step = None

    def take_records(self) -> dict[str, dict[str, Any]]:
        """This step's records by request id (the dict stays live: self-certainty is added after the forward).

        Every request with settings that this step gives a token (decode, or the prefill's last chunk) has one;
        one the step did not fill is an error record, so the client never sees a short list.
        """
        step, rows, self.rows = self.step, self.rows, None
        records: dict[str, dict[str, Any]] = {}
        if step is not None:
            self._finish(step)
            records = step.records
        for rid, row in (rows or {}).items():
            s = self.settings.get(rid)
            if row.kind != CHUNK and s is not None and rid not in records:
                why = str(s) if isinstance(s, Exception) else "the vLLM plugin could not place this token in the step"
                records[rid] = {"e": why if why.startswith("l2reason") else f"l2reason: {why}"}
        return records

    # ---- inside the forward ------------------------------------------------
    def setup(self, model: torch.nn.Module, num_layers: int, hidden_size: int, max_seqs: int, block_size: int) -> None:
        self.num_layers, self.block_size = num_layers, block_size
        self.layers = model.layers
        dtype = next(model.parameters()).dtype
        device = next(model.parameters()).device
        info = EngineModelInfo("vLLM", num_layers=num_layers, hidden_size=hidden_size, dtype=dtype)
        # slot 0 stays unused (a padding row, as in SGLang); one slot per running request
        self.runtime = SlotRuntime(info, num_slots=max_seqs + 1, device=device)
        self.ablations = SAEAblations(SAEStore.from_env(device), info)
        self.free = list(range(max_seqs, 0, -1))
        log.info("l2reason: per-slot runtime for %d requests, %d layers", max_seqs, num_layers)

    def _slot(self, rid: str) -> int:
        slot = self.slot_of.get(rid)
        if slot is None:
            if not self.free:
                raise ConfigError("l2reason: more running requests than slots (max_num_seqs)")
            slot = self.slot_of[rid] = self.free.pop()
        return slot

    def current(self, device: torch.device) -> _Step | None:
        """This forward's step, built on the first layer that asks."""
        if self.rows is None or self.runtime is None:
            return None
        if self.step_seq == self.seq:
            return self.step
        self.step_seq = self.seq
        self.step = self._build(device)
        return self.step

    def _build(self, device: torch.device) -> _Step | None:
        from vllm.forward_context import get_forward_context

        assert self.rows is not None and self.runtime is not None
        if all(self.settings.get(rid) is None for rid in self.rows):
            return None  # nobody in this step asked for anything
        sm = get_forward_context().slot_mapping
        if isinstance(sm, list):
            sm = sm[0] if sm else {}
        if not sm:
            return None
        slots = next(iter(sm.values()))
        blocks = torch.div(slots.to(torch.long), self.block_size, rounding_mode="floor")
        blocks = torch.where(slots.to(torch.long) < 0, -1, blocks)
        owned = [(rid, r) for rid, r in self.rows.items() if r.blocks]
        if not owned or all(self.settings.get(rid) is None for rid, _ in owned):
            return None
        top = max(int(blocks.max().item()), max(max(r.blocks) for _, r in owned)) + 1
        lut = torch.full((top + 1,), -1, dtype=torch.long)
        for j, (_, r) in enumerate(owned):
            lut[torch.tensor(r.blocks, dtype=torch.long)] = j
        owner = lut[blocks.cpu()]  # padding (-1) maps to lut[-1], which is -1
        idx = torch.arange(owner.numel())
        last = torch.full((len(owned),), -1, dtype=torch.long)
        hit = owner >= 0
        last.scatter_reduce_(0, owner[hit], idx[hit], reduce="amax")
        order = sorted((j for j in range(len(owned)) if int(last[j]) >= 0), key=lambda j: int(last[j]))
        rids = [owned[j][0] for j in order]  # batch order (= the rows of the logits vLLM computes)
        step = _Step(rids=rids, last=last[order].to(device))
        self._plan_ablations(step, owned, owner, device)
        for decode in (True, False):
            rows = [
                i
                for i, rid in enumerate(rids)
                if self.settings.get(rid) is not None
                and self.rows[rid].kind != CHUNK
                and (self.rows[rid].kind == DECODE) == decode
            ]
            if not rows:
                continue
            rr = [rids[i] for i in rows]
            plan = self.runtime.plan([self._slot(r) for r in rr], rr, [self.settings[r] for r in rr], decode=decode)
            step.plans.append((plan, torch.tensor(rows, dtype=torch.long, device=device), rr))
            step.touched |= plan.touched_layers
        step.sc_rows = [
            i for i, rid in enumerate(rids) if self.rows[rid].kind != CHUNK and _wants_sc(self.settings.get(rid))
        ]
        return step

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
        step = self.current(hidden.device)
        if step is None or layer not in step.touched:
            return
        assert self.runtime is not None
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

    def add_self_certainty(self, logits: torch.Tensor) -> None:
        """``logits [R, V]``, one row per request of the step in batch order: add ``sc`` to the records."""
        step = self.step
        if step is None or not step.sc_rows:
            return
        if logits.shape[0] != len(step.rids):  # asked for and not computable: say so, never leave it out
            for i in step.sc_rows:
                step.records.setdefault(step.rids[i], {})["e"] = "l2reason: no logits row for self-certainty"
            return
        sc = self_certainty(logits[step.sc_rows]).tolist()
        for i, v in zip(step.sc_rows, sc, strict=True):
            step.records.setdefault(step.rids[i], {})["sc"] = v


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
