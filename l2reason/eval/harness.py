"""The evaluation harness: sample once, store everything, resume after a crash.

A *run* is a folder:

- ``config.json`` — the :class:`RunConfig`. On resume the stored config must
  agree with the new one on everything that changes the samples (dataset,
  model, N, sampling, seed, system prompt); ``limit``, the method lists and the
  batch size may change (a larger ``limit`` extends the run).
- ``samples.jsonl`` — the *selection pass*: per item, N temperature samples
  with every layer's per-token ℓ2 norms (one reduction per layer per token)
  and the logprob signals the baselines need (self-certainty, DeepConf
  confidence). Every selection method is later scored on these same samples.
- ``gen/<method>.jsonl`` — one *generation pass* per generation-changing
  method (greedy, ALRR, ERSS, ...): one greedy candidate per item, on the same
  items and seeds.

Each line is one finished item (:class:`StoredItem`), appended and
``fsync``-ed as soon as its batch returns, so a killed run loses at most the
batch in flight (``batch_items`` items; 1 with ``--batch-items 1``) and the
next start skips every item already stored. A line that does not parse (a
torn write) is reported with ``logging.warning`` and skipped; the item is then
generated again.

Speed: ``batch_items`` items go to one ``generate_many`` call, so
``N x batch_items`` rows share one forward per decode step
(``benchmarks/eval_batch_size.py`` measures the best value).

Example:
    >>> from l2reason.eval.harness import RunConfig
    >>> RunConfig(dataset="chain_sum", model_id="tiny", num_layers=4, limit=2, n=2).n
    2
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from l2reason.backends.base import (
    GenerationRequest,
    GenerationResult,
    Message,
    NormSpec,
    SamplingParams,
)
from l2reason.errors import ConfigError
from l2reason.eval.datasets import Dataset, Item, load_dataset
from l2reason.eval.methods import MATCHED_RATE_SOURCE, _split, generation_config, parse_method_list

__all__ = [
    "SAMPLES",
    "RunConfig",
    "RunData",
    "StoredItem",
    "item_messages",
    "items_sha256",
    "load_run",
    "read_jsonl",
    "run_eval",
]

logger = logging.getLogger(__name__)

SAMPLES = "samples"
"""The name of the selection pass (N samples per item)."""

DEFAULT_SYSTEM = "You are a careful math tutor. Reason step by step, then give the final answer as 'The answer is N.'"
LOGPROBS_K = 20  # DeepConf (Fu et al. 2025) token confidence: mean of the top-k logprobs, k = 20 in their runs
NORM_DECIMALS = 3  # stored norms are O(10..1000): 3 decimals lose nothing the statistics can see
LOGPROB_DECIMALS = 5

# The fields that decide what the model generates: they must match on resume.
_SAMPLE_KEYS = (
    "dataset",
    "offset",
    "model_id",
    "n",
    "temperature",
    "top_p",
    "max_new_tokens",
    "seed",
    "system_prompt",
    "system_prompt_override",
    "logprobs",
)


class RunConfig(BaseModel):
    """Everything that defines an evaluation run (stored as ``config.json``).

    Args:
        dataset: a :func:`~l2reason.eval.datasets.load_dataset` name
            (``"gsm_symbolic:seed=42"``).
        model: the model spec the CLI loaded (``"default"``).
        model_id: the backend's model id (checked on resume).
        num_layers: the model's decoder layers (for the default band).
        limit: items ``offset .. offset + limit`` of the dataset.
        offset: first item index.
        n: candidates per item in the selection pass (0 = no selection pass).
        temperature: sampling temperature of the selection pass.
        top_p: nucleus mass of the selection pass.
        max_new_tokens: generation limit of every pass.
        seed: base seed; item ``i`` uses ``seed * 1_000_003 + i`` in every pass.
        system_prompt: the system message. Without ``system_prompt_override``
            it is the fallback for items that bring none (an item's own
            ``meta["system"]``, e.g. an evals task's chat prompt, wins);
            ``None``: no system message for those items.
        system_prompt_override: ``system_prompt`` is the system message of
            every item, over the dataset's own (``None``: no system message at
            all). ``l2reason eval --system-prompt TEXT|@FILE|none`` sets it.
            The two fields together record the prompt the run used.
        logprobs: top-k logprobs per token (DeepConf confidence); 0 = none.
        methods: selection methods scored by the report.
        gen_methods: generation-changing methods, one pass each.
        gen_limit: items of each generation pass (the first ``gen_limit`` of
            the run's items; None = all).
        batch_items: items per ``generate_many`` call of the selection pass
            (generation passes, one row per item, take ``batch_items x n``).
        auto_selection: the calibration file's chosen selection (for
            ``l2-auto``), snapshot when the run starts.
        probe: the calibration file's fitted probe (for ``l2-probe`` and
            ``l2-probe-vote``), snapshot when the run starts.
        items_hashed: how many dataset items (from ``offset``) ``items_sha256`` covers.
        items_sha256: content hash of those items (:func:`items_sha256`), recorded on
            start; a resume whose dataset gives other items is refused. ``None`` in
            run folders written before it existed (recorded on their next start).
        created_at: ISO timestamp of the first start.
        env: machine and library versions (for the report).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    dataset: str
    model: str = "default"
    model_id: str
    num_layers: int = Field(ge=1)
    limit: int = Field(100, ge=1)
    offset: int = Field(0, ge=0)
    n: int = Field(8, ge=0)
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(512, ge=1)
    seed: int = 0
    system_prompt: str | None = DEFAULT_SYSTEM
    system_prompt_override: bool = False
    logprobs: int = Field(LOGPROBS_K, ge=0, le=50)
    methods: list[str] = Field(default_factory=lambda: ["all"])
    gen_methods: list[str] = Field(default_factory=lambda: ["greedy"])
    gen_limit: int | None = Field(None, ge=1)
    batch_items: int = Field(2, ge=1)
    auto_selection: dict[str, Any] | None = None
    probe: dict[str, Any] | None = None
    items_hashed: int = Field(0, ge=0)
    items_sha256: str | None = None
    created_at: str = ""
    env: dict[str, Any] = Field(default_factory=dict)

    def item_seed(self, index: int) -> int:
        """The sampling seed of dataset item ``index`` (the same in every pass)."""
        return self.seed * 1_000_003 + index

    def check_resumable(self, old: RunConfig) -> None:
        """Raise :class:`ConfigError` if ``old`` (stored) generated different samples."""
        diff = {k: (getattr(old, k), getattr(self, k)) for k in _SAMPLE_KEYS if getattr(old, k) != getattr(self, k)}
        if diff:
            lines = ", ".join(f"{k}: stored {a!r}, now {b!r}" for k, (a, b) in diff.items())
            hint = ""
            if "model_id" in diff:  # e.g. an engine server restarted with another model behind the same address
                hint = (
                    f" (the model {self.model!r} now runs {self.model_id!r}, not the {old.model_id!r} this run "
                    "was generated with: start it with that model again)"
                )
            raise ConfigError(
                f"the run folder holds a run with other settings ({lines}){hint}; resume with the same "
                "settings, or pass a new --out folder"
            )


class StoredItem(BaseModel):
    """One line of a pass's JSONL: an item and everything generated for it.

    Args:
        item_id: the dataset item id.
        index: the item's index in the dataset.
        question: the question text.
        gold: the normalised gold answer.
        answers: extracted final answer per candidate (None if none).
        correct: per candidate, whether the dataset's scorer accepts it.
        result: the backend's result (norms rounded, token strings and top-k
            logprob lists dropped to keep the file small).
        seconds: this item's share of its batch's wall time.
        pass_name: ``"samples"`` or the generation method.
    """

    model_config = ConfigDict(extra="forbid")
    item_id: str
    index: int
    question: str
    gold: str
    answers: list[str | None]
    correct: list[bool]
    result: GenerationResult
    seconds: float
    pass_name: str


@dataclass
class RunData:
    """A run folder read back: its config and every pass's items in dataset order.

    Args:
        path: the run folder.
        config: the stored :class:`RunConfig`.
        samples: the selection pass's items.
        gens: generation method -> its items.
        skipped: corrupt lines skipped while reading.
    """

    path: Path
    config: RunConfig
    samples: list[StoredItem] = field(default_factory=list)
    gens: dict[str, list[StoredItem]] = field(default_factory=dict)
    skipped: int = 0


def _safe(name: str) -> str:
    """A file-name-safe version of a method name (``alrr:K=2`` -> ``alrr_K=2``)."""
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", name)


def pass_path(run_dir: Path, pass_name: str) -> Path:
    """The JSONL file of a pass."""
    if pass_name == SAMPLES:
        return run_dir / "samples.jsonl"
    return run_dir / "gen" / f"{_safe(pass_name)}.jsonl"


def read_jsonl(path: Path) -> tuple[dict[str, StoredItem], int]:
    """The finished items of one pass file, by item id, and how many lines were skipped.

    A line that is not valid JSON or not a :class:`StoredItem` is reported
    with ``logging.warning`` (file and line number) and skipped; a later line
    for the same item wins.
    """
    out: dict[str, StoredItem] = {}
    skipped = 0
    if not path.is_file():
        return out, 0
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = StoredItem.model_validate_json(line)
            except (ValidationError, ValueError) as e:
                skipped += 1
                first = str(e).splitlines()[0][:160]
                logger.warning(
                    "%s:%d: corrupt results line skipped (%s); that item will be generated again", path, lineno, first
                )
                continue
            out[rec.item_id] = rec
    return out, skipped


def append_line(path: Path, line: str) -> None:
    """Append one line and fsync, so a finished item survives a crash.

    If the file ends without a newline (a torn write), a newline goes first so
    the torn line stays a separate, skippable line.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(line.encode("utf-8") + b"\n")
        f.flush()
        os.fsync(f.fileno())


def _compact(result: GenerationResult) -> GenerationResult:
    """Round norms and logprobs and drop token strings and top-k lists (storage only)."""
    for c in result.candidates:
        c.tokens = None
        if c.norms is not None and c.norms.per_token is not None:
            c.norms.per_token = np.round(np.asarray(c.norms.per_token, dtype=np.float64), NORM_DECIMALS).tolist()
        if c.logprobs is not None:
            lp = c.logprobs
            lp.top_logprobs = None
            lp.logprob = np.round(np.asarray(lp.logprob, dtype=np.float64), LOGPROB_DECIMALS).tolist()
            lp.self_certainty = np.round(np.asarray(lp.self_certainty, dtype=np.float64), LOGPROB_DECIMALS).tolist()
            if lp.confidence is not None:
                lp.confidence = np.round(np.asarray(lp.confidence, dtype=np.float64), LOGPROB_DECIMALS).tolist()
    return result


def item_messages(item: Item, system: str | None, *, override: bool = False) -> list[Message]:
    """The chat messages of ``item``: a system message, then the question.

    The system message is the item's own (``meta["system"]``) if it has one and
    ``override`` is False, else ``system``; none when that is ``None`` or empty.
    """
    sys_text = system if override else item.meta.get("system") or system
    msgs = [Message(role="system", content=sys_text)] if sys_text else []
    return [*msgs, Message(role="user", content=item.question)]


def suppression_events(items: Iterable[StoredItem]) -> tuple[int, int]:
    """``(suppressed (token, layer) events, decode steps x layers)`` over a suppression pass's items."""
    hits = steps = 0
    for rec in items:
        for c in rec.result.candidates:
            sup = (c.interventions or {}).get("suppress")
            if sup:
                hits += int(sum(sup["suppressed_tokens"]))
                steps += int(c.completion_tokens) * len(sup["suppressed_tokens"])
    return hits, steps


def matched_rate(run_dir: str | os.PathLike[str], pass_name: str, source: str) -> dict[str, Any]:
    """The random-suppression rate of ``pass_name``, matched to the ``source`` pass of the run.

    The rate is the source's suppressed (token, layer) events over its decode
    steps times layers, on the items it stored. It is computed once, when the
    matched pass starts, and kept in ``gen/<pass>.rate.json`` so a resumed or
    extended run goes on at the same rate.

    Raises:
        ConfigError: the source pass has stored no items, or reports no suppression.
    """
    run_dir = Path(run_dir)
    path = pass_path(run_dir, pass_name).with_suffix(".rate.json")
    if path.is_file():
        try:
            info = json.loads(path.read_bytes())
            float(info["rate"])
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise ConfigError(
                f"{path} is corrupt ({type(e).__name__}: {e}); delete it to measure the rate again "
                f"from the {source!r} pass"
            ) from e
        return dict(info)
    done, _ = read_jsonl(pass_path(run_dir, source))
    hits, steps = suppression_events(done.values())
    if not steps:
        raise ConfigError(
            f"{pass_name!r} matches its random rate to the {source!r} pass, which has stored no suppression "
            f"in {run_dir}; list {source!r} before it in --gen-methods"
        )
    info = {"rate": hits / steps, "source": source, "items": len(done), "events": hits, "token_layers": steps}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2), encoding="utf-8")
    return info


def item_request(
    cfg: RunConfig, item: Item, index: int, pass_name: str, overrides: dict[str, Any] | None = None
) -> GenerationRequest:
    """The request a run makes for one item in one pass (``SAMPLES`` or a generation method's name).

    The selection pass samples ``cfg.n`` candidates with the run's temperature, top-p and per-item seed
    (``cfg.item_seed(index)``); a generation pass decodes one greedy candidate with the method's
    interventions (``overrides`` replaces their fields). Both ask for every layer's per-token norms and
    the run's top-``k`` logprobs. Benchmarks use it to send exactly what ``l2reason eval`` sends.
    """
    if pass_name == SAMPLES:
        sampling = SamplingParams(
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_new_tokens=cfg.max_new_tokens,
            seed=cfg.item_seed(index),
        )
        return GenerationRequest.build(
            messages=item_messages(item, cfg.system_prompt, override=cfg.system_prompt_override),
            sampling=sampling,
            n=cfg.n,
            norms=NormSpec(layers="all", per_token=True),
            logprobs=cfg.logprobs or None,
            request_id=item.id,
        )
    gen = generation_config(pass_name)
    return GenerationRequest.build(
        messages=item_messages(item, cfg.system_prompt, override=cfg.system_prompt_override),
        sampling=SamplingParams(temperature=0.0, max_new_tokens=cfg.max_new_tokens, seed=cfg.item_seed(index)),
        n=1,
        norms=NormSpec(layers="all", per_token=True),
        logprobs=cfg.logprobs or None,
        interventions=[{**iv, **(overrides or {})} for iv in gen.interventions],
        request_id=item.id,
    )


def stored_item(
    item: Item, index: int, res: GenerationResult, ds: Dataset, seconds: float, pass_name: str
) -> StoredItem:
    """One result as a run stores it: each candidate's extracted answer and score against the gold answer, the
    compacted result and the seconds it took (write it with :func:`append_line` to the pass's file)."""
    from l2reason.eval.answers import extract_answer

    answers = [extract_answer(c.text) for c in res.candidates]
    correct = [bool(ds.score(c.text, item)) for c in res.candidates]
    return StoredItem(
        item_id=item.id,
        index=index,
        question=item.question,
        gold=item.answer,
        answers=answers,
        correct=correct,
        result=_compact(res),
        seconds=seconds,
        pass_name=pass_name,
    )


def _check_capabilities(backend: Any, gen_methods: Sequence[str]) -> None:
    """Fail before any work if the backend cannot run a generation method."""
    have = set(getattr(getattr(backend, "capabilities", None), "interventions", frozenset()) or ())
    missing: dict[str, list[str]] = {}
    for name in gen_methods:
        for iv in generation_config(name).interventions:
            if iv["kind"] not in have:
                missing.setdefault(name, []).append(iv["kind"])
    if missing:
        from l2reason.errors import CapabilityError

        raise CapabilityError(
            f"this backend cannot run {', '.join(missing)} (needs interventions "
            f"{sorted({k for v in missing.values() for k in v})}; it has {sorted(have) or 'none'}); "
            "drop them from --gen-methods"
        )


def items_sha256(items: Sequence[Item]) -> str:
    """Content hash of dataset items: what the model is shown and scored against.

    Covers each item's id, question, gold answer and system prompt (an item's
    ``meta["system"]``), in order; other metadata (line numbers, raw golds) is
    not part of it.
    """
    h = hashlib.sha256()
    for it in items:
        rec = [it.id, it.question, it.answer, it.meta.get("system")]
        h.update(json.dumps(rec, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8") + b"\n")
    return h.hexdigest()


def _describe_change(run_dir: Path, now: Sequence[Item]) -> str:
    """The first stored item that differs from the dataset's items now ("" if none is found)."""
    by_id = {it.id: it for it in now}
    gen_dir = run_dir / "gen"
    files = [pass_path(run_dir, SAMPLES), *(sorted(gen_dir.glob("*.jsonl")) if gen_dir.is_dir() else [])]
    for f in files:
        done, _ = read_jsonl(f)
        for rec in sorted(done.values(), key=lambda r: r.index):
            it = by_id.get(rec.item_id)
            if it is None:
                return f"stored item {rec.item_id!r} is no longer among its items"
            for what, x, y in (("question", rec.question, it.question), ("gold answer", rec.gold, it.answer)):
                if x != y:
                    return f"item {rec.item_id!r} has another {what} (stored {x[:60]!r}, now {y[:60]!r})"
    return ""


def _stale(run_dir: Path, cfg: RunConfig, what: str) -> ConfigError:
    return ConfigError(
        f"the dataset {cfg.dataset!r} changed since the run in {run_dir} started: {what}. Its stored results "
        f"belong to the old items and would be mixed with new ones. Pass a new --out folder to evaluate the "
        f"data as it is now, delete {run_dir} to start this run over, or restore the old data to resume."
    )


def _check_stored_items(
    run_dir: Path, cfg: RunConfig, wanted: Sequence[tuple[int, Item]], done: dict[str, StoredItem]
) -> None:
    """Refuse to resume if a stored item's question or gold differs from the dataset's item of that id."""
    for _, it in wanted:
        rec = done.get(it.id)
        if rec is None:
            continue
        for what, x, y in (("question", rec.question, it.question), ("gold answer", rec.gold, it.answer)):
            if x != y:
                raise _stale(run_dir, cfg, f"item {it.id!r} has another {what} (stored {x[:60]!r}, now {y[:60]!r})")


def open_run(run_dir: Path, cfg: RunConfig, ds: Dataset, items: Sequence[Item]) -> RunConfig:
    """Write ``config.json`` for a new run, or check it against the stored one and update it.

    The stored ``items_sha256`` must match the hash of the same number of
    items taken from the dataset now; the record is extended when ``limit``
    grows.
    """
    path = run_dir / "config.json"
    fingerprint = {"items_hashed": len(items), "items_sha256": items_sha256(items)}
    if path.is_file():
        try:
            old = RunConfig.model_validate_json(path.read_bytes())
        except (ValidationError, ValueError) as e:
            raise ConfigError(f"{path} is not a valid run config ({e}); pass a new --out folder") from e
        cfg.check_resumable(old)
        if old.items_sha256 is not None:
            n_old = old.items_hashed
            now = items if n_old == len(items) else ds.items(n_old, cfg.offset)
            if len(now) < n_old:
                raise _stale(run_dir, cfg, f"it gave {n_old} items from offset {cfg.offset}, it now gives {len(now)}")
            digest = items_sha256(now)
            if digest != old.items_sha256:
                what = (
                    f"the content hash of its {n_old} items from offset {cfg.offset} differs "
                    f"(stored sha256 {old.items_sha256[:12]}…, now {digest[:12]}…)"
                )
                detail = _describe_change(run_dir, now)
                raise _stale(run_dir, cfg, f"{what}; {detail}" if detail else what)
            if n_old > len(items):  # a smaller limit: keep the record of every item stored
                fingerprint = {"items_hashed": n_old, "items_sha256": old.items_sha256}
        else:
            logger.info("%s: recording the dataset's content hash (run folder from an older l2reason)", run_dir)
        cfg = cfg.model_copy(update={"created_at": old.created_at, **fingerprint})
    else:
        cfg = cfg.model_copy(update={"created_at": datetime.now(UTC).isoformat(timespec="seconds"), **fingerprint})
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(cfg.model_dump_json(indent=2), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise ConfigError(
            f"cannot write the run folder {run_dir}: {e.strerror or e}; pass a writable --out folder"
        ) from e
    return cfg


def _check_against_backend(backend: Any, cfg: RunConfig, first: tuple[int, Item], names: Sequence[str]) -> None:
    """Every pass's request, checked against the loaded model before any pass runs (a generation method whose
    layers the model does not have fails now, not after the sampling pass)."""
    limits = getattr(backend, "limits", None)
    if not callable(limits):
        return
    from l2reason.backends.validate import validate_request

    index, item = first
    for name in names:
        try:
            validate_request(item_request(cfg, item, index, name), limits())
        except ConfigError as e:
            what = "the sampling pass" if name == SAMPLES else f"generation method {name!r}"
            raise type(e)(f"{what}: {e}") from e


def _hashed_items(ds: Dataset, cfg: RunConfig, items: Sequence[Item]) -> Sequence[Item]:
    """The dataset items a run folder may hold results for: the run's, and those of a larger earlier limit."""
    return items if cfg.items_hashed <= len(items) else ds.items(cfg.items_hashed, cfg.offset)


def _check_foreign_lines(
    path: Path, cfg: RunConfig, name: str, done: dict[str, StoredItem], known: dict[str, int]
) -> None:
    """Refuse to resume a pass file that holds a result this run did not write: an item the dataset does not
    have (from offset), at another index, of another pass, or with another number of candidates."""
    n = cfg.n if name == SAMPLES else 1
    for rec in done.values():
        problem = ""
        if rec.item_id not in known:
            problem = (
                f"a result for item {rec.item_id!r}, which is not among the run's {len(known)} items of "
                f"{cfg.dataset!r} from offset {cfg.offset}"
            )
        elif rec.index != known[rec.item_id]:
            problem = f"item {rec.item_id!r} at index {rec.index}; the dataset has it at {known[rec.item_id]}"
        elif rec.pass_name != name:
            problem = f"a result of the pass {rec.pass_name!r} for item {rec.item_id!r}"
        elif len(rec.result.candidates) != n or len(rec.correct) != n:
            problem = f"{len(rec.result.candidates)} candidates for item {rec.item_id!r}; this pass makes {n}"
        if problem:
            raise ConfigError(
                f"{path} holds {problem}: it was not written by this run (a line copied from another run?). "
                f"Remove that line to resume, or pass a new --out folder"
            )


def _check_run_dir(run_dir: Path) -> None:
    """The run folder must be a folder (or not exist yet)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(
            f"{run_dir} is a file, not a run folder; pass a folder path for --out (it is created if missing)"
        )


@dataclass
class _Pass:
    name: str
    todo: list[tuple[int, Item]]
    done: int
    total: int


ProgressHook = Callable[[str, int, int, float], None]
"""``hook(pass_name, items_just_finished, tokens_generated, seconds)``."""


def run_eval(
    backend: Any,
    cfg: RunConfig,
    run_dir: str | os.PathLike[str],
    *,
    dataset: Dataset | None = None,
    show_progress: bool = True,
    on_batch: ProgressHook | None = None,
) -> RunData:
    """Run (or resume) an evaluation: the selection pass, then each generation pass.

    Args:
        backend: an l2reason backend (``generate_many``, ``model_id``).
        cfg: the run's settings; ``cfg.methods``/``gen_methods`` may hold
            ``"all"``/``"default"``/``"none"`` and are expanded and checked.
        run_dir: the run folder (created; resumed if it holds a run).
        dataset: the dataset object (default: ``load_dataset(cfg.dataset)``).
        show_progress: draw a rich progress bar (items, tokens/s, ETA) on stderr.
        on_batch: called after each stored batch.

    Returns:
        The run read back (:func:`load_run`).

    Raises:
        ConfigError: unknown methods or dataset (listing valid names), a
            pass's request the loaded model refuses (layers it does not have,
            a context it cannot hold), a run folder with other generation
            settings, or a pass file with a line this run did not write (an
            item the dataset does not have, another index, pass or N): all
            before any generation.
        CapabilityError: the backend lacks an intervention a method needs.
    """
    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    cfg, rate_source = _checked_methods(backend, cfg)
    ds = dataset if dataset is not None else load_dataset(cfg.dataset)
    if backend.model_id != cfg.model_id:
        raise ConfigError(f"config is for model {cfg.model_id!r} but the backend runs {backend.model_id!r}")
    items = ds.items(cfg.limit, cfg.offset)
    if not items:
        raise ConfigError(f"dataset {cfg.dataset!r} has no items at offset {cfg.offset}")
    indexed = [(cfg.offset + i, it) for i, it in enumerate(items)]
    names = ([SAMPLES] if cfg.n > 0 else []) + list(cfg.gen_methods)
    _check_against_backend(backend, cfg, indexed[0], names)
    cfg = open_run(run_dir, cfg, ds, items)
    passes = _plan_passes(run_dir, cfg, ds, items, indexed, names)

    with _progress(show_progress, passes) as advance:
        for p in passes:
            overrides = None
            if p.name in rate_source and p.todo:
                overrides = {"rate": matched_rate(run_dir, p.name, rate_source[p.name])["rate"]}
            _run_pass(backend, cfg, ds, run_dir, p, overrides, advance, on_batch)
    return load_run(run_dir)


def _checked_methods(backend: Any, cfg: RunConfig) -> tuple[RunConfig, dict[str, str]]:
    """``cfg`` with its method lists expanded and checked, and each matched pass's source pass.

    Raises:
        ConfigError: an unknown method or option, or a matched pass listed before the pass it matches.
        CapabilityError: the backend lacks an intervention a generation method needs.
    """
    cfg = cfg.model_copy(
        update={
            "methods": parse_method_list(cfg.methods, "selection"),
            "gen_methods": parse_method_list(cfg.gen_methods, "generation"),
        }
    )
    for g in cfg.gen_methods:
        generation_config(g)  # unknown option names fail here, before the model runs
    _check_capabilities(backend, cfg.gen_methods)
    rate_source: dict[str, str] = {}  # matched pass -> the (latest earlier) pass it matches
    for pos, g in enumerate(cfg.gen_methods):
        base = MATCHED_RATE_SOURCE.get(_split(g)[0])
        if base is None:
            continue
        earlier = [x for x in cfg.gen_methods[:pos] if _split(x)[0] == base]
        if not earlier:
            raise ConfigError(f"{g!r} matches its random rate to the {base!r} pass: list {base!r} before it")
        rate_source[g] = earlier[-1]
    return cfg, rate_source


def _plan_passes(
    run_dir: Path,
    cfg: RunConfig,
    ds: Dataset,
    items: Sequence[Item],
    indexed: list[tuple[int, Item]],
    names: list[str],
) -> list[_Pass]:
    """Each pass's ``(index, item)`` pairs still to generate, after checking what its file already holds.

    Raises:
        ConfigError: a pass file with a line this run did not write, or items stored with other settings.
    """
    stored_ids = {it.id: cfg.offset + i for i, it in enumerate(_hashed_items(ds, cfg, items))}
    passes: list[_Pass] = []
    for name in names:
        wanted = indexed if name == SAMPLES else indexed[: cfg.gen_limit or len(indexed)]
        done, _ = read_jsonl(pass_path(run_dir, name))
        _check_foreign_lines(pass_path(run_dir, name), cfg, name, done, stored_ids)
        _check_stored_items(run_dir, cfg, wanted, done)
        todo = [(i, it) for i, it in wanted if it.id not in done]
        passes.append(_Pass(name, todo, len(wanted) - len(todo), len(wanted)))
        if len(todo) < len(wanted):
            logger.info("%s: resuming, %d of %d items already stored", name, len(wanted) - len(todo), len(wanted))
    return passes


def _run_pass(
    backend: Any,
    cfg: RunConfig,
    ds: Dataset,
    run_dir: Path,
    p: _Pass,
    overrides: dict[str, Any] | None,
    advance: ProgressHook,
    on_batch: ProgressHook | None,
) -> None:
    """Generate pass ``p``'s items still to do, in batches; each batch's lines are appended as it finishes."""
    path = pass_path(run_dir, p.name)
    # Generation passes have one row per item: batch N x as many items, same rows per forward.
    k = cfg.batch_items if p.name == SAMPLES else cfg.batch_items * max(cfg.n, 1)
    for start in range(0, len(p.todo), k):
        batch = p.todo[start : start + k]
        reqs = [item_request(cfg, it, i, p.name, overrides) for i, it in batch]
        t0 = time.perf_counter()
        results = backend.generate_many(reqs)
        secs = time.perf_counter() - t0
        tokens = 0
        for (i, it), res in zip(batch, results, strict=True):
            rec = stored_item(it, i, res, ds, secs / len(batch), p.name)
            append_line(path, rec.model_dump_json())
            tokens += res.completion_tokens
        advance(p.name, len(batch), tokens, secs)
        if on_batch is not None:
            on_batch(p.name, len(batch), tokens, secs)


@contextmanager
def _progress(show: bool, passes: list[_Pass]) -> Iterator[Callable[[str, int, int, float], None]]:
    """A rich progress bar per pass: items, tokens/s of the last batches, ETA."""
    if not show:
        yield lambda *a: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    prog = Progress(
        TextColumn("[bold]{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("items"),
        TextColumn("{task.fields[tps]:>7} tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    tasks = {p.name: prog.add_task(p.name, total=p.total, completed=p.done, tps="-") for p in passes}
    by_name = {p.name: p for p in passes}
    # tokens, seconds and items of this invocation (resumed items are in `_Pass.done`)
    totals: dict[str, list[float]] = {p.name: [0.0, 0.0, 0.0] for p in passes}
    # Without a terminal (nohup, CI logs) the bar is not drawn: write one plain line per batch instead.
    plain = not prog.console.is_terminal

    def advance(name: str, k: int, tokens: int, secs: float) -> None:
        tot, p = totals[name], by_name[name]
        tot[0] += tokens
        tot[1] += secs
        tot[2] += k
        tps = tot[0] / max(tot[1], 1e-9)
        prog.update(tasks[name], advance=k, tps=f"{tps:.1f}")
        if plain:
            done = p.done + int(tot[2])
            eta = tot[1] / tot[2] * (p.total - done)
            prog.console.print(
                f"{time.strftime('%H:%M:%S')} {name}: {done}/{p.total} items, "
                f"{int(tot[0])} tokens in {tot[1]:.0f}s ({tps:.1f} tok/s), ETA {eta / 60:.0f} min",
                highlight=False,
            )

    with prog:
        yield advance


def load_run(run_dir: str | os.PathLike[str]) -> RunData:
    """Read a run folder back (corrupt lines are reported and skipped).

    Raises:
        ConfigError: no ``config.json`` in the folder.
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not an evaluation run (no config.json); run `l2reason eval --out {run_dir}`")
    try:
        cfg = RunConfig.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError) as e:
        first = str(e).splitlines()[0][:200]
        raise ConfigError(f"{path} is not a valid run config ({first}); it was not written by `l2reason eval`") from e
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from e
    data = RunData(run_dir, cfg)
    recs, data.skipped = read_jsonl(pass_path(run_dir, SAMPLES))
    data.samples = sorted(recs.values(), key=lambda r: r.index)
    gen_dir = run_dir / "gen"
    known = {_safe(g): g for g in cfg.gen_methods}
    if gen_dir.is_dir():
        for f in sorted(gen_dir.glob("*.jsonl")):
            recs, skipped = read_jsonl(f)
            data.skipped += skipped
            name = known.get(f.stem, f.stem)
            data.gens[name] = sorted(recs.values(), key=lambda r: r.index)
    return data


def stored_json(obj: Any) -> str:
    """JSON of plain data with NaN/inf as null (for the report's machine-readable output)."""

    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, (float, np.floating)):
            return float(x) if np.isfinite(x) else None
        if isinstance(x, np.integer):
            return int(x)
        return x

    return json.dumps(clean(obj), indent=2)
