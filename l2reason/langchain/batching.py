"""Batches in one backend call: results generated ahead, handed to LangChain's per-input runs.

``batch``/``abatch`` (and ``generate``/``agenerate`` with several prompts)
build every input's request, send them to the backend in one
``generate_many`` call (one per ``max_concurrency`` inputs when that is set;
the transformers backend runs requests with the same norm/intervention
settings in one batch), and put the results in a :class:`Prefetched` store.
LangChain then runs each input as usual (callbacks, configs and
``return_exceptions`` per input); each run takes its result from the store
instead of calling the backend, or calls it itself when nothing was fetched
(an input whose request failed to build, or a failed batch call: that input's
own run raises its own error).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from langchain_core.runnables.config import get_config_list

from l2reason.backends.base import GenerationRequest, GenerationResult
from l2reason.errors import PartialResultsError

Key = tuple[int, str]


class Prefetched:
    """Results of one ``generate_many`` call waiting for the per-input runs of a batch (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[Key, list[GenerationResult]] = {}

    def put(self, key: Key, result: GenerationResult) -> None:
        with self._lock:
            self._results.setdefault(key, []).append(result)

    def take(self, key: Key) -> GenerationResult | None:
        with self._lock:
            got = self._results.get(key)
            return got.pop(0) if got else None


# LangChain runs a batch's inputs in threads (``ContextThreadPoolExecutor``) or
# tasks, which copy the context: results fetched before reach them this way.
_PREFETCH: ContextVar[Prefetched | None] = ContextVar("l2reason_langchain_prefetch", default=None)


def request_key(backend: Any, req: GenerationRequest) -> Key:
    """What identifies a prefetched result: the backend object and the whole request."""
    return id(backend), req.model_dump_json()


def take_prefetched(backend: Any, req: GenerationRequest) -> GenerationResult | None:
    """The result generated ahead for ``req`` in the current batch, if any (taken: each is used once)."""
    store = _PREFETCH.get()
    return store.take(request_key(backend, req)) if store is not None else None


@contextlib.contextmanager
def prefetched(backend: Any, reqs: list[Any], results: list[Any]) -> Iterator[None]:
    """Within the block, the per-input runs find ``results`` (None entries skipped) for ``reqs``."""
    store = _PREFETCH.get() or Prefetched()
    for req, res in zip(reqs, results, strict=True):
        if req is not None and res is not None:
            store.put(request_key(backend, req), res)
    token = _PREFETCH.set(store)
    try:
        yield
    finally:
        _PREFETCH.reset(token)


def generate_many(backend: Any, reqs: list[Any]) -> list[Any]:
    """One ``generate_many`` call for the requests that built; None for the rest and for failures."""
    idx = [i for i, r in enumerate(reqs) if r is not None]
    out: list[Any] = [None] * len(reqs)
    if not idx:
        return out
    try:
        got = backend.generate_many([reqs[i] for i in idx])
    except PartialResultsError as e:
        got = e.results  # what finished; the per-input runs redo (and report) the rest
    except Exception:
        return out  # e.g. one request over the context: each input's own run raises its own error
    for i, res in zip(idx, got, strict=True):
        out[i] = res
    return out


def chunk_ranges(inputs: list[Any], config: Any) -> list[tuple[int, int]]:
    """Index ranges of one backend call each: ``max_concurrency`` inputs at a time, if set."""
    limit = get_config_list(config, len(inputs))[0].get("max_concurrency") if inputs else None
    step = limit if isinstance(limit, int) and limit > 0 else max(1, len(inputs))
    return [(i, min(i + step, len(inputs))) for i in range(0, len(inputs), step)]


def kwargs_for_request(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The generation settings among ``generate``'s keyword arguments (not callbacks, tags, run names)."""
    skip = {"callbacks", "tags", "metadata", "run_name", "run_id"}
    return {k: v for k, v in kwargs.items() if k not in skip}
