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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from l2reason.backends.base import GenerationRequest
from l2reason.backends.engine_client import EngineClient, Reply
from l2reason.errors import BackendError
from l2reason.serving.settings import TOKEN_KEY, EngineSettings

__all__ = ["SGLangBackend", "parse_url"]


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

    Example:
        >>> be = SGLangBackend("sglang://127.0.0.1:30000")  # doctest: +SKIP
        >>> be.generate(GenerationRequest(prompt="2+2=")).candidates[0].norms.layers  # doctest: +SKIP
        [18, 19, 20, 21, 22]
    """

    name = "sglang"
    engine = "SGLang"
    scheme = "sglang"
    server_noun = "an SGLang server"
    info_path = "/model_info"
    generate_path = "/generate"
    serve_command = "l2reason serve"
    default_url = "http://127.0.0.1:30000"

    def _server_info(self) -> tuple[str, Any]:
        info = self._info("the model's info")
        model_path = info.get("model_path")
        if not isinstance(model_path, str) or not model_path:
            raise BackendError(f"the SGLang server at {self.url} answered {self.info_path} without a model_path")
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
        """One batched ``/generate`` call for every item (SGLang batches them continuously)."""
        payload: dict[str, Any] = {
            "input_ids": [it["ids"] for it in items],
            "sampling_params": [it["sp"] for it in items],
        }
        if any(r.logprobs is not None for r in requests):
            k_top = max((r.logprobs or 0) for r in requests)
            payload.update(return_logprob=True, top_logprobs_num=k_top, logprob_start_len=-1)
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
