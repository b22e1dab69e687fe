"""Online pruning replayed on a stored evaluation run: tokens saved and survivors' vote accuracy.

Candidate ``j`` of an item depends only on ``(seed, j)`` and the backend keeps
rows independent, so a row that online pruning stops after ``L`` tokens has
generated exactly the first ``L`` tokens of its stored sample. Replaying the
rule (:func:`l2reason.techniques.pruning.simulate`, the same decisions the
backend's tracker makes) on a run folder's ``samples.jsonl`` therefore tells,
without generating again, which candidates a :class:`~l2reason.backends.base.PruneSpec`
prunes, at which step, how many tokens that saves, and what the survivors'
majority vote (the request's selection uses survivors only) gets right.

Stored signals are rounded (norms to 3 decimals, confidences to 5), so a
threshold that falls within rounding of a row's score can decide differently
online; everything else is exact.

Example:
    >>> from l2reason.backends.base import PruneSpec
    >>> spec = PruneSpec(score="confidence", threshold=2.0, warmup=64)
    >>> # run = load_run("RUN"); out = simulate_run(run.samples, spec, num_layers=run.config.num_layers)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from l2reason.backends.base import GenerationRequest, PruneSpec
from l2reason.errors import ConfigError
from l2reason.eval.harness import StoredItem
from l2reason.signal.band import resolve_layers
from l2reason.techniques.baselines import select_majority
from l2reason.techniques.pruning import PruneOutcome, running_scores, simulate, token_signal
from l2reason.techniques.selection import CandidateSignals

__all__ = [
    "ItemPruning",
    "RunPruning",
    "check_batch",
    "item_signals",
    "majority_at_k",
    "online_check",
    "pooled_median_tau",
    "simulate_item",
    "simulate_run",
    "survivor_majority",
]


def item_signals(rec: StoredItem, spec: PruneSpec, num_layers: int, tau: Any = None) -> list[np.ndarray]:
    """Each stored candidate's per-token pruning signal (``[T_j]`` float64).

    Args:
        rec: a stored item of the selection pass.
        spec: the pruning rule (its ``score``, ``layers``, ``l2_stat``, ``direction``).
        num_layers: the model's depth (for ``layers="band"``).
        tau: per-layer thresholds for ``l2_stat="exceedance"`` (default: ``spec.tau``).

    Raises:
        ConfigError: the run did not store what the score needs.
    """
    out: list[np.ndarray] = []
    layers = resolve_layers(spec.layers, num_layers) if spec.score == "l2" else []
    if tau is None and isinstance(spec.tau, list):
        tau = np.asarray(spec.tau, dtype=np.float64)
    for j, c in enumerate(rec.result.candidates):
        lp = c.logprobs
        norms = None
        if spec.score == "l2":
            if c.norms is None or c.norms.per_token is None:
                raise ConfigError(f"item {rec.item_id} candidate {j} has no stored per-token norms")
            missing = [layer for layer in layers if layer not in c.norms.layers]
            if missing:
                raise ConfigError(f"the run stored layers {c.norms.layers}, not {missing}")
            norms = c.norms.array()[:, [c.norms.layers.index(layer) for layer in layers]]
        elif lp is None:
            raise ConfigError(f"item {rec.item_id} candidate {j} has no stored logprobs; {spec.score} needs them")
        out.append(
            token_signal(
                spec,
                confidence=None if lp is None else lp.confidence,
                self_certainty=None if lp is None else lp.self_certainty,
                norms=norms,
                tau=tau,
            )
        )
    return out


def pooled_median_tau(items: Sequence[StoredItem], layers: Sequence[int]) -> np.ndarray:
    """Per layer, the median stored norm over every candidate token of ``items`` (uses no labels)."""
    cols: list[list[np.ndarray]] = [[] for _ in layers]
    for rec in items:
        for c in rec.result.candidates:
            if c.norms is None or c.norms.per_token is None:
                continue
            arr = c.norms.array()
            for k, layer in enumerate(layers):
                cols[k].append(arr[:, c.norms.layers.index(layer)])
    return np.array([float(np.median(np.concatenate(v))) if v else np.nan for v in cols])


def survivor_majority(rec: StoredItem, keep: np.ndarray) -> tuple[bool, int]:
    """``(correct, index)`` of the majority vote over the surviving candidates (the backend's ``majority``)."""
    idx = [j for j in range(len(rec.answers)) if keep[j]] or list(range(len(rec.answers)))
    cands = [CandidateSignals("", rec.answers[j], 0, True, np.zeros((0, 0))) for j in idx]
    chosen = idx[select_majority(cands).index]
    return bool(rec.correct[chosen]), chosen


@dataclass
class ItemPruning:
    """One item under a pruning rule.

    Args:
        item_id: the item.
        outcome: the rule's decisions (pruned step per candidate, tokens, threshold).
        full_tokens: each candidate's stored length (no pruning).
        correct: the survivors' majority vote is right.
        base_correct: the majority vote of all candidates is right.
    """

    item_id: str
    outcome: PruneOutcome
    full_tokens: np.ndarray
    correct: bool
    base_correct: bool

    @property
    def tokens(self) -> int:
        return int(self.outcome.tokens.sum())


@dataclass
class RunPruning:
    """A pruning rule replayed on a run's items (:func:`simulate_run`)."""

    spec: PruneSpec
    items: list[ItemPruning] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return float(np.mean([it.correct for it in self.items]))

    @property
    def base_accuracy(self) -> float:
        return float(np.mean([it.base_correct for it in self.items]))

    @property
    def tokens_per_item(self) -> float:
        return float(np.mean([it.tokens for it in self.items]))

    @property
    def base_tokens_per_item(self) -> float:
        return float(np.mean([it.full_tokens.sum() for it in self.items]))

    @property
    def saved(self) -> float:
        """Fraction of generated tokens saved."""
        base = sum(int(it.full_tokens.sum()) for it in self.items)
        return 1.0 - sum(it.tokens for it in self.items) / max(base, 1)

    @property
    def pruned_frac(self) -> float:
        """Fraction of candidates pruned."""
        return float(np.mean([(~it.outcome.survivors).mean() for it in self.items]))

    def summary(self) -> dict[str, Any]:
        return {
            "spec": self.spec.model_dump(),
            "items": len(self.items),
            "accuracy": self.accuracy,
            "base_accuracy": self.base_accuracy,
            "tokens_per_item": self.tokens_per_item,
            "base_tokens_per_item": self.base_tokens_per_item,
            "saved": self.saved,
            "pruned_frac": self.pruned_frac,
        }


def simulate_item(
    rec: StoredItem,
    spec: PruneSpec,
    *,
    num_layers: int,
    signals: Sequence[np.ndarray] | None = None,
    precomputed: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    tau: Any = None,
) -> ItemPruning:
    """Replay ``spec`` on one stored item (``signals``/``precomputed`` skip recomputing the running scores)."""
    if precomputed is None:
        sig = signals if signals is not None else item_signals(rec, spec, num_layers, tau)
        precomputed = [running_scores(s, spec.window, spec.warmup) for s in sig]
    full = np.array([c.completion_tokens for c in rec.result.candidates], dtype=np.int64)
    lens = np.array([len(r) for r, _ in precomputed], dtype=np.int64)
    if not np.array_equal(lens, full):
        raise ConfigError(f"item {rec.item_id}: stored signals have {lens.tolist()} tokens, candidates {full.tolist()}")
    out = simulate(spec, [r for r, _ in precomputed], precomputed=precomputed)
    correct, _ = survivor_majority(rec, out.survivors)
    base, _ = survivor_majority(rec, np.ones(len(full), dtype=bool))
    return ItemPruning(rec.item_id, out, full, correct, base)


def simulate_run(
    items: Sequence[StoredItem],
    spec: PruneSpec,
    *,
    num_layers: int,
    precomputed: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]] | None = None,
    tau: Any = None,
) -> RunPruning:
    """Replay ``spec`` on every item (``precomputed[i]``: item ``i``'s running scores for the spec's window and warm-up)."""
    run = RunPruning(spec)
    for i, rec in enumerate(items):
        pre = None if precomputed is None else precomputed[i]
        run.items.append(simulate_item(rec, spec, num_layers=num_layers, precomputed=pre, tau=tau))
    return run


def majority_at_k(rec: StoredItem, k: int) -> tuple[float, float]:
    """The score-free control: majority vote over ``k`` of the stored candidates, none of the others generated.

    Returns ``(accuracy, tokens)`` averaged over every ``k``-subset of the
    item's candidates (the majority rule breaks ties by candidate order).
    """
    from itertools import combinations

    n = len(rec.answers)
    if not 1 <= k <= n:
        raise ConfigError(f"k must be in 1..{n} (got {k})")
    full = np.array([c.completion_tokens for c in rec.result.candidates], dtype=np.float64)
    hits = []
    for sub in combinations(range(n), k):
        keep = np.zeros(n, dtype=bool)
        keep[list(sub)] = True
        hits.append(survivor_majority(rec, keep)[0])
    return float(np.mean(hits)), float(full.sum() * k / n)


def online_check(
    backend: Any,
    run: Any,
    spec: PruneSpec,
    *,
    limit: int | None = None,
    dataset: Any = None,
    batch_items: int | None = None,
) -> dict[str, Any]:
    """Generate a run's first items again *with* online pruning and compare with the replay.

    Each item gets exactly the request the run's selection pass made (same
    messages, sampling and seed), plus ``prune=spec``, in batches of the run's
    ``batch_items`` items as the run had them. Per candidate it compares the
    online token count and pruned step with :func:`simulate_item` on the stored
    sample, and whether the online text is the stored text (a survivor) or a
    prefix of it (a pruned row).

    Args:
        backend: the backend that sampled the run (same model).
        run: a :class:`~l2reason.eval.harness.RunData` (:func:`~l2reason.eval.harness.load_run`).
        spec: the pruning rule.
        limit: the first ``limit`` stored items (all by default).
        dataset: the run's dataset object (default: loaded from its config).
        batch_items: items per call (default: the run's).

    Returns:
        A JSON-safe dict: totals (``candidates``, ``same_tokens``, ``same_pruned``,
        ``prefix_ok``, ``items``, ``same_vote``, online and replayed tokens, seconds) and one row per item.
    """
    import time

    from l2reason.eval.datasets import load_dataset
    from l2reason.eval.harness import SAMPLES, item_request

    cfg = run.config
    recs = list(run.samples[: limit or len(run.samples)])
    if not recs:
        raise ConfigError("the run has no stored samples to check")
    ds = dataset if dataset is not None else load_dataset(cfg.dataset)
    by_index = {cfg.offset + i: it for i, it in enumerate(ds.items(cfg.limit, cfg.offset))}
    k = batch_items or cfg.batch_items
    rows: list[dict[str, Any]] = []
    tot = {"candidates": 0, "same_tokens": 0, "same_pruned": 0, "prefix_ok": 0, "items": 0, "same_vote": 0}
    tot |= {"online_tokens": 0, "replay_tokens": 0}
    seconds = 0.0
    for start in range(0, len(recs), k):
        batch = recs[start : start + k]
        reqs = []
        for rec in batch:
            base = item_request(cfg, by_index[rec.index], rec.index, SAMPLES)
            reqs.append(GenerationRequest.model_validate({**base.model_dump(), "prune": spec.model_dump()}))
        t0 = time.perf_counter()
        results = backend.generate_many(reqs)
        seconds += time.perf_counter() - t0
        batch_rows, counts = check_batch(batch, results, spec, cfg.num_layers)
        rows += batch_rows
        for key, v in counts.items():
            tot[key] += v
    return {
        "spec": spec.model_dump(),
        **tot,
        "stored_tokens": int(sum(c.completion_tokens for r in recs for c in r.result.candidates)),
        "seconds": seconds,
        "stored_seconds": float(sum(r.seconds for r in recs)),
        "rows": rows,
    }


def check_batch(
    stored: Sequence[StoredItem], results: Sequence[Any], spec: PruneSpec, num_layers: int
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Compare pruned results, item by item, with the replay of ``spec`` on the same items' stored samples.

    ``results[i]`` is what a backend returned for ``stored[i]``'s request with ``prune=spec``. Returns one row
    per item (online vs replayed token counts and pruned steps, the two votes, whether each online text is the
    stored text or, pruned, a prefix of it) and the totals :func:`online_check` reports (``candidates``,
    ``same_tokens``, ``same_pruned``, ``prefix_ok``, ``items``, ``same_vote``, ``online_tokens``,
    ``replay_tokens``).
    """
    if len(stored) != len(results):
        raise ConfigError(f"{len(results)} results for {len(stored)} stored items")
    rows: list[dict[str, Any]] = []
    tot: Counter[str] = Counter()
    for rec, res in zip(stored, results, strict=True):
        row, counts = _online_vs_replay(rec, res, spec, num_layers)
        rows.append(row)
        tot.update(counts)
    return rows, tot


def _online_vs_replay(
    rec: StoredItem, res: Any, spec: PruneSpec, num_layers: int
) -> tuple[dict[str, Any], dict[str, int]]:
    """One item of :func:`online_check`: its row (online vs replayed tokens, pruned steps, thresholds, votes,
    whether each online text is the stored one or a prefix of it) and its counts toward the totals."""
    from l2reason.select import select_result

    sim = simulate_item(rec, spec, num_layers=num_layers)
    on_tok = [c.completion_tokens for c in res.candidates]
    on_step = [c.prune["step"] if c.prune and c.prune["pruned"] else -1 for c in res.candidates]
    prefix = [
        (c.text == s.text) if c.finish_reason != "pruned" else s.text.startswith(c.text)
        for c, s in zip(res.candidates, rec.result.candidates, strict=True)
    ]
    online_vote = select_result(res, "majority").answer
    _, chosen = survivor_majority(rec, sim.outcome.survivors)
    replay_vote = rec.answers[chosen]
    counts = {
        "candidates": len(on_tok),
        "same_tokens": sum(a == b for a, b in zip(on_tok, sim.outcome.tokens.tolist(), strict=True)),
        "same_pruned": sum(a == b for a, b in zip(on_step, sim.outcome.pruned_step.tolist(), strict=True)),
        "prefix_ok": sum(prefix),
        "items": 1,
        "same_vote": int(online_vote == replay_vote),
        "online_tokens": sum(on_tok),
        "replay_tokens": int(sim.outcome.tokens.sum()),
    }
    row = {
        "item_id": rec.item_id,
        "online_tokens": on_tok,
        "replay_tokens": sim.outcome.tokens.tolist(),
        "online_pruned_step": on_step,
        "replay_pruned_step": sim.outcome.pruned_step.tolist(),
        "online_threshold": (res.prune or {}).get("threshold"),
        "replay_threshold": sim.outcome.threshold,
        "prefix_ok": prefix,
        "online_vote": online_vote,
        "replay_vote": replay_vote,
    }
    return row, counts
