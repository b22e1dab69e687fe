"""``VLLMBackend``: the backend protocol against a vLLM server with the l2reason plugin.

The server (vLLM's OpenAI-compatible server, started with the plugin by
``l2reason serve --engine vllm`` or by this backend itself for a
``vllm:<model>`` spec) generates with continuous batching and, through the
plugin, runs the norm capture and the interventions with the same
controllers as the embedded backend. This client sends one ``/v1/completions``
call per candidate (each with its own seed; all in flight together, so vLLM
batches them) with the request's settings in ``vllm_xargs["l2reason"]``
(vLLM's ``SamplingParams.extra_args``), and reads the per-token records from
the response's ``kv_transfer_params["l2r"]`` (see ``docs/vllm.md`` for why
that channel). Summaries and selection are computed here by the same code as
the other backends (:class:`~l2reason.backends.sglang.SGLangBackend`, whose
HTTP, tokenizer and model checks this class reuses).

Stop strings are applied here, not by vLLM: vLLM checks them in its front end
and aborts the request there, and an aborted request returns no records. The
candidate is cut at the first stop string (its tokens and records with it);
generation past it is wasted work, bounded by ``max_new_tokens``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from l2reason.backends.base import Candidate, Capabilities, GenerationRequest, GenerationResult, TokenLogprobs
from l2reason.backends.common import encode_prompt, row_seed
from l2reason.backends.sglang.client import SGLangBackend
from l2reason.backends.validate import check_context, validate_requests
from l2reason.errors import BackendError, ConfigError
from l2reason.serving.settings import SETTINGS_KEY, TOKEN_KEY, EngineSettings
from l2reason.signal.band import resolve_layers

log = logging.getLogger(__name__)

__all__ = ["VLLM_INTERVENTIONS", "VLLMBackend", "parse_vllm_url"]

#: the interventions the vLLM plugin runs
VLLM_INTERVENTIONS = frozenset({"alrr", "erss", "static_steer", "suppress", "sae_ablate"})


def parse_vllm_url(spec: str) -> str:
    """``vllm://host:port`` (or ``http(s)://…``) -> the server's base URL.

    Example:
        >>> parse_vllm_url("vllm://127.0.0.1:8000")
        'http://127.0.0.1:8000'
    """
    s = spec.strip().rstrip("/")
    if s.startswith("vllm://"):
        s = "http://" + s[len("vllm://") :]
    if not s.startswith(("http://", "https://")):
        raise ConfigError(f"not a vLLM server address: {spec!r} (use vllm://host:port or http://host:port)")
    return s


class VLLMBackend(SGLangBackend):
    """A client of a vLLM server started with the l2reason plugin (``l2reason serve --engine vllm``).

    Args:
        url: the server, ``http://host:port`` or ``vllm://host:port``.
        model: the model you expect the server to serve (packaged name,
            folder or id); a mismatch is an error. None = whatever it serves.
        tokenizer: a tokenizer, or a folder/id to load one from, when the
            server's model folder is not on this machine.
        calibration: a calibration (or its path) for ``tau="calibrated"``
            summaries and selection.
        timeout: seconds for one HTTP call (generation included).
        retries: extra attempts after a *connection* error.
        concurrency: most completions in flight at once.

    Example:
        >>> be = VLLMBackend("vllm://127.0.0.1:8000")  # doctest: +SKIP
        >>> be.generate(GenerationRequest(prompt="2+2=")).candidates[0].norms.layers  # doctest: +SKIP
        [18, 19, 20, 21, 22]
        >>> local = VLLMBackend.launch("default")  # starts (and owns) a server  # doctest: +SKIP
    """

    name = "vllm"
    engine = "vLLM"

    def __init__(self, url: str = "http://127.0.0.1:8000", *, concurrency: int = 64, **kwargs: Any) -> None:
        self.concurrency = int(concurrency)
        self.server: Any = None
        super().__init__(parse_vllm_url(url), **kwargs)

    @classmethod
    def launch(cls, model: str = "default", *, timeout: float = 900.0, **server_args: Any) -> VLLMBackend:
        """Start a vLLM server with the plugin for ``model`` (see :class:`~l2reason.backends.vllm.server.VLLMServer`
        for ``server_args``; its log goes to the temp folder unless ``log_path`` is given) and return a backend
        that owns it (stopped by :meth:`close` or at exit)."""
        import os
        import tempfile
        from pathlib import Path

        from l2reason.backends.vllm.server import VLLMServer

        server_args.setdefault("log_path", Path(tempfile.gettempdir()) / f"l2reason-vllm-{os.getpid()}.log")
        srv = VLLMServer(model, **server_args)
        srv.start(timeout=timeout)
        try:
            be = cls(srv.url, model=model)
        except BaseException:
            srv.stop()
            raise
        be.server = srv
        atexit.register(be.close)
        return be

    def close(self) -> None:
        """Stop the server this backend started (if it started one)."""
        if self.server is not None:
            self.server.stop()
            self.server = None

    def _server_info(self) -> tuple[str, Any]:
        info = self._call("GET", "/v1/models", None, timeout=min(self.timeout, 30.0))
        data = (info or {}).get("data") or []
        if not data:
            raise BackendError(f"the vLLM server at {self.url} serves no model")
        m = data[0]
        self._served_name = str(m.get("id", ""))
        return str(m.get("root") or m.get("id") or ""), m.get("max_model_len")

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            name=self.name, interventions=VLLM_INTERVENTIONS, exact_erss=True, calibrated_thresholds=False
        )

    # ---- generation -------------------------------------------------------
    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate for several prompts: every candidate is one completion, all in flight together."""
        requests = validate_requests(requests, self.limits())
        if not requests:
            return []
        prepared = [self._prepare(r) for r in requests]  # every check before any generation
        items = [it for p in prepared for it in p["items"]]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(items)))) as pool:
            outs = list(pool.map(lambda it: self._call("POST", "/v1/completions", it), items))
        return self._results(requests, prepared, outs, time.perf_counter() - t0)

    def _prepare(self, req: GenerationRequest) -> dict[str, Any]:
        """The completions payloads (one per candidate) of a request ``validate_requests`` has checked."""
        layers = resolve_layers(req.norms.layers, self.num_layers) if req.norms is not None else []
        specs = [s.model_dump(mode="json") for s in req.interventions]
        ids = encode_prompt(self.tokenizer, req)
        check_context(len(ids), req, self.context_length)
        sp = req.sampling
        # an ablation changes the prompt's states, so its cached prompt blocks must not be shared with
        # requests that run the prompt plain (or with other ablations): vLLM keys its prefix cache on the salt
        ablations = [s for s in specs if s["kind"] == "sae_ablate"]
        salt = hashlib.sha256(json.dumps(ablations, sort_keys=True).encode()).hexdigest()[:32] if ablations else None
        items = []
        for j in range(req.n):
            seed = row_seed(sp.seed, j)
            settings = EngineSettings(layers=layers, interventions=specs, seed=seed, sc=req.logprobs is not None)
            payload: dict[str, Any] = {
                "model": self._served_name,
                "prompt": ids,
                "max_tokens": sp.max_new_tokens,
                "temperature": sp.temperature,
                "top_p": sp.top_p,
                "seed": seed,
                "return_token_ids": True,
                "skip_special_tokens": True,
                "vllm_xargs": {SETTINGS_KEY: settings.encode()[SETTINGS_KEY]},
            }
            if salt is not None:
                payload["cache_salt"] = salt
            if sp.top_k is not None:
                payload["top_k"] = sp.top_k
            if req.logprobs is not None:
                payload["logprobs"] = max(req.logprobs, 1)
                payload["return_tokens_as_token_ids"] = True
            items.append(payload)
        return {"layers": layers, "ids": ids, "items": items}

    def _candidate(self, j: int, req: GenerationRequest, p: dict[str, Any], out: dict[str, Any]) -> Candidate:
        choice = (out.get("choices") or [{}])[0]
        ids = [int(t) for t in choice.get("token_ids") or []]
        params = out.get("kv_transfer_params") or {}
        records = params.get(TOKEN_KEY)
        if records is None:
            raise BackendError(
                f"the vLLM server at {self.url} returned no l2reason records: it runs without the plugin "
                "(start it with `l2reason serve --engine vllm`)"
            )
        for rec in records:
            if rec and rec.get("e"):
                raise ConfigError(f"the server's l2reason plugin rejected the request: {rec['e']}")
        if len(records) < len(ids):
            raise BackendError(f"the vLLM plugin returned {len(records)} records for {len(ids)} tokens")
        fr = choice.get("finish_reason")
        finish = "length" if fr == "length" else "eos"
        text = str(choice.get("text", ""))
        T = len(ids)
        stops = list(req.sampling.stop)
        if stops:
            cut = self._stop_cut(ids, stops)
            if cut is not None:
                T, text, finish = cut[0], cut[1], "stop"
        ids, records = ids[:T], records[:T]
        layers = p["layers"]
        norms = None
        if req.norms is not None and layers:
            arr = torch.tensor([rec["n"] for rec in records], dtype=torch.float32).reshape(T, len(layers))
            norms = self.norm_stats(arr, layers, req.norms)
        lps = None
        if req.logprobs is not None:
            lp = choice.get("logprobs") or {}
            chosen = [float(x) if x is not None else -math.inf for x in (lp.get("token_logprobs") or [])][:T]
            top = None
            if req.logprobs:
                top = [
                    sorted((float(v) for v in (d or {}).values()), reverse=True)[: req.logprobs]
                    for d in (lp.get("top_logprobs") or [])
                ][:T]
            lps = TokenLogprobs(
                logprob=chosen,
                top_logprobs=top,
                self_certainty=[float(rec.get("sc", math.nan)) for rec in records],
                confidence=[-sum(r) / len(r) for r in top] if top else None,
            )
        report = (records[-1] or {}).get("r", {}) if records else {}
        usage = out.get("usage") or {}
        return Candidate(
            index=j,
            text=text,
            finish_reason=finish,  # type: ignore[arg-type]
            prompt_tokens=int(usage.get("prompt_tokens", len(p["ids"]))),
            completion_tokens=T,
            tokens=[self.tokenizer.decode([t]) for t in ids],
            logprobs=lps,
            norms=norms,
            interventions=report,
        )

    def _stop_cut(self, ids: list[int], stops: list[str]) -> tuple[int, str] | None:
        """(tokens kept, text before the stop string) for the first token whose text completes a stop string."""
        if not any(s in self.tokenizer.decode(ids, skip_special_tokens=True) for s in stops):
            return None
        for k in range(1, len(ids) + 1):
            text = self.tokenizer.decode(ids[:k], skip_special_tokens=True)
            hits = [i for i in (text.find(s) for s in stops) if i >= 0]
            if hits:
                return k, text[: min(hits)]
        return None

    def _check_plugin(self) -> None:
        """One 1-token request with settings: the plugin must answer with a record."""
        probe = {
            "model": self._served_name,
            "prompt": encode_prompt(self.tokenizer, GenerationRequest(prompt="ping")),
            "max_tokens": 1,
            "temperature": 0.0,
            "vllm_xargs": {SETTINGS_KEY: EngineSettings(layers=[0]).encode()[SETTINGS_KEY]},
        }
        out = self._call("POST", "/v1/completions", probe, timeout=min(self.timeout, 120.0))
        recs = (out.get("kv_transfer_params") or {}).get(TOKEN_KEY)
        if not recs or not recs[0] or "n" not in recs[0]:
            raise BackendError(
                f"the vLLM server at {self.url} runs without the l2reason plugin (no per-token norms came back); "
                "start it with `l2reason serve --engine vllm` (or python -m l2reason_vllm.launch)"
            )
