"""The embedded, in-process transformers backend.

It runs its own decode loop (not ``model.generate``) so that, at every step,
forward hooks on the decoder layers can (a) read the ℓ2 norm of the residual
stream for every row and (b) hand the newest token's state to per-step
controllers (recursion, steering, suppression) that may replace it.

All candidates of all prompts in one call share one forward pass per step
(left padding). Hooks exist only inside a call and are removed even when
generation raises. Calls are serialised by a lock, so threads (DSPy's
``Evaluate``) get exactly the results of serial calls.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from l2reason.backends.base import (
    Candidate,
    Capabilities,
    GenerationRequest,
    GenerationResult,
    NormSpec,
    StreamEvent,
    TokenLogprobs,
)
from l2reason.backends.common import CalibrationMixin, encode_prompt, iterate_in_thread, row_seed
from l2reason.backends.hf.decode import DecodeState, _Capture, _PrunePlan, _Row, _Step
from l2reason.backends.hf.layers import find_decoder_layers, layer_output_tensor, make_rerun, replace_layer_output
from l2reason.backends.validate import ModelLimits, check_context, validate_requests
from l2reason.errors import BackendError, CapabilityError, ConfigError, L2ReasonWarning, PartialResultsError
from l2reason.signal.band import resolve_layers
from l2reason.signal.norms import token_norms
from l2reason.techniques.controllers import CONTROLLERS, LayerController, StepContext, build_controllers
from l2reason.techniques.pruning import PruneTracker

log = logging.getLogger(__name__)


def top_p_support(lg: torch.Tensor, top_p: float, start_k: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The nucleus of ``lg [g, V]``: the smallest prefix (by probability) whose mass reaches ``top_p``.

    Returns ``(logits [g, k], token ids [g, k])`` with ``-inf`` outside each
    row's nucleus. Exact, without sorting the whole vocabulary: the nucleus
    lies inside the top-k as soon as the top-k mass reaches ``top_p``, so k
    grows (x4) only for the rare flat distributions that need more.
    """
    V = lg.shape[-1]
    probs = torch.softmax(lg, -1)
    k = min(start_k, V)
    while True:
        vals, inds = torch.topk(probs, k, dim=-1)  # sorted, descending
        cum = vals.cumsum(-1)
        if k == V or bool((cum[:, -1] >= top_p).all()):
            break
        k = min(k * 4, V)
    keep = (cum - vals) < top_p  # the first entry is always kept
    return torch.where(keep, lg.gather(-1, inds), torch.full_like(vals, float("-inf"))), inds


@dataclass
class _TextStream:
    """One candidate's streamed text: its tokens so far, the text sent, and what is not sent yet."""

    ids: list[int] = field(default_factory=list)
    sent: str = ""
    pending_ids: list[int] = field(default_factory=list)
    pending_norms: list[list[float]] = field(default_factory=list)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string."""
    hold = 0
    for s in stops:
        for m in range(min(len(s), len(text)), hold, -1):
            if text.endswith(s[:m]):
                hold = m
                break
    return hold


class HFBackend(CalibrationMixin):
    """In-process backend on a Hugging Face transformers causal LM.

    Args:
        model: a ``LoadedModel`` from :func:`l2reason.load_model`, or a model
            spec string (``"default"``, ``"fast"``, a path, a hub id).
        layers_path: override for where the decoder layers live
            (``"model.layers"``) when the model family is unknown.
        calibration: a :class:`~l2reason.signal.calibration.Calibration` (or
            path) used when a request asks for ``tau="calibrated"``.

    Example:
        >>> from l2reason import HFBackend, GenerationRequest, Message
        >>> be = HFBackend("fast")  # doctest: +SKIP
        >>> r = be.generate(GenerationRequest(messages=[Message(role="user", content="Hi")]))  # doctest: +SKIP
        >>> r.candidates[0].norms.layers  # doctest: +SKIP
        [23, 24, 25, 26, 27, 28]
    """

    name = "hf"

    def __init__(self, model: Any = "default", *, layers_path: str | None = None, calibration: Any = None) -> None:
        from l2reason.models import LoadedModel, load_model

        lm = model if isinstance(model, LoadedModel) else load_model(model) if isinstance(model, str) else None
        if lm is None:
            raise ConfigError(f"HFBackend needs a LoadedModel or a model spec string, got {type(model).__name__}")
        self.loaded = lm
        self.model: Any = lm.model
        self.tokenizer = lm.tokenizer
        self.layers, self.layers_path = find_decoder_layers(self.model, layers_path)
        self._lock = threading.RLock()
        self._streaming: set[int] = set()  # threads with a suspended generate_stream (holding the lock)
        self._calibration = self._load_calibration(calibration, lm.model_id)
        self.controller_factories: dict[str, Any] = {}
        eos = self.model.generation_config.eos_token_id if getattr(self.model, "generation_config", None) else None
        ids = {eos} if isinstance(eos, int) else set(eos or [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        self.eos_ids: set[int] = ids
        pad = self.tokenizer.pad_token_id
        self.pad_id: int = int(pad if pad is not None else min(ids) if ids else 0)
        import inspect

        # transformers >= 5.2x names the cache argument `cache` (was `past_key_values`)
        self._cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self.controller_factories.update(CONTROLLERS)

    # ---- protocol -----------------------------------------------------
    @property
    def model_id(self) -> str:  # type: ignore[override]  # the mixin declares it as a plain attribute
        return self.loaded.model_id

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def weights_sha256(self) -> str | None:
        """sha256 of the source weights when known (packaged models); keys the shipped calibrations."""
        return self.loaded.weights_sha256

    @property
    def context_length(self) -> int | None:
        """The model's maximum positions (``max_position_embeddings``), if its config says."""
        n = getattr(self.model.config, "max_position_embeddings", None)
        return int(n) if isinstance(n, int) and n > 0 else None

    def limits(self) -> ModelLimits:
        """What :func:`~l2reason.backends.validate.validate_request` checks requests against."""
        vocab = getattr(self.model.config, "vocab_size", None)
        return ModelLimits(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            context_length=self.context_length,
            vocab_size=int(vocab) if isinstance(vocab, int) else None,
            capabilities=self.capabilities,
            calibration=lambda: self.calibration,
            dtype_max=float(torch.finfo(self.dtype).max),
        )

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            name=self.name,
            interventions=frozenset(self.controller_factories),
            exact_erss=True,
            pruning=True,
            hidden_states=True,
        )

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate ``request.n`` candidates for one prompt (one batch)."""
        return self.generate_many([request])[0]

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate for several prompts, all candidates in one batch per group.

        Requests with the same norm spec, logprobs and interventions share a
        batch; others run one group after another.
        """
        requests = validate_requests(requests, self.limits())
        if not requests:
            return []
        ctx = self.context_length
        for i, r in enumerate(requests):
            try:
                check_context(len(self.prompt_ids(r)), r, ctx)
            except ConfigError as e:
                raise ConfigError(f"request #{i}: {e}" if len(requests) > 1 else str(e)) from e
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            key = r.model_dump_json(include={"norms", "logprobs", "interventions", "collect"})
            groups.setdefault(key, []).append(i)
        results: list[GenerationResult | None] = [None] * len(requests)
        with self._lock:
            self._check_no_open_stream()
            for idx in groups.values():
                try:
                    group = self._generate_group([requests[i] for i in idx])
                except Exception as e:
                    if all(r is None for r in results):
                        raise  # nothing finished: the original error, unchanged
                    failed = [i for i, r in enumerate(results) if r is None]
                    raise PartialResultsError(
                        f"{len(failed)} of {len(requests)} requests failed ({type(e).__name__}: {e}); "
                        "the finished ones are in this error's `results`",
                        results,
                        failed,
                    ) from e
                for i, res in zip(idx, group, strict=True):
                    results[i] = res
        return [r for r in results if r is not None]

    def generate_stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        """Generate like :meth:`generate`, yielding :class:`StreamEvent` s as tokens are decoded.

        The events come from the same decode loop as :meth:`generate` (no extra
        forward passes) and end with a ``"result"`` event holding exactly what
        :meth:`generate` returns. The request is checked now; decoding starts at
        the first ``next()``. The backend's lock is held from then until the
        ``"result"`` event (yielded after the lock is released): close it (``close()``, leaving a ``for`` loop by
        ``break`` inside a ``with contextlib.closing(...)``, or dropping it) to
        stop decoding early, which removes the hooks and releases the lock.
        Other threads wait; the same thread cannot call the backend while its
        stream is open (:class:`~l2reason.errors.BackendError`).

        Example:
            >>> for ev in be.generate_stream(GenerationRequest(prompt="2+2=")):  # doctest: +SKIP
            ...     print(ev.text, end="")
        """
        req = validate_requests([request], self.limits())[0]
        check_context(len(self.prompt_ids(req)), req, self.context_length)
        return self._stream(req)

    async def agenerate_stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """:meth:`generate_stream` for asyncio: decoding runs in a worker thread; cancelling the consuming
        task (or closing the iterator) stops decoding after the current step and removes the hooks."""
        async for ev in iterate_in_thread(self.generate_stream(request)):
            yield ev

    def _check_no_open_stream(self) -> None:
        if threading.get_ident() in self._streaming:
            raise BackendError(
                "this thread has an unfinished generate_stream of this backend: consume it to the end or "
                "close() it before the next call"
            )

    def _stream(self, req: GenerationRequest) -> Iterator[StreamEvent]:
        with self._lock:
            self._check_no_open_stream()
            me = threading.get_ident()
            self._streaming.add(me)
            try:
                result = yield from self._stream_events(req)
            finally:
                self._streaming.discard(me)
        yield StreamEvent(kind="result", result=result)  # after the lock: the consumer may call the backend now

    def _stream_events(self, req: GenerationRequest) -> Generator[StreamEvent, None, GenerationResult]:
        layers = self.resolve_norm_layers(req.norms) or None
        stops = req.sampling.stop
        states = [_TextStream() for _ in range(req.n)]

        def event(kind: str, j: int, text: str, reason: str | None = None) -> StreamEvent:
            st = states[j]
            ev = StreamEvent(
                kind=kind,  # type: ignore[arg-type]
                candidate=j,
                text=text,
                token_ids=st.pending_ids,
                layers=layers,
                norms=st.pending_norms if layers else None,
                finish_reason=reason,
            )
            st.pending_ids, st.pending_norms = [], []
            return ev

        steps = self._decode([req], stream=True)
        try:
            while True:
                try:
                    step = next(steps)
                except StopIteration as end:
                    results: list[GenerationResult] = end.value
                    break
                for j, tok, nrm in zip(step.rows, step.tokens, step.norms, strict=True):
                    st = states[j]
                    st.ids.append(tok)
                    st.pending_ids.append(tok)
                    st.pending_norms.append(nrm)
                    if j in step.finished:
                        continue
                    text = self.tokenizer.decode(st.ids, skip_special_tokens=True).rstrip("\ufffd")
                    safe = text[: len(text) - _held_back(text, stops)]
                    if len(safe) > len(st.sent) and safe.startswith(st.sent):
                        delta, st.sent = safe[len(st.sent) :], safe
                        yield event("delta", j, delta)
                for j, reason in step.finished.items():
                    st = states[j]
                    final = self._final_text(st.ids, reason, stops)
                    if not final.startswith(st.sent):
                        log.warning("candidate %d: streamed text is not a prefix of its final text", j)
                    yield event("finish", j, final[len(st.sent) :], reason)
                    st.sent = final
        finally:
            steps.close()  # stops decoding and removes the hooks when the consumer stopped early
        return results[0]

    # ---- internals ----------------------------------------------------
    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        return encode_prompt(self.tokenizer, request)

    def resolve_norm_layers(self, spec: NormSpec | None) -> list[int]:
        if spec is None:
            return []
        return resolve_layers(spec.layers, self.num_layers)

    def _controllers(self, request: GenerationRequest, rows: int, seeds: torch.Tensor) -> list[LayerController]:
        try:
            return build_controllers(
                list(request.interventions), info=self, rows=rows, seeds=seeds, factories=self.controller_factories
            )
        except CapabilityError as e:
            raise CapabilityError(
                f"backend {self.name!r}: {e}; it supports: {', '.join(sorted(self.controller_factories)) or 'none'}"
            ) from e

    @contextmanager
    def _hooks(self, cap: _Capture) -> Iterator[None]:
        handles: list[Any] = []
        try:
            for layer in sorted(set(cap.layers) | set(cap.controllers) | set(cap.scol)):
                handles.append(self.layers[layer].register_forward_hook(self._make_hook(cap, layer), with_kwargs=True))
            for layer in sorted(cap.mlp_layers):
                mlp = getattr(self.layers[layer], "mlp", None)
                if mlp is None:
                    raise CapabilityError(
                        f"layer {layer} has no `.mlp` submodule; use an injection that needs no MLP hook"
                    )
                handles.append(mlp.register_forward_hook(self._make_mlp_hook(cap, layer)))
            yield
        finally:
            for h in handles:
                h.remove()

    def _make_mlp_hook(self, cap: _Capture, layer: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            cap.mlp_out[layer] = layer_output_tensor(output)[:, -1, :]

        return hook

    def _make_hook(self, cap: _Capture, layer: int) -> Any:
        col = cap.col.get(layer)
        scol = cap.scol.get(layer)
        ctrls = cap.controllers.get(layer, [])

        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> Any:
            h = layer_output_tensor(output)  # [B, q, d]
            x = h[:, -1, :]
            changed = False
            if ctrls and not cap.prefill:
                assert cap.valid is not None and cap.seeds is not None
                ctx = StepContext(
                    step=cap.step,
                    valid=cap.valid,
                    rerun=_LastTokenRerun(make_rerun(module, args if args else (h,), kwargs), h),
                    mlp_out=cap.mlp_out.get(layer),
                    rows=cap.rows,
                )
                for c in ctrls:
                    x_new = c.step(layer, x, token_norms(x), ctx)
                    if x_new is not x:
                        x, changed = x_new, True
            if col is not None:
                cap.current[:, col] = token_norms(x)
            if scol is not None and cap.states is not None:  # the very state the norm above is taken of
                cap.states[:, scol] = x.float()
            if ctrls and not cap.prefill:  # an intervened state must stay finite (checked before sampling)
                cap.nonfinite.append(
                    (layer, ~torch.isfinite(cap.current[:, col] if col is not None else token_norms(x)))
                )
            if changed:
                h = h.clone()
                h[:, -1, :] = x.to(h.dtype)
                return replace_layer_output(output, h)
            return None

        return hook

    def _sample(self, logits: torch.Tensor, rows: list[_Row], gens: list[torch.Generator]) -> torch.Tensor:
        """Greedy or seeded sampling, row by row in effect, batched in compute.

        Rows with the same sampling settings are filtered together (temperature,
        top-k, top-p); each row then draws from its own generator, so a
        candidate depends only on its own seed.
        """
        out = logits.argmax(-1)
        groups: dict[tuple[float, int | None, float], list[int]] = {}
        for i, r in enumerate(rows):
            s = r.sampling
            if s.temperature > 0:
                groups.setdefault((s.temperature, s.top_k, s.top_p), []).append(i)
        for (temp, top_k, top_p), idx in groups.items():
            lg = logits[idx] / temp  # [g, V]
            if top_k is not None and top_k < lg.shape[-1]:
                kth = torch.topk(lg, top_k, dim=-1).values[:, -1:]
                lg = lg.masked_fill(lg < kth, float("-inf"))
            inds: torch.Tensor | None = None
            if top_p < 1.0:
                lg, inds = top_p_support(lg, top_p)
            # Inverse-CDF draw: exactly one uniform per row and step from the row's own
            # generator, so a candidate never depends on its siblings (nor on k).
            cdf = torch.softmax(lg, -1).cumsum(-1)
            u = torch.stack([torch.rand((), generator=gens[i], device=lg.device) for i in idx]) * cdf[:, -1]
            c = torch.searchsorted(cdf, u[:, None].contiguous(), right=True)[:, 0].clamp_max(lg.shape[-1] - 1)
            out[idx] = inds.gather(-1, c[:, None])[:, 0] if inds is not None else c
        return out

    def _prune_plans(
        self, requests: list[GenerationRequest], out_layers: list[int], max_new: int
    ) -> tuple[list[_PrunePlan | None], list[int]]:
        """One pruning plan per request (None without ``prune``), and the layers pruning adds to the capture."""
        plans: list[_PrunePlan | None] = []
        extra: list[int] = []
        start = 0
        for req in requests:
            p = req.prune
            if p is None or req.n < 2:
                plans.append(None)
                start += req.n
                continue
            layers: list[int] = []
            tau = None
            if p.score == "l2":
                layers = resolve_layers(p.layers, self.num_layers)
                if p.l2_stat == "exceedance":
                    if p.tau == "calibrated":
                        tau = self.calibrated_tau(layers, "prune tau='calibrated'", "pass explicit tau values").numpy()
                    else:
                        assert isinstance(p.tau, list)
                        if len(p.tau) != len(layers):
                            raise ConfigError(
                                f"prune.tau has {len(p.tau)} values but prune.layers resolves to {len(layers)} layers {layers}"
                            )
                        tau = np.asarray(p.tau, dtype=np.float64)
                extra += [layer for layer in layers if layer not in out_layers and layer not in extra]
            plans.append(_PrunePlan(p, PruneTracker(p, req.n, max_new), start, layers, tau))
            start += req.n
        return plans, extra

    def _generate_group(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        steps = self._decode(requests)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    @torch.no_grad()
    def _decode(
        self, requests: list[GenerationRequest], stream: bool = False
    ) -> Generator[_Step, None, list[GenerationResult]]:
        """The decode loop of one group; returns its results.

        With ``stream``, it yields a :class:`_Step` after every decode step (the
        tokens just sampled, their norms, the rows that finished); closing the
        generator there stops decoding and removes the hooks. Without, it
        yields nothing.
        """
        from transformers import DynamicCache

        t0 = time.perf_counter()
        st = self._new_state(requests)
        cache = DynamicCache(config=self.model.config)
        try:
            with self._hooks(st.cap):
                logits = self._prefill(st, cache)  # [B, V]: the distribution of token 0
                for t in range(st.max_new):
                    logits = logits.float()
                    done_before = st.done.clone() if stream else st.done
                    active = st.stop_nonfinite(t, logits)  # [b] the rows that emit token t
                    st.record(t, active)  # norms (and collected states) of step t
                    nxt = st.emit(t, self._sample(logits, *st.batch_rows()), active)
                    if st.lp_chosen is not None:
                        st.record_logprobs(t, logits, nxt)
                    st.advance(nxt, active)  # EOS, max_new_tokens
                    st.check_stops(self.tokenizer.decode)
                    if st.pruning:
                        st.prune(t, active)
                    if stream:
                        yield st.step_event(t, active, done_before)
                    if bool(st.done.all()):
                        break
                    nxt = st.compact(cache, nxt)  # finished rows leave the batch and the KV cache
                    st.next_step(t + 1)
                    logits = self._forward(st, cache, nxt)
        except (ConfigError, CapabilityError):
            raise
        except Exception as e:
            raise BackendError(f"generation failed in the HF backend: {e.__class__.__name__}: {e}") from e
        if st.nonfinite:
            self._warn_nonfinite(st)
        return self._results(st, seconds=time.perf_counter() - t0)

    def _new_state(self, requests: list[GenerationRequest]) -> DecodeState:
        """The rows of a group (one per candidate), its controllers, pruning plans, capture and buffers."""
        req0 = requests[0]
        out_layers = self.resolve_norm_layers(req0.norms)  # the layers returned with each candidate
        rows: list[_Row] = []
        for ri, req in enumerate(requests):
            ids = self.prompt_ids(req)
            for j in range(req.n):
                rows.append(_Row(ri, j, ids, req.sampling, row_seed(req.sampling.seed, j)))
        device = next(self.model.parameters()).device
        seeds = torch.tensor([r.seed for r in rows], dtype=torch.int64, device=device)
        ctrls = self._controllers(req0, len(rows), seeds)
        max_new = max(r.sampling.max_new_tokens for r in rows)
        plans, extra = self._prune_plans(requests, out_layers, max_new)
        cap_layers = out_layers + extra  # pruning's ℓ2 layers are captured too, but not returned
        for p in plans:
            if p is not None:
                p.cols = [cap_layers.index(layer) for layer in p.layers]
        cspec = req0.collect  # the group shares it (groups are keyed by it)
        c_layers = resolve_layers(cspec.layers, self.num_layers) if cspec is not None else []
        return DecodeState(
            requests=requests,
            rows=rows,
            out_layers=out_layers,
            cap=_Capture.build(cap_layers, c_layers, ctrls, seeds, device),
            ctrls=ctrls,
            plans=plans,
            collect_layers=c_layers,
            hidden_size=self.hidden_size,
            pad_id=self.pad_id,
            eos_ids=self.eos_ids,
            device=device,
        )

    def _prefill(self, st: DecodeState, cache: Any) -> torch.Tensor:
        """Run the prompts; returns the logits of generated token 0, ``[B, V]``.

        Candidates of one prompt share its prefill: each distinct prompt runs
        once (left padding), then its KV cache, logits, norms and collected
        states are copied to its rows.
        """
        device, cap = st.device, st.cap
        uniq: dict[tuple[int, ...], int] = {}
        row2u = torch.tensor(
            [uniq.setdefault(tuple(r.prompt_ids), len(uniq)) for r in st.rows], dtype=torch.long, device=device
        )
        prompts = list(uniq)
        U, P = len(prompts), max(len(pids) for pids in prompts)
        input_ids = torch.full((U, P), self.pad_id, dtype=torch.long, device=device)
        attn = torch.zeros((U, P), dtype=torch.long, device=device)
        for u, pids in enumerate(prompts):
            input_ids[u, P - len(pids) :] = torch.tensor(pids, device=device)
            attn[u, P - len(pids) :] = 1
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        cap.current = torch.zeros(U, len(cap.layers), device=device)
        if st.collect is not None:
            cap.states = torch.zeros(U, len(st.collect_layers), self.hidden_size, device=device)
        cap.valid = torch.ones(U, dtype=torch.bool, device=device)
        cap.prefill = True
        out = self.model(
            input_ids=input_ids,
            attention_mask=attn,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kw: cache},
        )
        cap.prefill = False
        logits = out.logits[:, -1, :]
        if len(st.rows) != U:
            cache.batch_select_indices(row2u)
            logits = logits[row2u]
            attn, pos, cap.current = attn[row2u], pos[row2u], cap.current[row2u]
            if cap.states is not None:
                cap.states = cap.states[row2u]
        st.attn, st.pos = attn, pos
        return logits

    def _forward(self, st: DecodeState, cache: Any, nxt: torch.Tensor) -> torch.Tensor:
        """One decode forward of the rows in the batch on their newest tokens ``nxt [b]``; logits ``[b, V]``."""
        out = self.model(
            input_ids=nxt[:, None],
            attention_mask=st.attn,
            position_ids=st.pos,
            use_cache=True,
            **{self._cache_kw: cache},
        )
        return out.logits[:, -1, :]

    @staticmethod
    def _warn_nonfinite(st: DecodeState) -> None:
        """One warning for the rows that stopped on a non-finite state (the first five shown)."""
        shown = "; ".join(
            f"candidate {j}{f' of request {st.requests[r].request_id!r}' if st.requests[r].request_id else ''} at "
            f"step {s} (layers {ls or 'none captured; the logits'})"
            for r, j, s, ls in st.nonfinite[:5]
        )
        warnings.warn(
            f"{len(st.nonfinite)} candidate(s) stopped on a non-finite hidden state (inf/NaN), finish_reason "
            f"'nonfinite': {shown}{' ...' if len(st.nonfinite) > 5 else ''}. An intervention probably pushed the "
            "residual stream out of range (e.g. a steering vector or alpha far too large); scale it down",
            L2ReasonWarning,
            stacklevel=6,  # the caller of generate_many (via _generate_group, no_grad's generator frame, _decode)
        )

    def _results(self, st: DecodeState, seconds: float) -> list[GenerationResult]:
        """The group's results: candidates from the buffers, pruning reports, summaries and selection."""
        results: list[GenerationResult] = []
        for ri, req in enumerate(st.requests):
            plan = st.plans[ri]
            cands = [self._candidate(st, i) for i, r in enumerate(st.rows) if r.request == ri]
            res = GenerationResult(
                request_id=req.request_id, model_id=self.model_id, backend=self.name, candidates=cands, seconds=seconds
            )
            if plan is not None:
                res.prune = plan.tracker.request_report()
            results.append(self.finish(res, req, self.num_layers))
        return results

    def _final_text(self, ids: list[int], finish: str, stop: Sequence[str]) -> str:
        """A candidate's text from its token ids: EOS dropped, cut at the first stop string."""
        text_ids = [t for t in ids if t not in self.eos_ids] if finish == "eos" else ids
        text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
        if finish == "stop":
            cut = min((text.find(s) for s in stop if s in text), default=-1)
            if cut >= 0:
                text = text[:cut]
        return text

    def _candidate(self, st: DecodeState, i: int) -> Candidate:
        """Row ``i`` of the call as a :class:`Candidate` (text, tokens, norms, logprobs, reports, states)."""
        r = st.rows[i]
        req = st.requests[r.request]
        L = int(st.lengths[i])
        ids = st.gen_ids[i, :L].tolist()
        finish = st.finish[i]
        layers = st.out_layers
        norms = (
            self.norm_stats(st.norm_buf[i, :L, : len(layers)].cpu(), layers, req.norms)
            if req.norms is not None and layers
            else None
        )
        lps = None
        if st.lp_chosen is not None and st.lp_sc is not None:
            top = st.lp_top[i, :L] if st.lp_top is not None else None
            lps = TokenLogprobs(
                logprob=st.lp_chosen[i, :L].tolist(),
                top_logprobs=top.tolist() if top is not None else None,
                self_certainty=st.lp_sc[i, :L].tolist(),
                confidence=(-top.mean(-1)).tolist() if top is not None and top.shape[-1] else None,
            )
        report: dict[str, Any] = {}
        for c in st.ctrls:
            report.update(c.report(i))
        plan = st.plans[r.request]
        return Candidate(
            index=r.index,
            text=self._final_text(ids, finish, r.sampling.stop),
            finish_reason=finish,  # type: ignore[arg-type]
            prompt_tokens=len(r.prompt_ids),
            completion_tokens=L,
            tokens=[self.tokenizer.decode([t]) for t in ids],
            logprobs=lps,
            norms=norms,
            interventions=report,
            prune=plan.tracker.candidate_report(r.index) if plan is not None else None,
            states=st.collected(i),
        )


class _LastTokenRerun:
    """Adapts :func:`make_rerun` to the ``[B, d]`` newest-token view controllers use."""

    def __init__(self, rerun: Any, h: torch.Tensor) -> None:
        self._rerun = rerun
        self._h = h

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._h.shape[1] != 1:
            raise BackendError("re-running a layer is only supported at decode steps (one new token)")
        return self._rerun(x[:, None, :].to(self._h.dtype))[:, -1, :]
