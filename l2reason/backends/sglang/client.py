"""``SGLangBackend``: the backend protocol against a running SGLang server with the l2reason plugin.

The server does the generation (continuous batching, tensor/data parallel,
behind SGLang's router if you like) and, through the plugin, reports per-token
norms and runs the interventions with the same controllers as the embedded
backend. This client turns a :class:`~l2reason.backends.base.GenerationRequest`
into one batched native ``/generate`` call (``n`` candidates = ``n`` prompts,
each with its own seed) and each output back into a candidate. Everything but
SGLang's wire format (HTTP, tokenizer, model and plugin checks, records into
candidates, summaries and selection) is
:class:`~l2reason.backends.engine_client.EngineClient`'s, shared with vLLM.

SGLang's format: settings go in ``sampling_params["custom_params"]``, records
come back in ``meta_info["l2r"]``, logprobs in ``meta_info["output_token_logprobs"]``
and ``["output_top_logprobs"]`` (rows of ``[logprob, token id, text]``).

**Behind SGLang's router** (the model gateway, ``smg``): the gateway refuses a
``/generate`` whose ``sampling_params`` is a list (HTTP 422, "invalid type: map,
expected f32") and does not forward ``/model_info`` (only the older
``/get_model_info``, which SGLang still serves). The client then sends **one
``/generate`` per candidate** (one prompt, one ``sampling_params`` object, the
same payload the batched call carries for that candidate), concurrently, and
puts the answers back in candidate order: the gateway spreads them over its
workers. That mode is chosen automatically when the server has no
``/model_info`` (a gateway, or an SGLang older than ``/model_info``), or with
``per_candidate=True``. A candidate is self-contained (its prompt, its seed,
its settings), so both modes give the same tokens, norms and selection.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from l2reason.backends.base import GenerationRequest
from l2reason.backends.engine_client import EngineClient, Reply, _count
from l2reason.errors import BackendError, ConfigError
from l2reason.serving.settings import TOKEN_KEY, EngineSettings

log = logging.getLogger(__name__)

__all__ = ["SGLangBackend", "parse_url"]

#: what SGLang's router (the model gateway) forwards instead of ``/model_info`` (an older SGLang has only it)
LEGACY_INFO_PATH = "/get_model_info"


class SGLangBackend(EngineClient):
    """A client of an SGLang server started with the l2reason plugin (``l2reason serve``).

    Args:
        url: the server, ``http://host:port`` or ``sglang://host:port`` (default ``http://127.0.0.1:30000``).
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
        per_candidate: send one ``/generate`` per candidate (concurrently)
            instead of one batched call: what SGLang's router needs. None
            (default): only when the server has no ``/model_info`` (the
            router answers 404 there); then the model is read from
            ``/get_model_info``.
        concurrency: at most this many per-candidate calls in flight.

    Example:
        >>> be = SGLangBackend("sglang://127.0.0.1:30000")  # doctest: +SKIP
        >>> be.generate(GenerationRequest(prompt="2+2=")).candidates[0].norms.layers  # doctest: +SKIP
        [18, 19, 20, 21, 22]
        >>> routed = SGLangBackend("sglang://127.0.0.1:30080")  # the router (smg) in front of replicas  # doctest: +SKIP
        >>> routed.per_candidate  # detected: no /model_info there  # doctest: +SKIP
        True
    """

    name = "sglang"
    engine = "SGLang"
    scheme = "sglang"
    server_noun = "an SGLang server"
    info_path = "/model_info"
    generate_path = "/generate"
    serve_command = "l2reason serve"
    default_url = "http://127.0.0.1:30000"

    def __init__(
        self, url: str | None = None, *, per_candidate: bool | None = None, concurrency: int = 64, **kwargs: Any
    ) -> None:
        if per_candidate is not None and not isinstance(per_candidate, bool):
            raise ConfigError(f"per_candidate must be True, False or None (got {per_candidate!r})")
        self.per_candidate: bool | None = per_candidate  # None until the server has been asked (in _server_info)
        self.model_info_path: str = self.info_path  # the route that named the model (/get_model_info on a router)
        self.concurrency = _count("concurrency", concurrency, lo=1)
        self.keepalive = max(self.keepalive, self.concurrency)
        super().__init__(url, **kwargs)

    def _server_info(self) -> tuple[str, Any]:
        """The model from ``/model_info``; a server without it (404: SGLang's router) is asked at
        ``/get_model_info`` and, unless ``per_candidate`` was given, gets one call per candidate."""
        path = self.info_path
        try:
            info = self._info("the model's info")
        except BackendError as e:
            if f"{self.url}{path} answered HTTP 404" not in str(e):
                raise
            path = LEGACY_INFO_PATH
            info = self._obj(self._call("GET", path, timeout=min(self.timeout, 30.0)), path, "the model's info")
            if self.per_candidate is None:
                self.per_candidate = True
                log.info("%s has no %s (SGLang's router?): one /generate per candidate", self.url, self.info_path)
        if self.per_candidate is None:
            self.per_candidate = False
        self.model_info_path = path  # the route that answered
        model_path = info.get("model_path")
        if not isinstance(model_path, str) or not model_path:
            raise BackendError(f"the SGLang server at {self.url} answered {path} without a model_path")
        return model_path, info.get("context_length")

    def _item(self, req: GenerationRequest, ids: list[int], settings: EngineSettings) -> dict[str, Any]:
        sp = req.sampling
        params: dict[str, Any] = {
            "temperature": sp.temperature,
            "top_p": sp.top_p,
            "top_k": sp.top_k if sp.top_k is not None else -1,
            "max_new_tokens": sp.max_new_tokens,
            "stop": list(sp.stop),
            "sampling_seed": settings.seed,
            "skip_special_tokens": True,
            "custom_params": settings.encode(),
        }
        return {"ids": ids, "sp": params}

    def _send(
        self, requests: Sequence[GenerationRequest], items: list[dict[str, Any]], *, timeout: float | None = None
    ) -> list[Any]:
        """One batched ``/generate`` call for every item (SGLang batches them continuously), or, in
        :attr:`per_candidate` mode, one call per item, at most :attr:`concurrency` in flight, answers in order."""
        extra: dict[str, Any] = {}
        if any(r.logprobs is not None for r in requests):
            k_top = max((r.logprobs or 0) for r in requests)
            extra.update(return_logprob=True, top_logprobs_num=k_top, logprob_start_len=-1)
        if self.per_candidate:
            return self._send_each(items, extra, timeout)
        payload = {"input_ids": [it["ids"] for it in items], "sampling_params": [it["sp"] for it in items], **extra}
        out = self._call("POST", self.generate_path, payload, timeout=timeout)
        if isinstance(out, dict):
            out = [out]
        if not isinstance(out, list) or len(out) != len(items):
            n = len(out) if isinstance(out, list) else "no list of"
            raise BackendError(
                f"the SGLang server at {self.url} answered {self.generate_path} with {n} outputs for {len(items)} "
                "prompts"
            )
        return out

    def _send_each(self, items: list[dict[str, Any]], extra: dict[str, Any], timeout: float | None) -> list[Any]:
        """One ``/generate`` per item (one prompt, one ``sampling_params`` object: what SGLang's router takes),
        concurrently; each answer must be one output object."""

        def one(item: dict[str, Any]) -> Any:
            out = self._call(
                "POST",
                self.generate_path,
                {"input_ids": item["ids"], "sampling_params": item["sp"], **extra},
                timeout=timeout,
            )
            if isinstance(out, list) and len(out) == 1:
                out = out[0]
            return self._obj(out, self.generate_path, "the output of one prompt")

        if len(items) == 1:
            return [one(items[0])]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(one, items))

    def _parse(self, out: Any, req: GenerationRequest) -> Reply:
        out = self._obj(out, self.generate_path, "an output")
        meta = self._obj(out.get("meta_info") or {}, self.generate_path, "meta_info")
        fr = meta.get("finish_reason") or {}
        kind = fr.get("type") if isinstance(fr, dict) else str(fr)
        matched = fr.get("matched") if isinstance(fr, dict) else None
        error = str(fr.get("message", fr) if isinstance(fr, dict) else fr) if kind == "abort" else None
        chosen = top = None
        if req.logprobs is not None:
            chosen = [float(x[0]) if x[0] is not None else -math.inf for x in meta.get("output_token_logprobs") or []]
            if req.logprobs:
                top = [[float(e[0]) for e in row] for row in meta.get("output_top_logprobs") or []]
        prompt_tokens = meta.get("prompt_tokens")
        return Reply(
            ids=[int(t) for t in out.get("output_ids") or []],
            text=str(out.get("text", "")),
            finish="length" if kind == "length" else "stop" if isinstance(matched, str) else "eos",
            records=meta.get(TOKEN_KEY),
            prompt_tokens=int(prompt_tokens) if prompt_tokens is not None else None,
            logprob=chosen,
            top=top,
            error=error,
        )


#: ``sglang://host:port`` (or ``http(s)://…``) -> the server's base URL, checked
#: (:meth:`~l2reason.backends.engine_client.EngineClient.parse_address`)
parse_url = SGLangBackend.parse_address
