"""``SGLangBackend``: the backend protocol against a running SGLang server with the l2reason plugin.

The server does the generation (continuous batching, tensor/data parallel,
behind SGLang's router if you like) and, through the plugin, reports per-token
norms and runs the interventions with the same controllers as the embedded
backend. This client turns a :class:`~l2reason.backends.base.GenerationRequest`
into one batched native ``/generate`` call (``n`` candidates = ``n`` prompts,
each with its own seed) and the answer back into a
:class:`~l2reason.backends.base.GenerationResult`; summaries and selection are
computed here by the same code as the embedded backend
(:mod:`l2reason.backends.common`, :mod:`l2reason.select`).

Only the standard library talks HTTP; the tokenizer (for the chat template)
is loaded from the server's model folder when it is on this machine, else
from ``tokenizer=``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from l2reason.backends.base import (
    Candidate,
    Capabilities,
    GenerationRequest,
    GenerationResult,
    StreamEvent,
    TokenLogprobs,
)
from l2reason.backends.common import CalibrationMixin, encode_prompt, events_from_result, row_seed
from l2reason.backends.validate import ModelLimits, check_context, validate_requests
from l2reason.errors import BackendError, ConfigError
from l2reason.serving.settings import TOKEN_KEY, EngineSettings
from l2reason.signal.band import resolve_layers
from l2reason.techniques.controllers import CONTROLLERS

log = logging.getLogger(__name__)

__all__ = ["SGLangBackend", "parse_url"]

_INTERVENTIONS = frozenset(CONTROLLERS)  # the plugin runs the same controllers


def parse_url(spec: str) -> str:
    """``sglang://host:port`` (or ``http(s)://…``) -> the server's base URL.

    Example:
        >>> parse_url("sglang://127.0.0.1:30000")
        'http://127.0.0.1:30000'
    """
    s = spec.strip().rstrip("/")
    if s.startswith("sglang://"):
        s = "http://" + s[len("sglang://") :]
    if not s.startswith(("http://", "https://")):
        raise ConfigError(f"not an SGLang server address: {spec!r} (use sglang://host:port or http://host:port)")
    return s


class SGLangBackend(CalibrationMixin):
    """A client of an SGLang server started with the l2reason plugin (``l2reason serve``).

    Args:
        url: the server, ``http://host:port`` or ``sglang://host:port``.
        model: the model you expect the server to serve (a packaged name such
            as ``"default"``, a folder or an id); a mismatch is an error.
            None = whatever it serves.
        tokenizer: a tokenizer, or a folder/id to load one from, when the
            server's model folder is not on this machine.
        calibration: a calibration (or its path) for ``tau="calibrated"``
            summaries and selection.
        timeout: seconds for one HTTP call (generation included).
        retries: extra attempts after a *connection* error (never after the
            server answered), with exponential backoff from ``backoff`` s.

    Example:
        >>> be = SGLangBackend("sglang://127.0.0.1:30000")  # doctest: +SKIP
        >>> be.generate(GenerationRequest(prompt="2+2=")).candidates[0].norms.layers  # doctest: +SKIP
        [18, 19, 20, 21, 22]
    """

    name = "sglang"
    engine = "SGLang"  # in messages

    def __init__(
        self,
        url: str = "http://127.0.0.1:30000",
        *,
        model: str | None = None,
        tokenizer: Any = None,
        calibration: Any = None,
        timeout: float = 3600.0,
        retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        self.url = parse_url(url)
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self._lock = threading.Lock()
        self.model_path, ctx = self._server_info()
        self.model_id = self._model_id(self.model_path)
        if model is not None:
            self._check_model(model)
        self.tokenizer = self._tokenizer(tokenizer)
        cfg = self._config(tokenizer)
        self._num_layers = int(cfg["num_hidden_layers"])
        self._hidden_size = int(cfg["hidden_size"])
        ctx = ctx or cfg.get("max_position_embeddings")
        self.context_length: int | None = int(ctx) if isinstance(ctx, int) and ctx > 0 else None
        vocab = cfg.get("vocab_size")
        self._vocab_size: int | None = int(vocab) if isinstance(vocab, int) else None
        self._calibration = self._load_calibration(calibration, self.model_id)
        self._check_plugin()

    def _server_info(self) -> tuple[str, Any]:
        """The served model's path and context length (None: unknown)."""
        info = self._call("GET", "/model_info", None, timeout=min(self.timeout, 30.0))
        return str(info.get("model_path", "")), info.get("context_length")

    # ---- protocol -----------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self._num_layers

    @property
    def hidden_size(self) -> int:
        return self._hidden_size

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(name=self.name, interventions=_INTERVENTIONS, exact_erss=True, calibrated_thresholds=False)

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate ``request.n`` candidates for one prompt (one batched server call)."""
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
        """Generate for several prompts in one batched server call (the server batches them continuously)."""
        requests = validate_requests(requests, self.limits())
        if not requests:
            return []
        prepared = [self._prepare(r) for r in requests]  # every check before any generation
        items: list[dict[str, Any]] = []
        for p in prepared:
            items.extend(p["items"])
        t0 = time.perf_counter()
        want_lp = any(r.logprobs is not None for r in requests)
        k_top = max((r.logprobs or 0) for r in requests)
        payload: dict[str, Any] = {
            "input_ids": [it["ids"] for it in items],
            "sampling_params": [it["sp"] for it in items],
        }
        if want_lp:
            payload.update(return_logprob=True, top_logprobs_num=k_top, logprob_start_len=-1)
        out = self._call("POST", "/generate", payload)
        if isinstance(out, dict):
            out = [out]
        if len(out) != len(items):
            raise BackendError(f"the server answered {len(out)} outputs for {len(items)} prompts")
        return self._results(requests, prepared, out, time.perf_counter() - t0)

    def _results(
        self, requests: Sequence[GenerationRequest], prepared: list[dict[str, Any]], outs: list[Any], seconds: float
    ) -> list[GenerationResult]:
        """One result per request from the server's outputs, ``n`` consecutive outputs per request."""
        results: list[GenerationResult] = []
        pos = 0
        for req, p in zip(requests, prepared, strict=True):
            cands = [self._candidate(j, req, p, outs[pos + j]) for j in range(req.n)]
            pos += req.n
            res = GenerationResult(
                request_id=req.request_id, model_id=self.model_id, backend=self.name, candidates=cands, seconds=seconds
            )
            results.append(self.finish(res, req, self.num_layers))
        return results

    # ---- request / response ---------------------------------------------
    def _prepare(self, req: GenerationRequest) -> dict[str, Any]:
        """Server items for a request that ``validate_requests`` has already checked."""
        layers = resolve_layers(req.norms.layers, self.num_layers) if req.norms is not None else []
        specs = [s.model_dump(mode="json") for s in req.interventions]
        ids = encode_prompt(self.tokenizer, req)
        check_context(len(ids), req, self.context_length)
        sp = req.sampling
        items = []
        for j in range(req.n):
            seed = row_seed(sp.seed, j)
            settings = EngineSettings(layers=layers, interventions=specs, seed=seed, sc=req.logprobs is not None)
            params: dict[str, Any] = {
                "temperature": sp.temperature,
                "top_p": sp.top_p,
                "top_k": sp.top_k if sp.top_k is not None else -1,
                "max_new_tokens": sp.max_new_tokens,
                "stop": list(sp.stop),
                "sampling_seed": seed,
                "skip_special_tokens": True,
                "custom_params": settings.encode(),
            }
            items.append({"ids": ids, "sp": params})
        return {"layers": layers, "ids": ids, "items": items}

    def _candidate(self, j: int, req: GenerationRequest, p: dict[str, Any], out: dict[str, Any]) -> Candidate:
        meta = out.get("meta_info") or {}
        ids = [int(t) for t in out.get("output_ids") or []]
        T = len(ids)
        records = meta.get(TOKEN_KEY)
        if records is None:
            raise BackendError(
                f"the server at {self.url} returned no l2reason records: it runs without the plugin "
                "(start it with `l2reason serve`)"
            )
        for rec in records:
            if rec and rec.get("e"):
                raise ConfigError(f"the server's l2reason plugin rejected the request: {rec['e']}")
        records = records[:T]
        fr = meta.get("finish_reason") or {}
        kind = fr.get("type") if isinstance(fr, dict) else str(fr)
        if kind == "abort":
            raise BackendError(f"the server aborted the request: {fr.get('message', fr)}")
        matched = fr.get("matched") if isinstance(fr, dict) else None
        finish = "length" if kind == "length" else "stop" if isinstance(matched, str) else "eos"
        layers = p["layers"]
        norms = None
        if req.norms is not None and layers:
            arr = torch.tensor([rec["n"] for rec in records], dtype=torch.float32).reshape(len(records), len(layers))
            norms = self.norm_stats(arr, layers, req.norms)
        lps = None
        if req.logprobs is not None:
            chosen = [float(x[0]) if x[0] is not None else -math.inf for x in meta.get("output_token_logprobs") or []]
            top = None
            if req.logprobs:
                top = [[float(e[0]) for e in row[: req.logprobs]] for row in meta.get("output_top_logprobs") or []]
            lps = TokenLogprobs(
                logprob=chosen[:T],
                top_logprobs=top[:T] if top is not None else None,
                self_certainty=[float(rec.get("sc", math.nan)) for rec in records],
                confidence=[-sum(r) / len(r) for r in top[:T]] if top else None,
            )
        report = (records[-1] or {}).get("r", {}) if records else {}
        return Candidate(
            index=j,
            text=out.get("text", ""),
            finish_reason=finish,  # type: ignore[arg-type]
            prompt_tokens=int(meta.get("prompt_tokens", len(p["ids"]))),
            completion_tokens=T,
            tokens=[self.tokenizer.decode([t]) for t in ids],
            logprobs=lps,
            norms=norms,
            interventions=report,
        )

    # ---- server ---------------------------------------------------------
    def _call(self, method: str, path: str, payload: Any, *, timeout: float | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                    return json.loads(r.read() or b"null")
            except urllib.error.HTTPError as e:  # the server answered: never retried
                body = e.read().decode(errors="replace")[:2000]
                raise BackendError(f"{self.engine} server {self.url}{path} answered HTTP {e.code}: {body}") from e
            except TimeoutError as e:  # connected, but no answer in time: the server is busy (or hung)
                raise BackendError(
                    f"the {self.engine} server at {self.url} sent no answer to {path} within "
                    f"{timeout or self.timeout:.0f} s; it is reachable but busy (requests queue behind each other "
                    "and a long generation on CPU takes minutes) or hung: pass a larger timeout= to the backend, "
                    "or send fewer requests at once"
                ) from e
            except (urllib.error.URLError, ConnectionError, OSError) as e:
                if attempt >= self.retries or isinstance(getattr(e, "reason", None), TimeoutError):
                    raise BackendError(
                        f"cannot reach the {self.engine} server at {self.url} ({e}); start one with "
                        "`l2reason serve` or check the address"
                    ) from e
                log.warning(
                    "%s server %s unreachable (%s); retry %d in %.1fs", self.engine, self.url, e, attempt + 1, delay
                )
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    @staticmethod
    def _model_id(model_path: str) -> str:
        marker = Path(model_path) / "l2reason-converted.json"
        try:
            return str(json.loads(marker.read_text())["model_id"])
        except (OSError, ValueError, KeyError):
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
        if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
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
        for src in (self.model_path, tokenizer if isinstance(tokenizer, (str, Path)) else None):
            if src and (Path(src) / "config.json").is_file():
                cfg = json.loads((Path(src) / "config.json").read_text())
                return cfg.get("text_config", cfg)
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(str(tokenizer or self.model_path)).to_dict()
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the model config of {self.model_path!r}: {e}") from e

    def _check_plugin(self) -> None:
        """One 1-token request with settings: the plugin must answer with a record."""
        probe = {
            "input_ids": encode_prompt(self.tokenizer, GenerationRequest(prompt="ping")),
            "sampling_params": {
                "max_new_tokens": 1,
                "temperature": 0.0,
                "custom_params": EngineSettings(layers=[0]).encode(),
            },
        }
        out = self._call("POST", "/generate", probe, timeout=min(self.timeout, 120.0))
        recs = (out.get("meta_info") or {}).get(TOKEN_KEY)
        if not recs or not recs[0] or "n" not in recs[0]:
            raise BackendError(
                f"the SGLang server at {self.url} runs without the l2reason plugin (no per-token norms came back); "
                "start it with `l2reason serve` (or python -m l2reason_sglang.launch)"
            )
