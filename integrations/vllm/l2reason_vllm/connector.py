"""The plugin's KV connector: per-step request layout in, per-token records out (vLLM 0.32).

vLLM V1 has no channel that returns a dense model's per-token data with a
request (the auxiliary-output connector returns MoE routing only; EAGLE's
hidden states go to the draft model; the hidden-states connector writes whole
states to files). Its KV-connector interface (``KVConnectorBase_V1``, loaded
from ``kv_transfer_config.kv_connector_module_path``) is the supported way for
out-of-tree code to exchange data between the scheduler and the workers and
to attach a dict to a finished request's output; this connector moves no KV
at all and uses exactly that:

- scheduler → worker, every step (``build_connector_meta``): for each
  scheduled request its KV block ids, whether this step emits a token for it
  (decode / last prefill chunk / earlier chunk), and, the first time, its
  l2reason settings from ``SamplingParams.extra_args["l2reason"]``;
- worker → scheduler, every step (``build_connector_worker_meta``): one record
  per request that emitted a token;
- scheduler → client, once (``request_finished``): ``{"l2r": [record per
  token]}``, which vLLM returns as ``RequestOutput.kv_transfer_params`` (the
  OpenAI server: the response's ``kv_transfer_params``).

vLLM 0.32 calls ``request_finished`` before ``update_connector_output`` in the
same scheduler update, so the list returned there is the live one and the
last token's record is put into it just after (both happen before the
output leaves the engine core). The list returned holds one record per
generated token whatever happens: a placeholder error record where the last
one goes until it arrives, and error records throughout when records were
lost (:func:`~l2reason_vllm.runtime.close_records`). Requests that stop in the front end (stop
strings) are aborted there and return nothing: the l2reason client applies
stop strings itself.

Online pruning (settings with ``prune``) runs here too, on the scheduler
side, where each step's records and the requests that finished meet:
:class:`~l2reason.serving.prune.PruneGroups` gets every step's records
(``update_connector_output``) and the requests that left
(``request_finished``: finished on their own, or aborted). A request it
prunes at token ``t`` gets ``"p": t`` in that token's record and its
``max_tokens`` lowered to the tokens it has (``Request.max_tokens``, the
scheduler's own copy, which ``check_stop`` reads): vLLM's scheduler then ends
it after its next token as length-capped and frees its KV blocks, with no
change to the worker, the compiled graph or CUDA graphs (the client drops the
token(s) after ``t``). The scheduler holds the ``Request`` objects it is
handed in ``update_state_after_alloc``.

SAE ablation changes a request's prompt states, so the scheduler side also
wraps ``Request.__init__`` (in the engine-core process, before the request's
prefix-cache block hashes are computed) to give a request with ablations a
prefix-cache namespace of its own: its ``cache_salt`` extended with a hash of
its ablations (:func:`l2reason.serving.ablation.ablation_cache_salt`),
whatever the client sent.

CUDA graphs: the connector asks vLLM for PIECEWISE graphs
(``requires_piecewise_for_cudagraph``), so the plugin's eager op never sits
inside a FULL graph, where it would run only at capture
(:mod:`l2reason_vllm.graphs`).

Limits: records arrive when the request finishes (no per-token streaming);
the connector takes the one KV-connector slot (combine with another through
vLLM's ``MultiConnector``); vLLM logs the interface as experimental.

Cost: the per-step hooks are a few dict operations. What configuring *a* KV
connector does cost on vLLM 0.32's CPU build is one more core reserved per
worker for connector threads (``vllm/utils/ompmultiprocessing.py``), which this
connector has none of; ``l2reason_vllm.launch`` keeps stock vLLM's binding
(``VLLM_CPU_NUM_OF_RESERVED_CPU``), and the scheduler side warns at start-up
when that is not set.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorWorkerMetadata,
)

from l2reason.serving.ablation import ablation_cache_salt
from l2reason.serving.capabilities import read_settings
from l2reason.serving.prune import PruneGroups
from l2reason.serving.settings import SETTINGS_KEY, TOKEN_KEY, EngineSettings
from l2reason_vllm.runtime import CHUNK, DECODE, PREFILL, STATE, RowInfo, close_records

log = logging.getLogger("vllm.l2reason_vllm")  # a child of vLLM's logger: its handler prints it


class L2Meta(KVConnectorMetadata):
    """Scheduler → worker: this step's requests."""

    def __init__(self, rows: dict[str, RowInfo], finished: set[str]) -> None:
        self.rows, self.finished = rows, finished


class L2WorkerMeta(KVConnectorWorkerMetadata):
    """Worker → scheduler: this step's records by request id."""

    def __init__(self, records: dict[str, dict[str, Any]]) -> None:
        self.records = records

    def aggregate(self, other: KVConnectorWorkerMetadata) -> KVConnectorWorkerMetadata:
        # tensor-parallel ranks compute the same records from the same (replicated) stream
        # --- scale-out (issue 26): keep one rank's records (once per token); say so when the ranks disagree
        if self.records and isinstance(other, L2WorkerMeta) and other.records and other.records != self.records:
            log.warning(TP_DISAGREE + ": %s", sorted(set(self.records) ^ set(other.records)) or "values differ")
        # --- end scale-out
        return self if self.records else other


#: logged (scheduler side) when two tensor-parallel ranks returned different records for one step
TP_DISAGREE = "l2reason: tensor-parallel ranks returned different records"


class _Req:
    __slots__ = ("blocks", "prompt_len", "settings")

    def __init__(self, prompt_len: int, blocks: list[int], settings: str | None) -> None:
        self.prompt_len, self.blocks, self.settings = prompt_len, blocks, settings


class L2ReasonConnector(KVConnectorBase_V1):
    """Moves l2reason's per-request settings and per-token records; moves no KV."""

    def __init__(self, vllm_config: Any, role: KVConnectorRole, kv_cache_config: Any = None) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        self._reqs: dict[str, _Req] = {}
        self._records: dict[str, list[dict[str, Any]]] = {}
        self._closing: dict[str, tuple[list[dict[str, Any]], int]] = {}  # finished: (list, where the last goes)
        # online pruning (scheduler side): the groups, the pruning requests (their Request objects and record lists),
        # the ones that left since the last update (True: on their own), and requests whose pruning was refused
        self._prune = PruneGroups()
        self._pruning: dict[str, Any] = {}
        self._lists: dict[str, list[dict[str, Any]]] = {}
        self._ended: dict[str, bool] = {}
        self._refused: dict[str, str] = {}
        if role == KVConnectorRole.SCHEDULER:
            _warn_cpu_binding()
            _salt_ablating_requests()

    @property
    def requires_kv_delivery(self) -> bool:
        return False

    @classmethod
    def requires_piecewise_for_cudagraph(cls, extra_config: dict[str, Any]) -> bool:
        """True: the plugin's eager op must run on every step, so vLLM turns FULL CUDA graphs into PIECEWISE
        ones (the op is a splitting op and runs between the replayed pieces; :mod:`l2reason_vllm.graphs`)."""
        return True

    # ---- worker side -------------------------------------------------------
    def bind_connector_metadata(self, connector_metadata: KVConnectorMetadata) -> None:
        super().bind_connector_metadata(connector_metadata)
        if isinstance(connector_metadata, L2Meta):
            STATE.bind(connector_metadata.rows, connector_metadata.finished)

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        return

    def wait_for_layer_load(self, layer_name: str) -> None:
        return

    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any, **kwargs: Any) -> None:
        return

    def wait_for_save(self) -> None:
        return

    def build_connector_worker_meta(self) -> KVConnectorWorkerMetadata | None:
        records = STATE.take_records()
        return L2WorkerMeta(records) if records else None

    # ---- scheduler side ----------------------------------------------------
    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int | None, bool]:
        return 0, False

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        """A request the scheduler takes from the waiting queue: one with ``prune`` settings joins its group."""
        rid = request.request_id
        if rid in self._pruning or rid in self._refused:
            return  # resumed after a preemption
        sp = request.sampling_params
        raw = ((sp.extra_args or {}) if sp is not None else {}).get(SETTINGS_KEY)
        if raw is None:
            return
        settings = read_settings({SETTINGS_KEY: raw}, "vLLM")
        if not isinstance(settings, EngineSettings) or settings.prune is None:
            return
        why = self._prune.join(rid, settings.prune, max_len=int(request.max_tokens))
        if why is None:
            self._pruning[rid] = request
        else:
            self._refused[rid] = why

    def build_connector_meta(self, scheduler_output: Any) -> KVConnectorMetadata:
        self._closing.clear()
        so = scheduler_output
        rows: dict[str, RowInfo] = {}
        n_sched: dict[str, int] = so.num_scheduled_tokens
        for new in so.scheduled_new_reqs:
            sp = new.sampling_params
            raw = ((sp.extra_args or {}) if sp is not None else {}).get(SETTINGS_KEY)
            req = _Req(len(new.prompt_token_ids or ()), list(new.block_ids[0]), raw)
            self._reqs[new.req_id] = req
            if raw is not None:
                self._records[new.req_id] = []
            rows[new.req_id] = RowInfo(
                self._kind(req, new.num_computed_tokens, n_sched.get(new.req_id, 0)), list(req.blocks), raw
            )
        cached = so.scheduled_cached_reqs
        for i, rid in enumerate(cached.req_ids):
            known = self._reqs.get(rid)
            if known is None:
                continue
            req = known
            nb = cached.new_block_ids[i]
            if rid in cached.resumed_req_ids:
                req.blocks = list(nb[0]) if nb else []
            elif nb:
                req.blocks.extend(nb[0])
            kind = self._kind(req, cached.num_computed_tokens[i], n_sched.get(rid, 0))
            rows[rid] = RowInfo(kind, list(req.blocks))  # a copy: the worker may run in this process
        finished = set(so.finished_req_ids)
        for rid in finished:
            self._reqs.pop(rid, None)
        return L2Meta(rows, finished)

    @staticmethod
    def _kind(req: _Req, computed: int, scheduled: int) -> str:
        if computed >= req.prompt_len:
            return DECODE
        return PREFILL if computed + scheduled >= req.prompt_len else CHUNK

    def update_connector_output(self, connector_output: Any) -> None:
        meta = getattr(connector_output, "kv_connector_worker_meta", None)
        records = meta.records if isinstance(meta, L2WorkerMeta) else {}
        for rid, rec in records.items():
            if rid in self._refused:
                rec["e"] = self._refused[rid]
            lst = self._records.get(rid)
            if lst is not None:
                lst.append(rec)
            elif rid in self._closing:
                lst, at = self._closing.pop(rid)
                lst[at] = rec
            if lst is not None and rid in self._pruning:
                self._lists[rid] = lst
        if self._pruning or self._ended:
            self._prune_step(records)

    def _prune_step(self, records: dict[str, dict[str, Any]]) -> None:
        """Feed this step's records to the pruning groups; mark and stop the requests they prune."""
        ended, self._ended = self._ended, {}
        pruned = self._prune.step({rid: rec for rid, rec in records.items() if rid in self._pruning}, ended)
        for rid, kept in pruned.items():
            lst, request = self._lists.get(rid), self._pruning.get(rid)
            if lst is not None and 0 < kept <= len(lst) and isinstance(lst[kept - 1], dict):
                lst[kept - 1]["p"] = kept
            if request is not None and not request.is_finished():
                request.max_tokens = min(request.max_tokens, request.num_output_tokens)
        for rid in ended:
            self._pruning.pop(rid, None)
            self._lists.pop(rid, None)

    def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        rid = request.request_id
        self._reqs.pop(rid, None)
        self._refused.pop(rid, None)
        if rid in self._pruning:  # its last record (if it finished on its own) comes in this same update
            self._ended[rid] = request.status.name in ("FINISHED_STOPPED", "FINISHED_LENGTH_CAPPED")
        lst = self._records.pop(rid, None)
        if lst is None:
            return False, None
        # the live list, made whole: this step's record replaces its placeholder right after (close_records)
        at = close_records(lst, int(getattr(request, "num_output_tokens", len(lst))))
        if at is not None:
            self._closing[rid] = (lst, at)
        return False, {TOKEN_KEY: lst}


def _salt_ablating_requests() -> None:
    """Wrap ``Request.__init__`` so a request with SAE ablations hashes its prompt blocks in a namespace of its
    own (vLLM computes the block hashes in the constructor, from ``cache_salt``). Once per process."""
    from vllm.v1.request import Request

    original = Request.__init__
    if getattr(original, "_l2reason", False):
        return

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        sp = kwargs.get("sampling_params")  # the engine core passes keywords (Request.from_engine_core_request)
        raw = (getattr(sp, "extra_args", None) or {}).get(SETTINGS_KEY)
        if raw is not None:
            settings = read_settings({SETTINGS_KEY: raw}, "vLLM")
            kwargs["cache_salt"] = ablation_cache_salt(settings, kwargs.get("cache_salt"))
        original(self, *args, **kwargs)

    __init__._l2reason = True  # type: ignore[attr-defined]
    Request.__init__ = __init__  # type: ignore[method-assign]


def _warn_cpu_binding() -> None:
    """Warn when vLLM's CPU build bound its workers with the extra core it reserves for KV connectors."""
    from l2reason_vllm.launch import RESERVED_CPU_ENV

    if RESERVED_CPU_ENV in os.environ or os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto") != "auto":
        return
    try:
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return
    except Exception:  # a warning only
        return
    log.warning(
        "l2reason: on vLLM's CPU build a configured KV connector makes vLLM reserve one more core per worker "
        "(for connector threads this connector does not have); on a small machine the workers' OpenMP threads "
        "then compete with the engine's own processes (~0.4x stock decode speed on 2 cores). Start through "
        "`python -m l2reason_vllm.launch`, or set VLLM_CPU_NUM_OF_RESERVED_CPU (l2reason_vllm.launch."
        "cpu_binding_env) before the engine starts."
    )
