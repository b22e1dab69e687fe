"""Online pruning inside an engine: one :class:`~l2reason.techniques.pruning.PruneTracker` per request, fed in lock-step.

``docs/techniques.md``, "Online pruning in the engines". The rule is the
embedded backend's, run by the same code (:mod:`l2reason.techniques.pruning`);
this module only feeds it from an engine, where a request's ``n`` candidates
are ``n`` engine requests that need not advance together (one may start a
step later, wait in the queue, or be preempted).

- **Lock-step by token index.** A :class:`PruneGroup` buffers each
  candidate's per-token signals and calls :meth:`PruneTracker.step` for token
  ``t`` only once every still-running candidate has produced token ``t``, with
  exactly the candidates that did. That is the embedded backend's decode loop,
  where all rows of a request advance together, so the decisions are those of
  :func:`~l2reason.techniques.pruning.simulate` on the same signals, whatever
  the engine's scheduling. A candidate that runs ahead of the others can be
  pruned at an earlier token than it has reached: it keeps the tokens up to
  the prune step (the client drops the rest).
- **Engine side** (:class:`PruneGroups`): the plugin calls
  :meth:`PruneGroups.join` when a request with ``prune`` settings arrives and
  :meth:`PruneGroups.step` once per engine step with that step's per-token
  records and the requests that left the engine (finished on their own, or
  aborted). It returns the requests pruned at this step and how many tokens
  each keeps; the plugin marks that record (``"p"``) and stops the request.
- **Client side** (:func:`replay`): the client runs the same group on the
  signals it received, so the result it reports is exactly the replay's on
  its own data (a mark the engine could not deliver, say for a candidate
  that had already finished when a slower sibling caught up, changes
  nothing); the engine's marks tell where the engine stopped a candidate.

Signals come from the records (:mod:`l2reason.serving.settings`): ``"cf"``
(confidence), ``"sc"`` (self-certainty) or the ``cols`` of ``"n"`` (ℓ2), as
:func:`~l2reason.techniques.pruning.token_signal` turns them into the rule's
signal. The state of a group is ``n * (max_len + 1)`` float64 values
(:data:`MAX_PRUNE_BYTES` bounds all groups of one engine).

Example:
    >>> from l2reason.serving.settings import PruneSettings
    >>> rule = PruneSettings(group="g", n=2, index=0, max_len=8, score="self-certainty", threshold=0.5,
    ...                      warmup=1, window=1)
    >>> groups = PruneGroups()
    >>> groups.join("a", rule), groups.join("b", rule.model_copy(update={"index": 1}))
    (None, None)
    >>> groups.step({"a": {"sc": 1.0}, "b": {"sc": 0.1}}, {})
    {'b': 1}
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from l2reason.serving.settings import PruneSettings
from l2reason.techniques.pruning import PRUNED, RUNNING, PruneTracker, token_signal

log = logging.getLogger(__name__)

__all__ = [
    "MAX_PRUNE_BYTES",
    "MAX_WAITING",
    "PruneGroup",
    "PruneGroups",
    "confidence_k",
    "record_signal",
    "replay",
    "token_confidence",
]

#: groups kept after all their members seen so far left, waiting for the rest (the engine ran them one after
#: another: fewer slots than candidates); the oldest is forgotten beyond this
MAX_WAITING = 1024
#: the most memory the pruning state of all groups an engine serves may take (their trackers' running sums)
MAX_PRUNE_BYTES = 1024**3


def token_confidence(logits: Any, ks: Sequence[int]) -> list[float]:
    """DeepConf token confidence per row of ``logits [R, V]``: ``-mean`` of its top-``ks[r]`` logprobs (``"cf"``).

    Computed exactly as the client computes it from vLLM's returned logprobs, so that the engine's pruning
    sees the very values the client's replay does: vLLM's raw logprobs (``log_softmax`` in float32 of the
    logits the model returns, temperature 1), highest first, summed in float64 in that order, divided by ``k``.
    """
    import torch

    lp = logits.log_softmax(dim=-1, dtype=torch.float32)
    top = lp.topk(max(ks), dim=-1).values.tolist()
    return [-sum(row[:k]) / k for row, k in zip(top, ks, strict=True)]


def confidence_k(settings: Any) -> int:
    """The top-``k`` of a request whose settings prune on confidence (0: they do not, or are an error)."""
    p = getattr(settings, "prune", None)
    return int(p.k) if isinstance(p, PruneSettings) and p.score == "confidence" else 0


def record_signal(rule: PruneSettings, record: Mapping[str, Any] | None) -> float | None:
    """The rule's signal for one token from its record (None: the record lacks it, or is an error record)."""
    if not record or record.get("e"):
        return None
    try:
        if rule.score == "l2":
            n = record["n"]
            norms = np.asarray([[n[c] for c in rule.cols]], dtype=np.float64)  # [1, k], as a [T, k] row
            return float(token_signal(rule, norms=norms, tau=rule.tau)[0])
        value = record["cf" if rule.score == "confidence" else "sc"]
        return float(value)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


class PruneGroup:
    """The candidates of one request, their tracker fed token by token in lock-step.

    Args:
        rule: the rule (a :class:`~l2reason.serving.settings.PruneSettings` or any ``PruneSpec``-like object).
        n: the candidates.
        max_len: the most tokens a candidate generates.

    Example:
        >>> from types import SimpleNamespace
        >>> rule = SimpleNamespace(threshold=0.5, first=1, quantile=0.0, warmup=1, window=1, min_keep=1)
        >>> g = PruneGroup(rule, 2, 4)
        >>> g.push(0, 0.1, False)  # waits for row 1's first token
        []
        >>> g.push(1, 0.9, False)
        [0]
    """

    def __init__(self, rule: Any, n: int, max_len: int) -> None:
        self.tracker = PruneTracker(rule, n, max_len)
        self.pending: list[deque[tuple[float, bool]]] = [deque() for _ in range(n)]

    def push(self, row: int, value: float, finished: bool, *, advance: bool = True) -> list[int]:
        """Row ``row``'s next token (its signal; ``finished``: its last, ended on its own); the rows pruned now.

        ``advance=False`` only buffers it (call :meth:`advance` after pushing many)."""
        if self.tracker.state[row] != RUNNING:
            return []
        self.pending[row].append((float(value), bool(finished)))
        return self.advance() if advance else []

    def drop(self, row: int) -> list[int]:
        """Row ``row`` left without finishing on its own (aborted, an error): never pruned; the rows pruned now."""
        self.tracker.drop([row])
        self.pending[row].clear()
        return self.advance()

    def stall(self) -> list[int]:
        """The running rows whose next token has not come (the group waits for them)."""
        return [int(r) for r in np.flatnonzero(self.tracker.state == RUNNING) if not self.pending[r]]

    def advance(self) -> list[int]:
        """Run the tracker over every token index that all running rows have reached."""
        out: list[int] = []
        tr = self.tracker
        while True:
            rows = np.flatnonzero(tr.state == RUNNING)
            if rows.size == 0 or any(not self.pending[r] for r in rows):
                return out
            heads = [self.pending[r].popleft() for r in rows]
            pruned = tr.step(rows, [v for v, _ in heads], [f for _, f in heads])
            for r in pruned:
                self.pending[r].clear()
            out += pruned


class PruneGroups:
    """Every pruning group an engine serves (engine-agnostic; one per scheduler).

    Args:
        max_bytes: the most memory all groups' trackers may hold; a request that would pass it is refused.

    Attributes:
        members: request id -> (group id, row).
    """

    def __init__(self, max_bytes: int = MAX_PRUNE_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self.groups: dict[str, PruneGroup] = {}
        self.rules: dict[str, PruneSettings] = {}
        self.rids: dict[str, dict[int, str]] = {}  # group -> row -> request id (rows seen so far)
        self.live: dict[str, set[str]] = {}  # group -> its request ids still in the engine
        self.members: dict[str, tuple[str, int]] = {}
        self.waiting: dict[
            str, None
        ] = {}  # groups with no member in the engine that wait for unseen ones, oldest first
        self.bytes = 0

    def join(self, rid: str, rule: PruneSettings, max_len: int | None = None) -> str | None:
        """Request ``rid`` (a candidate with ``rule``) arrived; None, or why its pruning is refused.

        Args:
            rid: the engine's request id.
            rule: its prune settings (group, n, index and the rule, equal for all candidates of a group).
            max_len: the engine's own bound on the request's tokens (None: ``rule.max_len``).
        """
        gid = rule.group
        known = self.rules.get(gid)
        if known is not None and known.model_copy(update={"index": rule.index}) != rule:
            return f"l2reason: candidate {rule.index} of prune group {gid!r} has other prune settings than its group"
        if known is not None and rule.index in self.rids[gid]:
            return f"l2reason: prune group {gid!r} has candidate {rule.index} twice"
        self.waiting.pop(gid, None)
        if known is None:
            length = min(rule.max_len, max_len or rule.max_len)
            need = rule.n * (length + 1) * 8
            while self.waiting and self.bytes + need > self.max_bytes:
                self._forget(next(iter(self.waiting)))
            if self.bytes + need > self.max_bytes:
                return (
                    f"l2reason: the engine's pruning state would pass {self.max_bytes / 2**20:.0f} MiB "
                    f"(n={rule.n} x {length} tokens for this request): fewer candidates or tokens, or fewer at once"
                )
            self.groups[gid] = PruneGroup(rule, rule.n, length)
            self.rules[gid], self.rids[gid], self.live[gid] = rule, {}, set()
            self.bytes += need
        self.rids[gid][rule.index] = rid
        self.live[gid].add(rid)
        self.members[rid] = (gid, rule.index)
        return None

    def step(self, records: Mapping[str, Any], ended: Mapping[str, bool]) -> dict[str, int]:
        """One engine step: feed each member's record of this step, then let ``ended`` requests go.

        Args:
            records: request id -> the record of the token this step produced for it.
            ended: request id -> True when it finished on its own with this step's token (EOS, stop token,
                length), False when it left otherwise (aborted, an error; it is never pruned then).

        Returns:
            request id -> tokens it keeps, for every member the rule pruned at this step (possibly one that
            has already left the engine: it ran ahead of its group).
        """
        pruned: dict[str, int] = {}
        for rid, rec in records.items():
            m = self.members.get(rid)
            if m is None:
                continue
            gid, row = m
            value = record_signal(self.rules[gid], rec)
            group = self.groups[gid]
            rows = group.drop(row) if value is None else group.push(row, value, bool(ended.get(rid, False)))
            self._collect(gid, rows, pruned)
        for rid, natural in ended.items():
            m = self.members.pop(rid, None)
            if m is None:
                continue
            gid, row = m
            if not natural or rid not in records:  # left without its last token's record: never pruned
                self._collect(gid, self.groups[gid].drop(row), pruned)
            self.live[gid].discard(rid)
            if not self.live[gid]:
                self._idle(gid)
        return pruned

    def _idle(self, gid: str) -> None:
        """No member of ``gid`` is in the engine: forget it, or (members not seen yet) keep it a while."""
        if len(self.rids[gid]) == self.rules[gid].n:
            self._forget(gid)
            return
        self.waiting[gid] = None
        while len(self.waiting) > MAX_WAITING:
            self._forget(next(iter(self.waiting)))

    def _collect(self, gid: str, rows: Sequence[int], out: dict[str, int]) -> None:
        tracker = self.groups[gid].tracker
        for row in rows:
            rid = self.rids[gid].get(row)
            if rid is not None:
                out[rid] = int(tracker.pruned_step[row])

    def _forget(self, gid: str) -> None:
        """Drop a group (a member that comes later starts a group anew, which never prunes: it waits for rows
        that never come)."""
        self.waiting.pop(gid, None)
        rule = self.rules.pop(gid)
        group = self.groups.pop(gid)
        self.bytes -= rule.n * (group.tracker.cum.shape[1]) * 8
        for rid in self.rids.pop(gid).values():
            self.members.pop(rid, None)
        self.live.pop(gid, None)


def replay(
    rule: Any, signals: Sequence[Any], stopped: Sequence[int | None], max_len: int
) -> tuple[PruneTracker, list[int]]:
    """The client's side: the group's decisions on the signals it received.

    Args:
        rule: the rule (``PruneSpec``-like).
        signals: one ``[T_j]`` signal array per candidate, as received.
        stopped: per candidate, the tokens the engine's mark (``"p"``) says it kept (None: it ended on its own).
        max_len: the most tokens a candidate generates.

    Returns:
        ``(tracker, kept)``: the tracker after every token (its reports are the result's) and the tokens each
        candidate keeps. A candidate the engine stopped but whose received signals do not prune it (the
        signals differ from the engine's, which the tests rule out for this package's plugins) is pruned where
        the engine stopped it, with a warning.
    """
    n = len(signals)
    group = PruneGroup(rule, n, max_len)
    kept = [len(s) if stop is None else min(int(stop), len(s)) for s, stop in zip(signals, stopped, strict=True)]
    for j, sig in enumerate(signals):
        vals = np.asarray(sig, dtype=np.float64)[: kept[j]]
        for t, v in enumerate(vals.tolist()):
            group.push(j, v, stopped[j] is None and t == kept[j] - 1, advance=False)
    group.advance()
    while True:
        stuck = group.stall()
        if not stuck:
            break
        tr = group.tracker
        for r in stuck:
            if stopped[r] is None:  # no tokens at all: never pruned
                group.drop(r)
                continue
            log.warning("l2reason: the engine pruned candidate %d at token %d; the received signals do not", r, kept[r])
            tr.state[r] = PRUNED
            tr.pruned_step[r] = tr.length[r]
        group.advance()
    tr = group.tracker
    return tr, [int(tr.pruned_step[j]) if tr.state[j] == PRUNED else kept[j] for j in range(n)]
