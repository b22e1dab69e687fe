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
that channel). Everything but vLLM's wire format (HTTP, tokenizer, model and
plugin checks, records into candidates, summaries and selection) is
:class:`~l2reason.backends.engine_client.EngineClient`'s, shared with SGLang.

Stop strings are applied here, not by vLLM: vLLM checks them in its front end
and aborts the request there, and an aborted request returns no records. The
candidate is cut at the first stop string (its tokens and records with it);
generation past it is wasted work, bounded by ``max_new_tokens``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from l2reason.backends.base import GenerationRequest
from l2reason.backends.engine_client import EngineClient, Reply, _count
from l2reason.errors import BackendError
from l2reason.serving.settings import TOKEN_KEY, EngineSettings

__all__ = ["VLLMBackend", "parse_vllm_url"]


def _cache_salt(req: GenerationRequest) -> str | None:
    """vLLM's prefix-cache salt for a request with SAE ablations (None: none).

    An ablation changes the prompt's states, so its cached prompt blocks must not be shared with requests that
    run the prompt plain (or with other ablations): vLLM keys its prefix cache on the salt.
    """
    ablations = [s.model_dump(mode="json") for s in req.interventions if s.kind == "sae_ablate"]
    return hashlib.sha256(json.dumps(ablations, sort_keys=True).encode()).hexdigest()[:32] if ablations else None


class VLLMBackend(EngineClient):
    """A client of a vLLM server started with the l2reason plugin (``l2reason serve --engine vllm``).

    Args:
        url: the server, ``http://host:port`` or ``vllm://host:port``.
        concurrency: most completions in flight at once (an int >= 1).
        **kwargs: ``model``, ``tokenizer``, ``calibration``, ``timeout``, ``retries``, ``backoff``, as in
            :class:`~l2reason.backends.engine_client.EngineClient`.

    Example:
        >>> be = VLLMBackend("vllm://127.0.0.1:8000")  # doctest: +SKIP
        >>> be.generate(GenerationRequest(prompt="2+2=")).candidates[0].norms.layers  # doctest: +SKIP
        [18, 19, 20, 21, 22]
        >>> local = VLLMBackend.launch("default")  # starts (and owns) a server  # doctest: +SKIP
    """

    name = "vllm"
    engine = "vLLM"
    scheme = "vllm"
    server_noun = "a vLLM server"
    info_path = "/v1/models"
    generate_path = "/v1/completions"
    serve_command = "l2reason serve --engine vllm"
    default_url = "http://127.0.0.1:8000"

    def __init__(self, url: str = "http://127.0.0.1:8000", *, concurrency: int = 64, **kwargs: Any) -> None:
        self.concurrency = _count("concurrency", concurrency, lo=1)
        self.keepalive = max(self.keepalive, self.concurrency)
        self.server: Any = None
        super().__init__(url, **kwargs)

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
        """Stop the server this backend started (if it started one), and close the pooled connections."""
        if self.server is not None:
            self.server.stop()
            self.server = None
        super().close()

    def _server_info(self) -> tuple[str, Any]:
        path = self.info_path
        info = self._info("the model list")
        data = info.get("data")
        if not isinstance(data, list) or not data:
            raise BackendError(f"the vLLM server at {self.url} serves no model ({path} lists none)")
        m = self._obj(data[0], path, "a model entry")
        served = m.get("id")
        if not isinstance(served, str) or not served:
            raise BackendError(f"the vLLM server at {self.url} answered {path} with a model entry without an id")
        self._served_name = served
        return str(m.get("root") or served), m.get("max_model_len")

    # ---- generation -------------------------------------------------------
    def _send(
        self, requests: Sequence[GenerationRequest], items: list[dict[str, Any]], *, timeout: float | None = None
    ) -> list[Any]:
        """Every item as one completion, at most :attr:`concurrency` in flight (vLLM batches them)."""

        def complete(item: dict[str, Any]) -> Any:
            return self._call("POST", self.generate_path, item, timeout=timeout)

        if len(items) == 1:
            return [complete(items[0])]
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(items)))) as pool:
            return list(pool.map(complete, items))

    def _item(self, req: GenerationRequest, ids: list[int], settings: EngineSettings) -> dict[str, Any]:
        sp = req.sampling
        payload: dict[str, Any] = {
            "model": self._served_name,
            "prompt": ids,
            "max_tokens": sp.max_new_tokens,
            "temperature": sp.temperature,
            "top_p": sp.top_p,
            "seed": settings.seed,
            "return_token_ids": True,
            "skip_special_tokens": True,
            "vllm_xargs": settings.encode(),
        }
        salt = _cache_salt(req)
        if salt is not None:
            payload["cache_salt"] = salt
        if sp.top_k is not None:
            payload["top_k"] = sp.top_k
        if req.logprobs is not None:
            payload["logprobs"] = max(req.logprobs, 1)
            payload["return_tokens_as_token_ids"] = True
        return payload

    def _parse(self, out: Any, req: GenerationRequest) -> Reply:
        path = self.generate_path
        out = self._obj(out, path, "a completion")
        choices = out.get("choices")
        if not isinstance(choices, list) or not choices:
            raise BackendError(f"the vLLM server at {self.url} answered {path} with no choices")
        choice = self._obj(choices[0], path, "a choice")
        params = out.get("kv_transfer_params") or {}
        chosen = top = None
        if req.logprobs is not None:
            lp = choice.get("logprobs") or {}
            chosen = [float(x) if x is not None else -math.inf for x in lp.get("token_logprobs") or []]
            if req.logprobs:
                rows = lp.get("top_logprobs") or []
                top = [sorted((float(v) for v in (d or {}).values()), reverse=True) for d in rows]
        prompt_tokens = (out.get("usage") or {}).get("prompt_tokens")
        return Reply(
            ids=[int(t) for t in choice.get("token_ids") or []],
            text=str(choice.get("text", "")),
            finish="length" if choice.get("finish_reason") == "length" else "eos",
            records=params.get(TOKEN_KEY),
            prompt_tokens=int(prompt_tokens) if prompt_tokens is not None else None,
            logprob=chosen,
            top=top,
        )

    def _cut(self, reply: Reply, req: GenerationRequest) -> Reply:
        """The reply cut at its first stop string (vLLM is sent none: see the module's docstring)."""
        stops = list(req.sampling.stop)
        cut = self._stop_cut(reply.ids, stops) if stops else None
        if cut is None:
            return reply
        return replace(reply, ids=reply.ids[: cut[0]], text=cut[1], finish="stop")

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


#: ``vllm://host:port`` (or ``http(s)://…``) -> the server's base URL, checked
#: (:meth:`~l2reason.backends.engine_client.EngineClient.parse_address`)
parse_vllm_url = VLLMBackend.parse_address
