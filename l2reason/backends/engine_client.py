"""``EngineClient``: what the SGLang and vLLM clients share, which is everything but the engine's wire format.

An engine client is the backend protocol (:class:`~l2reason.backends.base.Backend`) against a running engine
server with l2reason's plugin. This module holds what does not depend on the engine:

- **HTTP**: one pooled :mod:`httpx` client per backend (keep-alive), a timeout per call, bounded retries with
  exponential backoff on *connection* errors only (the request never reached the server; never once it answered
  or while it was answering), and every failure as a :class:`~l2reason.errors.BackendError` that names the
  server and the route (a refused connection, a timeout, a dropped connection, an HTTP error, an answer that is
  not JSON or not of the expected shape);
- **set-up**: the served model (checked against the one asked for), its tokenizer and config, and the plugin
  probe, whose answer says which interventions the plugin runs (:attr:`~EngineClient.capabilities`);
- **requests**: validation, layers, prompt tokens, and one
  :class:`~l2reason.serving.settings.EngineSettings` per candidate (each with its own seed);
- **candidates**: a completion's per-token records turned into a :class:`~l2reason.backends.base.Candidate`
  (norm summaries, logprobs, self-certainty, the interventions' reports, the plugin's errors).

A subclass (:class:`~l2reason.backends.sglang.SGLangBackend`, :class:`~l2reason.backends.vllm.VLLMBackend`)
only speaks its engine: it reads the served model (:meth:`~EngineClient._server_info`), builds one candidate's
payload (:meth:`~EngineClient._item`), sends a batch (:meth:`~EngineClient._send`) and reads one completion
into an engine-neutral :class:`Reply` (:meth:`~EngineClient._parse`).

Wire conventions (:mod:`l2reason.serving.settings`): settings travel as ``EngineSettings.encode()`` in the
engine's per-request parameters; records come back one per completion token. The probe is a one-token greedy
request with ``EngineSettings(layers=[0], probe=True)``; the plugin's first record then carries
``"caps": {"interventions": [kinds], "plugin": "<l2reason version>"}`` beside ``"n"`` (and, from plugins that
count them, ``"active_slots": <slots held for other requests>``, read by :meth:`EngineClient.active_slots`).
A completion that asked for norms must bring one record per token: fewer (or none) is a
:class:`~l2reason.errors.BackendError` naming the request, never a short norm list.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, TypedDict

import httpx
import numpy as np
import torch

from l2reason.backends.base import (
    Candidate,
    Capabilities,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    StreamEvent,
    TokenLogprobs,
)
from l2reason.backends.common import CalibrationMixin, encode_prompt, events_from_result, row_seed
from l2reason.backends.validate import ModelLimits, check_context, validate_requests
from l2reason.errors import BackendError, ConfigError, L2ReasonError
from l2reason.serving.capabilities import plugin_version
from l2reason.serving.prune import record_signal, replay
from l2reason.serving.settings import EngineSettings, PruneSettings
from l2reason.signal.band import resolve_layers
from l2reason.techniques.pruning import PRUNED, PruneTracker

log = logging.getLogger(__name__)

__all__ = ["CONNECT_SECONDS", "EngineClient", "Prepared", "Reply", "parse_server_url"]

#: the longest a connection may take to open (a host that drops packets); a call's own timeout, if shorter, wins
CONNECT_SECONDS = 10.0
_HTTP_LOCK = threading.Lock()  # guards the lazy creation of a backend's pooled client


@dataclass(frozen=True)
class Reply:
    """One completion as the engine answered it, in engine-neutral form (its records not checked yet).

    Args:
        ids: the completion's token ids.
        text: its text.
        finish: ``"eos"``, ``"length"`` or ``"stop"``.
        records: the plugin's per-token records (one per token; None: the server sent none).
        prompt_tokens: the prompt's length as the engine counted it (None: not said).
        logprob: the chosen tokens' logprobs (requests with ``logprobs``).
        top: each token's top logprobs, highest first (requests with ``logprobs`` > 0).
        error: the engine's reason for aborting the request (None: it finished).
    """

    ids: list[int]
    text: str
    finish: str
    records: Any
    prompt_tokens: int | None = None
    logprob: list[float] | None = None
    top: list[list[float]] | None = None
    error: str | None = None


class Prepared(TypedDict):
    """A request ready to send: its layers, prompt tokens and one engine payload per candidate.

    ``wire`` are the layers whose norms the records carry (``layers`` first, then the ones only ``prune``
    reads); ``prune`` the request's pruning settings as sent (candidate 0's; None: no pruning).
    """

    layers: list[int]
    ids: list[int]
    items: list[dict[str, Any]]
    wire: list[int]
    prune: PruneSettings | None


def parse_server_url(spec: Any, scheme: str, server: str) -> str:
    """``<scheme>://host:port`` (or ``http(s)://host[:port]``) -> the server's base URL, checked.

    Only the address's form is checked (nothing is contacted), so a bad spec fails the same way wherever it
    enters: a backend's constructor, :func:`~l2reason.backends.shared.make_backend`, ``configure_dspy``,
    ``ChatL2Reason``, ``l2reason ask``.

    Args:
        spec: the address.
        scheme: the engine's own scheme (``"sglang"``, ``"vllm"``); it stands for ``http``.
        server: the engine's server as messages name it (``"an SGLang server"``).

    Raises:
        ConfigError: not a string; another scheme; no host; a port that is not a number from 1 to 65535; a
            query or fragment.

    Example:
        >>> parse_server_url("vllm://127.0.0.1:8000/", "vllm", "a vLLM server")
        'http://127.0.0.1:8000'
    """
    use = f"use {scheme}://host:port or http://host:port"
    if not isinstance(spec, str):
        raise ConfigError(f"{server} address must be a string ({use}), got {type(spec).__name__}")
    s = spec.strip().rstrip("/")
    if s.startswith(f"{scheme}://"):
        s = "http://" + s[len(scheme) + 3 :]
    if not s.startswith(("http://", "https://")):
        raise ConfigError(f"not {server} address: {spec!r} ({use})")
    parts = urllib.parse.urlsplit(s)
    if not parts.hostname:
        raise ConfigError(f"{server} address {spec!r} names no host ({use})")
    try:
        port = parts.port
    except ValueError:  # not a number, or outside 0..65535
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raw = parts.netloc.rpartition(":")[2]
        raise ConfigError(f"the port {raw!r} in {server} address {spec!r} is not a number from 1 to 65535 ({use})")
    if parts.query or parts.fragment:
        raise ConfigError(f"{server} address {spec!r} has a query or fragment; give only {scheme}://host:port")
    return s


def _seconds(name: str, value: Any, *, positive: bool) -> float:
    """A constructor's duration argument, checked: a finite number of seconds (> 0 or >= 0)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise ConfigError(f"{name} must be a finite number of seconds {'> 0' if positive else '>= 0'} (got {value!r})")
    return float(value)


def _count(name: str, value: Any, *, lo: int) -> int:
    """A constructor's count argument, checked: an int >= ``lo``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo} (got {value!r})")
    return value


def _json_kind(value: Any) -> str:
    """How a decoded JSON value reads in a message."""
    if value is None:
        return "null (or nothing)"
    kinds = {dict: "a JSON object", list: "a JSON list", str: "a JSON string", bool: "a JSON boolean"}
    return kinds.get(type(value), "a JSON number")


def _request_name(req: GenerationRequest, j: int) -> str:
    """A request as messages name it: its id (or the start of its prompt), and the candidate when it has several."""
    if req.request_id is not None:
        name = f"request {req.request_id!r}"
    else:
        text = req.prompt if req.prompt is not None else req.messages[-1].content if req.messages else ""
        name = f"the request {text[:40]!r}"
    return f"{name} (candidate {j} of {req.n})" if req.n > 1 else name


def _row(prune: PruneSettings | None, j: int) -> PruneSettings | None:
    """Candidate ``j``'s pruning settings (its row in the group)."""
    return None if prune is None else prune.model_copy(update={"index": j})


def _timeouts(seconds: float) -> httpx.Timeout:
    return httpx.Timeout(seconds, connect=min(seconds, CONNECT_SECONDS))


class EngineClient(CalibrationMixin):
    """The engine-neutral part of a client of an engine server with the l2reason plugin (subclass it).

    Args:
        url: the server, ``http(s)://host:port`` or ``<scheme>://host:port`` (None: :attr:`default_url`).
        model: the model you expect the server to serve (a packaged name such as ``"default"``, a folder or an
            id); a mismatch is an error. None = whatever it serves.
        tokenizer: a tokenizer, or a folder/id to load one from, when the server's model folder is not on this
            machine.
        calibration: a calibration (or its path) for ``tau="calibrated"`` summaries and selection.
        timeout: seconds for one HTTP call (generation included); finite, > 0.
        retries: extra attempts after a *connection* error (never after the server answered), an int >= 0.
        backoff: seconds before the first retry (doubled for each next one), >= 0. Retries stop when the next
            one would start after ``timeout``.

    Raises:
        ConfigError: a malformed address or argument (before anything is contacted), a model other than the one
            asked for, a tokenizer or config that cannot be loaded.
        BackendError: the server cannot be reached, does not answer in time, answers what it should not, or runs
            without (or with an older) l2reason plugin.

    Example:
        >>> from l2reason.backends.sglang import SGLangBackend  # an EngineClient
        >>> with SGLangBackend("sglang://127.0.0.1:30000") as be:  # doctest: +SKIP
        ...     be.capabilities.interventions
        frozenset({'alrr', 'erss', 'sae_ablate', 'static_steer', 'suppress'})
    """

    name: ClassVar[str] = "engine"  # the backend's name in results
    engine: ClassVar[str] = "engine"  # in messages
    scheme: ClassVar[str] = "http"  # <scheme>://host:port stands for http://host:port
    server_noun: ClassVar[str] = "an engine server"  # in messages: "not <server_noun> address"
    info_path: ClassVar[str] = "/"  # the route that names the served model
    generate_path: ClassVar[str] = "/"  # the route that generates
    serve_command: ClassVar[str] = "l2reason serve"  # how a user starts a server with the plugin
    default_url: ClassVar[str] = "http://127.0.0.1:8000"  # the server when no url is given
    keepalive = 16  # pooled connections kept open
    _http: httpx.Client | None = None

    def __init__(
        self,
        url: str | None = None,
        *,
        model: str | None = None,
        tokenizer: Any = None,
        calibration: Any = None,
        timeout: float = 3600.0,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        self.url = self.parse_address(self.default_url if url is None else url)
        self.timeout = _seconds("timeout", timeout, positive=True)
        self.retries = _count("retries", retries, lo=0)
        self.backoff = _seconds("backoff", backoff, positive=False)
        if model is not None and not isinstance(model, str):
            raise ConfigError(f"model must be a model spec string or None (got {type(model).__name__})")
        try:
            self._connect(model, tokenizer, calibration)
        except BaseException:
            self.close()
            raise

    def _connect(self, model: str | None, tokenizer: Any, calibration: Any) -> None:
        """Read the served model, check it, load its tokenizer and config, and probe the plugin."""
        self.model_path, ctx = self._server_info()
        self.model_id = self._model_id(self.model_path)
        if model is not None:
            self._check_model(model)
        self.tokenizer = self._tokenizer(tokenizer)
        cfg = self._config(tokenizer)
        self._num_layers = self._size(cfg, "num_hidden_layers")
        self._hidden_size = self._size(cfg, "hidden_size")
        ctx = ctx or cfg.get("max_position_embeddings")
        self.context_length: int | None = int(ctx) if isinstance(ctx, int) and ctx > 0 else None
        vocab = cfg.get("vocab_size")
        self._vocab_size: int | None = int(vocab) if isinstance(vocab, int) else None
        self._calibration = self._load_calibration(calibration, self.model_id)
        self._capabilities = self._check_plugin()

    @classmethod
    def parse_address(cls, spec: str) -> str:
        """``<scheme>://host:port`` (or ``http(s)://…``) -> the server's base URL (nothing is contacted).

        Raises:
            ConfigError: not this engine's server address, or its port is not a number from 1 to 65535
                (:func:`parse_server_url`).

        Example:
            >>> from l2reason.backends.vllm import VLLMBackend
            >>> VLLMBackend.parse_address("vllm://127.0.0.1:8000")
            'http://127.0.0.1:8000'
        """
        return parse_server_url(spec, cls.scheme, cls.server_noun)

    # ---- what an engine subclass provides --------------------------------
    def _server_info(self) -> tuple[str, Any]:
        """The served model's path (or id) and its context length (None: unknown), from :meth:`_info`."""
        raise NotImplementedError

    def _item(self, req: GenerationRequest, ids: list[int], settings: EngineSettings) -> dict[str, Any]:
        """One candidate's payload: the prompt ``ids``, the request's sampling, ``settings`` (its seed included)."""
        raise NotImplementedError

    def _send(
        self, requests: Sequence[GenerationRequest], items: list[dict[str, Any]], *, timeout: float | None = None
    ) -> list[Any]:
        """Send every item; the server's output for each, in order."""
        raise NotImplementedError

    def _parse(self, out: Any, req: GenerationRequest) -> Reply:
        """One output of :meth:`_send` as a :class:`Reply` (a malformed one may raise anything :meth:`_answer`
        turns into a BackendError)."""
        raise NotImplementedError

    def _cut(self, reply: Reply, req: GenerationRequest) -> Reply:
        """The reply as the candidate keeps it (an engine that leaves stop strings to the client cuts here)."""
        return reply

    # ---- protocol -----------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self._num_layers

    @property
    def hidden_size(self) -> int:
        return self._hidden_size

    @property
    def capabilities(self) -> Capabilities:
        """What the server's plugin runs (from its probe answer)."""
        return self._capabilities

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate ``request.n`` candidates for one prompt."""
        return self.generate_many([request])[0]

    def generate_stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        """Not token by token yet: the whole generation runs, then each candidate comes as one delta
        (all its norms), its finish event, and the result (see ``docs/guide.md``, "Streaming")."""
        return events_from_result(self.generate(request))

    async def agenerate_stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """:meth:`generate_stream` for asyncio (the server call runs in a worker thread)."""
        res = await asyncio.to_thread(self.generate, request)
        for ev in events_from_result(res):
            yield ev

    def limits(self) -> ModelLimits:
        """What :func:`~l2reason.backends.validate.validate_request` checks requests against."""
        return ModelLimits(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            context_length=self.context_length,
            vocab_size=self._vocab_size,
            capabilities=self.capabilities,
            calibration=lambda: self.calibration,
        )

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate for several prompts; every request is checked and prepared before anything is sent."""
        requests = validate_requests(requests, self.limits())
        if not requests:
            return []
        prepared = [self._prepare(r) for r in requests]
        items = [it for p in prepared for it in p["items"]]
        t0 = time.perf_counter()
        outs = self._send(requests, items)
        seconds = time.perf_counter() - t0
        results: list[GenerationResult] = []
        pos = 0
        for req, p in zip(requests, prepared, strict=True):
            replies = [self._reply(j, req, p, outs[pos + j]) for j in range(req.n)]
            pos += req.n
            tracker = None
            if p["prune"] is not None:
                tracker, replies = self._pruned(p["prune"], replies)
            cands = [self._candidate(j, req, p, r, tracker) for j, r in enumerate(replies)]
            res = GenerationResult(
                request_id=req.request_id, model_id=self.model_id, backend=self.name, candidates=cands, seconds=seconds
            )
            if tracker is not None:
                res.prune = tracker.request_report()
            results.append(self.finish(res, req, self.num_layers))
        return results

    def close(self) -> None:
        """Close the pooled connections (a later call opens new ones)."""
        with _HTTP_LOCK:
            http, self._http = self._http, None
        if http is not None:
            http.close()

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- request / response ---------------------------------------------
    def _prepare(self, req: GenerationRequest) -> Prepared:
        """The payloads (one per candidate) of a request that ``validate_requests`` has checked."""
        layers = resolve_layers(req.norms.layers, self.num_layers) if req.norms is not None else []
        ids = encode_prompt(self.tokenizer, req)
        check_context(len(ids), req, self.context_length)
        wire, prune = self._prune_settings(req, layers)
        settings = EngineSettings(layers=wire, interventions=list(req.interventions), sc=req.logprobs is not None)
        seeds = [row_seed(req.sampling.seed, j) for j in range(req.n)]
        items = [
            self._item(req, ids, settings.model_copy(update={"seed": s, "prune": _row(prune, j)}))
            for j, s in enumerate(seeds)
        ]
        return {"layers": layers, "ids": ids, "items": items, "wire": wire, "prune": prune}

    def _prune_settings(self, req: GenerationRequest, layers: list[int]) -> tuple[list[int], PruneSettings | None]:
        """The layers the records carry (``layers`` + those only the ℓ2 prune score reads) and the request's
        pruning settings for the plugin (None: no ``prune``); a fresh random group id per request."""
        spec = req.prune
        if spec is None:
            return layers, None
        import uuid

        wire, cols, tau = list(layers), [], None
        if spec.score == "l2":
            own = resolve_layers(spec.layers, self.num_layers)
            wire += [layer for layer in own if layer not in wire]
            cols = [wire.index(layer) for layer in own]
            if spec.tau == "calibrated":
                tau = self.calibrated_tau(own, "prune tau='calibrated'", "pass explicit tau values").tolist()
            elif isinstance(spec.tau, list):
                tau = [float(x) for x in spec.tau]
        fields = spec.model_dump(include={"score", "threshold", "first", "quantile", "warmup", "window", "min_keep"})
        prune = PruneSettings(
            **fields,
            group=uuid.uuid4().hex,
            n=req.n,
            index=0,
            max_len=req.sampling.max_new_tokens,
            k=(req.logprobs or 0) if spec.score == "confidence" else 0,
            cols=cols,
            l2_stat=spec.l2_stat,
            tau=tau,
            direction=spec.direction,
        )
        return wire, prune

    def _pruned(self, rule: PruneSettings, replies: list[Reply]) -> tuple[PruneTracker, list[Reply]]:
        """The request's pruning, replayed on what came back (:func:`~l2reason.serving.prune.replay`): the
        tracker (its reports) and the replies with each pruned candidate cut to the tokens it keeps.

        The signals are read from the records with the plugin's own code, so the replay decides what the
        engine decided; a candidate the engine stopped carries ``"p"`` (the tokens it keeps) in a record.
        """
        signals, stopped = [], []
        for r in replies:
            recs = r.records[: len(r.ids)]
            mark = next((rec["p"] for rec in recs if rec and isinstance(rec.get("p"), int)), None)
            natural = mark is None or (mark >= len(r.ids) and r.finish == "stop")  # a stop string came first
            stopped.append(None if natural else mark)
            vals = [record_signal(rule, rec) for rec in recs]
            signals.append(np.array([math.nan if v is None else v for v in vals], dtype=np.float64))
        tracker, kept = replay(rule, signals, stopped, rule.max_len)
        out = []
        for j, r in enumerate(replies):
            if tracker.state[j] != PRUNED:
                out.append(r)
                continue
            k = kept[j]
            out.append(
                replace(
                    r,
                    ids=r.ids[:k],
                    text=self.tokenizer.decode(r.ids[:k], skip_special_tokens=True),
                    finish="pruned",
                    records=r.records[:k],
                    logprob=None if r.logprob is None else r.logprob[:k],
                    top=None if r.top is None else r.top[:k],
                )
            )
        return tracker, out

    def _reply(self, j: int, req: GenerationRequest, p: Prepared, out: Any) -> Reply:
        """Candidate ``j``'s completion ``out``, parsed, checked and cut at a stop string."""
        with self._answer(self.generate_path):
            reply = self._parse(out, req)
        self._check_records(reply, req, j, wants_norms=bool(p.get("wire", p["layers"])))
        return self._cut(reply, req)

    def _candidate(
        self, j: int, req: GenerationRequest, p: Prepared, out: Any, tracker: PruneTracker | None = None
    ) -> Candidate:
        """Candidate ``j`` of ``req`` from the server's output ``out`` (or its :class:`Reply`, already read)."""
        reply = out if isinstance(out, Reply) else self._reply(j, req, p, out)
        T = len(reply.ids)
        records = list(reply.records[:T])
        layers = p["layers"]
        norms = None
        if req.norms is not None and layers:
            rows = self._norm_rows(records, len(p.get("wire", layers)))[:, : len(layers)]
            norms = self.norm_stats(rows, layers, req.norms)
        lps = None
        if req.logprobs is not None:
            top = [row[: req.logprobs] for row in reply.top[:T]] if req.logprobs and reply.top is not None else None
            lps = TokenLogprobs(
                logprob=(reply.logprob or [])[:T],
                top_logprobs=top,
                self_certainty=[float((rec or {}).get("sc", math.nan)) for rec in records],
                confidence=[-sum(r) / len(r) if r else math.nan for r in top] if top else None,
            )
        report = (records[-1] or {}).get("r", {}) if records else {}
        return Candidate(
            index=j,
            text=reply.text,
            finish_reason=reply.finish,  # type: ignore[arg-type]
            prompt_tokens=reply.prompt_tokens if reply.prompt_tokens is not None else len(p["ids"]),
            completion_tokens=T,
            tokens=[self.tokenizer.decode([t]) for t in reply.ids],
            logprobs=lps,
            norms=norms,
            interventions=report,
            prune=tracker.candidate_report(j) if tracker is not None else None,
        )

    def _check_records(self, reply: Reply, req: GenerationRequest, j: int, *, wants_norms: bool) -> None:
        """The records must be there (else no plugin), error-free and one per token.

        A request that asked for norms and got fewer records than tokens (or none at all) is an error naming
        the request and the candidate, never a short or empty norm list.
        """
        records = reply.records
        which = _request_name(req, j)
        if records is None:
            asked = f"norms for {len(reply.ids)} tokens of {which}" if wants_norms else f"the records of {which}"
            raise BackendError(
                f"the {self.engine} server at {self.url} returned no l2reason records: it runs without the plugin "
                f"(start it with `{self.serve_command}`), or the plugin lost {asked}"
            )
        where = f"the {self.engine} server at {self.url} answered {self.generate_path} for {which}"
        if not isinstance(records, list) or not all(r is None or isinstance(r, dict) for r in records):
            raise BackendError(f"{where} with l2reason records that are not a list of JSON objects")
        for rec in records:
            if rec and rec.get("e"):
                raise ConfigError(f"the server's l2reason plugin rejected the request: {rec['e']}")
        if reply.error is not None:
            raise BackendError(f"the {self.engine} server aborted {which}: {reply.error}")
        if len(records) < len(reply.ids):
            raise BackendError(
                f"the {self.engine} plugin returned {len(records)} records for {len(reply.ids)} tokens of {which}"
                + (" (norms were asked for every token)" if wants_norms else "")
            )

    def _norm_rows(self, records: list[Any], n_layers: int) -> torch.Tensor:
        """``[T, n_layers]`` float32 norms from the records (each must hold ``n_layers`` numbers)."""
        for t, rec in enumerate(records):
            n = (rec or {}).get("n")
            if not isinstance(n, list) or len(n) != n_layers or not all(isinstance(x, int | float) for x in n):
                raise BackendError(
                    f"the {self.engine} server at {self.url} answered {self.generate_path} with a record for token "
                    f"{t} that holds no {n_layers} norms (got {str(n)[:200]})"
                )
        return torch.tensor([rec["n"] for rec in records], dtype=torch.float32).reshape(len(records), n_layers)

    # ---- server ---------------------------------------------------------
    def _check_plugin(self) -> Capabilities:
        """The plugin probe at set-up: the plugin's capabilities (and a warning if its version is not ours)."""
        caps = self._probe()
        self.plugin_version = caps.get("plugin")
        mine = plugin_version()
        if mine != "unknown" and self.plugin_version != mine:
            log.warning(
                "the %s server at %s runs l2reason plugin %s, this client is l2reason %s",
                self.engine,
                self.url,
                self.plugin_version,
                mine,
            )
        return Capabilities(
            name=self.name,
            interventions=frozenset(caps["interventions"]),
            exact_erss=True,
            calibrated_thresholds=False,
            pruning="prune" in (caps.get("features") or ()),
        )

    def _probe(self) -> dict[str, Any]:
        """Send the plugin probe (a one-token request); the ``caps`` its first record must carry, checked."""
        req = GenerationRequest(prompt="ping", sampling=SamplingParams(max_new_tokens=1, temperature=0.0))
        item = self._item(req, encode_prompt(self.tokenizer, req), EngineSettings(layers=[0], probe=True))
        [out] = self._send([req], [item], timeout=min(self.timeout, 120.0))
        with self._answer(self.generate_path):
            records = self._parse(out, req).records
        first = records[0] if isinstance(records, list) and records else None
        if not isinstance(first, dict) or not {"n", "e", "caps"} & first.keys():
            raise BackendError(
                f"the {self.engine} server at {self.url} runs without the l2reason plugin (no per-token norms came "
                f"back); start it with `{self.serve_command}` (or python -m l2reason_{self.name}.launch)"
            )
        caps = first.get("caps")
        err = str(first.get("e") or "")
        if caps is None and err and "probe" not in err:  # a plugin that knows the probe but failed this request
            raise BackendError(
                f"the l2reason plugin of the {self.engine} server at {self.url} failed the plugin probe (a one-token "
                f"request): {err[:300]}; check the server's log"
            )
        if caps is None:
            said = f" (it answered: {str(first['e'])[:300]})" if first.get("e") else ""
            raise BackendError(
                f"the {self.engine} server at {self.url} runs an older l2reason plugin: its probe answer names no "
                f"capabilities{said}; restart the server with this l2reason's plugin (`{self.serve_command}`, "
                f"after `make {self.name}` has installed it into the engine's environment)"
            )
        kinds = caps.get("interventions") if isinstance(caps, dict) else None
        slots = caps.get("active_slots") if isinstance(caps, dict) else None
        slots_ok = slots is None or (isinstance(slots, int) and not isinstance(slots, bool) and slots >= 0)
        if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds) or not slots_ok:
            raise BackendError(
                f"the {self.engine} server at {self.url} answered the plugin probe ({self.generate_path}) with "
                f"malformed capabilities: {str(caps)[:300]}"
            )
        return dict(caps)

    def active_slots(self) -> int | None:
        """How many per-request slots the server's plugin holds right now, from a fresh probe.

        The count is the plugin's table of running requests, the probe's own slot not counted
        (:func:`~l2reason.serving.capabilities.caps`): an idle server answers 0, and a slot a finished, refused or
        cancelled request kept would show here. None: the plugin does not report the count (an older one).

        Raises:
            BackendError: the server cannot be reached, or answers the probe without a valid plugin record.

        Example:
            >>> be.active_slots()  # after every request has finished  # doctest: +SKIP
            0
        """
        slots = self._probe().get("active_slots")
        return int(slots) if slots is not None else None

    def _info(self, what: str) -> dict[str, Any]:
        """The JSON object :attr:`info_path` answers (``what`` it should be, for the message if it is not)."""
        return self._obj(self._call("GET", self.info_path, timeout=min(self.timeout, 30.0)), self.info_path, what)

    def _client(self) -> httpx.Client:
        """This backend's pooled HTTP client (created on first use, and again after :meth:`close`)."""
        with _HTTP_LOCK:
            if self._http is None:
                limits = httpx.Limits(max_connections=None, max_keepalive_connections=self.keepalive)
                self._http = httpx.Client(timeout=_timeouts(self.timeout), limits=limits)
            return self._http

    def _call(self, method: str, path: str, payload: Any = None, *, timeout: float | None = None) -> Any:
        """One HTTP call; the decoded JSON answer.

        A connection that cannot be opened (refused, unknown host) is retried up to :attr:`retries` times with
        exponential backoff, within ``timeout``; nothing is retried once the request reached the server.

        Raises:
            BackendError: naming the server and ``path``: unreachable, no answer within ``timeout``, the
                connection dropped, an HTTP error status, or an answer that is not JSON.
        """
        seconds = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + seconds
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                resp = self._client().request(method, self.url + path, json=payload, timeout=_timeouts(seconds))
            except httpx.ConnectError as e:  # the request never reached the server: safe to send again
                if attempt >= self.retries or time.monotonic() + delay > deadline:
                    raise BackendError(
                        f"cannot reach the {self.engine} server at {self.url} ({e}); start one with "
                        f"`{self.serve_command}` or check the address"
                    ) from e
                log.warning(
                    "%s server %s unreachable (%s); retry %d in %.1fs", self.engine, self.url, e, attempt + 1, delay
                )
                time.sleep(delay)
                delay *= 2
                continue
            except httpx.ConnectTimeout as e:
                raise BackendError(
                    f"cannot reach the {self.engine} server at {self.url}: no connection within "
                    f"{min(seconds, CONNECT_SECONDS):g} s (is the host up, and the address right?)"
                ) from e
            except httpx.TimeoutException as e:  # connected, but no answer in time: the server is busy (or hung)
                raise BackendError(
                    f"the {self.engine} server at {self.url} sent no answer to {path} within {seconds:g} s; it is "
                    "reachable but busy (requests queue behind each other and a long generation on CPU takes "
                    "minutes) or hung: pass a larger timeout= to the backend, or send fewer requests at once"
                ) from e
            except httpx.TransportError as e:  # it may have the request: never sent again
                raise BackendError(
                    f"the connection to the {self.engine} server at {self.url} broke during {path} "
                    f"({type(e).__name__}: {e or 'closed without an answer'}); the server may have crashed or "
                    "restarted: check its log"
                ) from e
            return self._decode(resp, path)
        raise BackendError(f"cannot reach the {self.engine} server at {self.url}")  # retries >= 0: not reached

    def _decode(self, resp: httpx.Response, path: str) -> Any:
        """The JSON of an answer; an HTTP error or a body that is not JSON is a BackendError."""
        if resp.status_code >= 400:
            body = resp.text[:2000]
            raise BackendError(f"{self.engine} server {self.url}{path} answered HTTP {resp.status_code}: {body}")
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as e:
            raise BackendError(
                f"the {self.engine} server at {self.url} answered {path} (HTTP {resp.status_code}) with something "
                f"that is not JSON ({e}): {resp.content[:200]!r}; is {self.url} {self.server_noun}?"
            ) from e

    def _obj(self, value: Any, path: str, what: str) -> dict[str, Any]:
        """``value`` if it is a JSON object, else a BackendError saying what ``path`` answered instead."""
        if not isinstance(value, dict):
            raise BackendError(
                f"the {self.engine} server at {self.url} answered {path} with {_json_kind(value)} where {what} "
                "should be a JSON object"
            )
        return value

    @contextlib.contextmanager
    def _answer(self, path: str) -> Iterator[None]:
        """Read an answer from ``path``: a field missing or of the wrong type becomes a BackendError."""
        try:
            yield
        except L2ReasonError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
            raise BackendError(
                f"the {self.engine} server at {self.url} answered {path} with an unexpected shape "
                f"({type(e).__name__}: {e}); is {self.url} {self.server_noun} of a version l2reason supports?"
            ) from e

    # ---- the model ---------------------------------------------------------
    @staticmethod
    def _model_id(model_path: str) -> str:
        marker = Path(model_path) / "l2reason-converted.json"
        try:
            return str(json.loads(marker.read_text())["model_id"])
        except (OSError, ValueError, KeyError, TypeError):
            return model_path

    def _check_model(self, model: str) -> None:
        from l2reason.models.registry import find_packaged

        pm = find_packaged(model)
        expected = {model, pm.model_id} if pm is not None else {model}
        if not expected & {self.model_id, self.model_path, Path(self.model_path).name}:
            raise ConfigError(
                f"the {self.engine} server at {self.url} serves {self.model_id!r} ({self.model_path}), not {model!r}"
            )

    def _tokenizer(self, tokenizer: Any) -> Any:
        if tokenizer is not None and not isinstance(tokenizer, str | Path):
            return tokenizer
        from transformers import AutoTokenizer

        src = str(tokenizer) if tokenizer is not None else self.model_path
        try:
            return AutoTokenizer.from_pretrained(src)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"cannot load the tokenizer of {src!r} ({e}); the server's model folder is not on this machine: "
                f"pass {type(self).__name__}(..., tokenizer=<folder or id>)"
            ) from e

    def _config(self, tokenizer: Any) -> dict[str, Any]:
        """The model's config (its text model's, for a multimodal one): from the model folder, else the hub."""
        for src in (self.model_path, tokenizer if isinstance(tokenizer, str | Path) else None):
            file = Path(src) / "config.json" if src else None
            if file is not None and file.is_file():
                try:
                    cfg = json.loads(file.read_text())
                except (OSError, ValueError) as e:
                    raise ConfigError(f"cannot read the model config {file}: {e}") from e
                if not isinstance(cfg, dict):
                    raise ConfigError(f"the model config {file} is not a JSON object")
                text = cfg.get("text_config")
                return text if isinstance(text, dict) else cfg
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(str(tokenizer or self.model_path)).to_dict()
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the model config of {self.model_path!r}: {e}") from e

    def _size(self, cfg: dict[str, Any], key: str) -> int:
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"the model config of {self.model_path!r} has no valid {key} (got {value!r})")
        return value
