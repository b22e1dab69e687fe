"""Online pruning in the SGLang plugin (0.5.23): the scheduler's side of :mod:`l2reason.serving.prune`.

``docs/techniques.md``, "Online pruning in the engines". SGLang runs the model
worker in the scheduler's process, so the records a pass produced are on the
request (``req.customized_info["l2r"]``) when the scheduler has processed the
pass's result. An AFTER hook on ``Scheduler.process_batch_result``
(:func:`after_batch_result`) then, for every request of the batch whose
settings carry ``prune``:

- joins it to its group the first time it is seen (its first token);
- feeds the group the record(s) the pass appended, with whether the request
  finished on its own with that token (``req.finished()``, any reason but an
  abort);
- for every request the rule prunes, writes ``"p": t`` into the record of
  the last token it keeps (when its list is still the scheduler's) and
  lowers ``req.sampling_params.max_new_tokens`` to the tokens it has:
  SGLang's ``check_finished`` ends it after its next token (``FINISH_LENGTH``)
  and frees its KV. Nothing changes in the forward, so CUDA graphs stay.

An AFTER hook on ``Scheduler.abort_request`` tells the groups that a request
aborted in the waiting queue (a retracted one: it never comes back through a
batch result) has left.
"""

from __future__ import annotations

import logging
from typing import Any

from l2reason.serving.prune import PruneGroups
from l2reason.serving.settings import TOKEN_KEY, EngineSettings

log = logging.getLogger("l2reason_sglang")

#: this process's pruning groups (one scheduler per process)
GROUPS = PruneGroups()
#: request id -> records of it fed so far
_FED: dict[str, int] = {}
#: request id -> the scheduler's request, for every member in the engine (a pruned one may be in another batch)
_REQS: dict[str, Any] = {}


def after_batch_result(batch: Any, settings_for: Any) -> dict[str, int]:
    """Feed one processed batch's records to the groups; mark and stop the requests pruned now (returned)."""
    records: dict[str, dict[str, Any]] = {}
    ended: dict[str, bool] = {}
    for req in getattr(batch, "reqs", None) or []:
        rid = req.rid
        if rid not in _FED and not _join(req, settings_for(rid)):
            continue
        if rid not in GROUPS.members:
            continue
        recs = (getattr(req, "customized_info", None) or {}).get(TOKEN_KEY) or []
        new = recs[_FED[rid] :]
        _FED[rid] = len(recs)
        _REQS[rid] = req
        if len(new) > 1:  # one token per pass without speculative decoding (refused at start-up): feed the rest
            for rec in new[:-1]:
                _stop(GROUPS.step({rid: rec}, {}))
        if new:
            records[rid] = new[-1]
        if req.finished():
            ended[rid] = type(req.finished_reason).__name__ != "FINISH_ABORT"
    pruned = GROUPS.step(records, ended)
    _stop(pruned)
    for rid in ended:
        _FED.pop(rid, None)
        _REQS.pop(rid, None)
    return pruned


def after_abort(rid: str | None, abort_all: bool) -> None:
    """Requests aborted by the client: any member that has not finished leaves the groups (never pruned)."""
    gone = [m for m in GROUPS.members if abort_all or (rid is not None and m.startswith(rid))]
    if gone:
        GROUPS.step({}, dict.fromkeys(gone, False))
        for m in gone:
            _FED.pop(m, None)
            _REQS.pop(m, None)


def _join(req: Any, settings: EngineSettings | Exception | None) -> bool:
    """A request seen for the first time: join its group when it prunes (its first record says why it cannot)."""
    if not isinstance(settings, EngineSettings) or settings.prune is None:
        return False
    why = GROUPS.join(req.rid, settings.prune, max_len=int(req.sampling_params.max_new_tokens))
    if why is not None:  # asked again at its next pass: each new record says so
        recs = (getattr(req, "customized_info", None) or {}).get(TOKEN_KEY) or []
        if recs and isinstance(recs[-1], dict):
            recs[-1]["e"] = why
        return False
    _FED[req.rid] = 0
    return True


def _stop(pruned: dict[str, int]) -> None:
    """Mark the last kept record of each pruned request and have SGLang end it after its next token."""
    for rid, kept in pruned.items():
        req = _REQS.get(rid)
        if req is None or req.finished():
            continue  # it ran ahead of its group and has already left: the client's replay cuts it
        recs = (getattr(req, "customized_info", None) or {}).get(TOKEN_KEY) or []
        if 0 < kept <= len(recs) and isinstance(recs[kept - 1], dict):
            recs[kept - 1]["p"] = kept
        sp = req.sampling_params
        sp.max_new_tokens = min(int(sp.max_new_tokens), len(req.output_ids))
