"""The engine behind ``dspy.LM("l2reason/<model>", engine=L2Engine(...), async_engine=...)``.

DSPy 3.4's supported route for a custom model is an *engine*: an object with
``complete(dspy.lm15.Request) -> dspy.lm15.Response``. DSPy owns the cache,
retries, history and the fan-out of ``n``; the engine makes one attempt.

What crosses the boundary:

- **in**: chat messages (system + user/assistant turns from ChatAdapter or
  JSONAdapter), ``max_tokens``, ``temperature``, ``top_p``, ``top_k``,
  ``stop``, ``seed``; per-call l2reason settings in
  ``request.config.extensions["metadata"]["l2reason"]`` (a JSON dict, see
  :class:`L2CallSettings`). DSPy puts ``metadata`` into the cache key, so two
  calls with different l2reason settings never share a cache entry. The
  settings are typed on both sides of that JSON: the modules hold
  :class:`~l2reason.techniques.specs.AnySpec` objects and write them once
  (:meth:`L2CallSettings.to_json`), the engine parses the dict once
  (:meth:`L2CallSettings.parse`) and hands the specs to the
  :class:`~l2reason.backends.base.GenerationRequest` as they are.
- **out**: the chosen candidate's text as the assistant message; usage counts
  (prompt tokens once, completion tokens of *all* candidates); and in
  ``response.provider_data["l2reason"]`` a compact JSON summary (scores per
  candidate, per-layer mean norms, the selection, intervention reports).
  ``provider_data`` is stored in DSPy's cache with the response, so a cache
  hit returns the same summary. Per-token arrays are left out unless
  ``per_token=True``.

Sampling seeds. DSPy strips ``rollout_id`` before the engine sees a request;
it only changes the cache key. So that different rollouts still give
different samples (``temperature > 0``), the ``k``-th time one engine serves
an identical request it uses sample stream ``k``: the seed is a hash of
(base seed, request content, k). A fresh process replaying the same calls in
the same order gets the same samples; a cache hit never reaches the engine.

Streaming. Under ``dspy.streamify`` DSPy asks the engine for ``stream(request)``
events instead of ``complete``: for ``n=1`` on a backend that streams (the
transformers backend) the text arrives as it decodes, one ``TextDelta`` per
backend delta; the final ``StreamEndEvent`` carries the same
``provider_data["l2reason"]`` summary as ``complete``. With ``n>1`` (a choice
among candidates needs all of them) or a backend without token streaming the
whole answer is one delta at the end.

Candidates that do not parse. When an l2reason module's adapter makes the call
(:data:`PARSE_CHECK` is set) and the request selects among ``n > 1``
candidates, each candidate's text is parsed with the adapter that formatted
the request (found by its system message). If the selector's choice does not
parse but others do, the selection is made again, by the same selector
(:func:`l2reason.select.select_result`), among the candidates that parse only,
as pruned candidates are left out. If none parses, the choice stands, a
warning is logged and the summary says ``"parsed": False``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from l2reason.errors import CapabilityError, ConfigError
from l2reason.techniques.specs import InterventionSpec

log = logging.getLogger(__name__)

__all__ = ["PARSE_CHECK", "AsyncL2Engine", "L2CallSettings", "L2Engine", "get_backend", "register_backend"]

_LOGPROB_K = 5  # top-k logprobs requested for the logprob-based selectors (DeepConf uses top-k means)
_PROBE_LOGPROB_K = 20  # the l2-probe's confidence features: the evaluation's top-k
_MAX_OCCURRENCES = 65_536  # distinct requests whose occurrence count an engine remembers (LRU)

#: Set by an l2reason module's adapter around its LM call: given a request's
#: system message, a ``text -> parses?`` test of the adapter that formatted it
#: (``None`` when it cannot tell). Unset: candidates are not checked.
PARSE_CHECK: ContextVar[Callable[[str], Callable[[str], bool] | None] | None] = ContextVar(
    "l2reason_parse_check", default=None
)

from l2reason.backends.shared import get_backend, register_backend  # noqa: E402  (re-exported)


@contextlib.contextmanager
def _dspy_errors() -> Iterator[None]:
    """l2reason's request errors as the ``dspy.lm15`` errors DSPy expects from an engine."""
    from dspy.lm15 import CapabilityError as LM15CapabilityError
    from dspy.lm15 import InvalidRequestError

    try:
        yield
    except CapabilityError as e:
        raise LM15CapabilityError(str(e), feature="l2reason") from e
    except ConfigError as e:
        raise InvalidRequestError(str(e), provider="l2reason") from e


# ---- per-call settings -------------------------------------------------------


class L2CallSettings(BaseModel):
    """What one LM call asks of l2reason (travels as ``metadata={"l2reason": {...}}``).

    Args:
        n: candidates sampled in one batched backend call (>= 1).
        selection: a :class:`~l2reason.backends.base.SelectionSpec` as a dict;
            with ``n > 1`` and no selection the default (``l2``, ``B/T``) is used.
        interventions: intervention specs (:class:`~l2reason.techniques.specs.AnySpec`),
            or dicts with a ``kind`` (``{"kind": "erss", ...}``), parsed here once.
        layers: the layers whose norms are captured (``"band"``, ``"all"`` or indices).
        score: the ℓ2 score reported as ``score`` for each call, or ``"probe"``
            (the ``l2-probe`` selection's logit of the chosen candidate).
        tau: thresholds for the A/B/C/D scores: ``"pooled"`` (Q3 + 1.5·IQR of
            this call's candidates' norms, no calibration needed) or
            ``"calibrated"`` (the backend's calibration file).
        per_token: also return per-token norms (large; off by default).
        candidate_text: return every candidate's text when ``n > 1``.
        seed: base seed; ``None`` = the engine's default.
        temperature: overrides the request's temperature.

    Example:
        >>> L2CallSettings(n=4, score="C/T").n
        4
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    n: int = Field(1, ge=1, le=256)
    selection: dict[str, Any] | None = None
    interventions: list[InterventionSpec] = Field(default_factory=list)
    layers: list[int] | Literal["band", "all"] = "band"
    score: str = "B/T"
    tau: Literal["pooled", "calibrated"] = "pooled"
    per_token: bool = False
    candidate_text: bool = True
    seed: int | None = None
    temperature: float | None = Field(None, ge=0.0, le=10.0)

    @field_validator("score")
    @classmethod
    def _score(cls, v: str) -> str:
        from l2reason.techniques.selection import SCORE_NAMES

        if v not in (*SCORE_NAMES, "probe"):
            raise ValueError(f"unknown score {v!r}; valid scores: {', '.join(SCORE_NAMES)}, probe")
        return v

    @field_validator("interventions", mode="before")
    @classmethod
    def _interventions(cls, v: Any) -> Any:
        from l2reason.backends.base import intervention_list

        return intervention_list(v)  # specs pass through; dicts are parsed, with the spec's message

    @classmethod
    def parse(cls, data: Any, *, base: L2CallSettings | None = None) -> L2CallSettings:
        """Validate, raising :class:`ConfigError` with pydantic's message.

        Args:
            data: a dict of fields (JSON, or with typed specs), an
                ``L2CallSettings``, or ``None`` (the defaults).
            base: settings the fields given in ``data`` override (the
                engine's defaults).
        """
        if data is None:
            data = {}
        if isinstance(data, L2CallSettings):
            parsed = data
        elif not isinstance(data, dict):
            raise ConfigError(f"metadata['l2reason'] must be a dict, got {type(data).__name__}")
        else:
            try:
                parsed = cls(**data)
            except ValidationError as e:
                raise ConfigError(f"invalid l2reason call settings: {e}") from e
        return parsed if base is None else base.updated(parsed)

    def updated(self, other: L2CallSettings, *, add_interventions: bool = False) -> L2CallSettings:
        """These settings with the fields ``other`` set (its interventions appended when ``add_interventions``)."""
        upd = {k: getattr(other, k) for k in other.model_fields_set}
        if add_interventions and self.interventions:
            upd["interventions"] = [*self.interventions, *other.interventions]
        return self.model_copy(update=upd)

    def to_json(
        self, *, drop: Literal["unset", "defaults"] = "unset", exclude: set[str] | None = None
    ) -> dict[str, Any]:
        """The settings as JSON (DSPy's ``metadata``, the summary): ``drop``-ped fields left out, specs whole.

        The one place a module's typed specs become JSON on their way to the engine.
        """
        out = self.model_dump(
            mode="json",
            exclude_unset=drop == "unset",
            exclude_defaults=drop == "defaults",
            exclude={"interventions", *(exclude or ())},
        )
        if self.interventions and "interventions" not in (exclude or ()):
            out["interventions"] = [spec.model_dump(mode="json") for spec in self.interventions]
        return out


# ---- the engine ----------------------------------------------------------------


def _text_of(message: Any) -> str:
    from dspy.lm15 import TextPart

    out = []
    for part in message.parts:
        if not isinstance(part, TextPart):
            from dspy.lm15 import UnsupportedFeatureError

            raise UnsupportedFeatureError(
                f"l2reason serves text only; got a {type(part).__name__} in a {message.role} message",
                feature=type(part).__name__,
            )
        out.append(part.text)
    return "".join(out)


class L2Engine:
    """A DSPy 3.4 engine that serves an l2reason backend.

    Args:
        model: a model spec (``"default"``, ``"fast"``, a path) or a backend
            object (e.g. :class:`~l2reason.backends.hf.HFBackend`). A spec is
            loaded on first use and shared by every engine naming it.
        name: the name a saved program records (default: the spec, or the
            backend's ``model_id``); :func:`register_backend` makes it loadable.
        max_tokens: ``max_new_tokens`` when a request gives no ``max_tokens``.
        temperature: the temperature when a request gives none.
        seed: base seed of the sample streams.
        defaults: l2reason call settings applied under each call's own.

    Example:
        >>> import dspy
        >>> from l2reason.dspy import L2Engine, AsyncL2Engine
        >>> eng = L2Engine("fast")
        >>> lm = dspy.LM("l2reason/fast", engine=eng, async_engine=AsyncL2Engine(eng))  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any = "default",
        *,
        name: str | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int = 0,
        defaults: dict[str, Any] | L2CallSettings | None = None,
    ) -> None:
        if isinstance(model, str):
            self._spec: str = name or model
            self._backend: Any = None
            if name is not None and name != model:
                register_backend(name, get_backend(model))
        else:
            if not callable(getattr(model, "generate", None)) or not hasattr(model, "capabilities"):
                raise ConfigError(
                    f"L2Engine needs a model spec string or an l2reason backend, got {type(model).__name__}"
                )
            self._backend = model
            self._spec = name or str(model.model_id)
            register_backend(self._spec, model)
        if max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1 (got {max_tokens})")
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.seed = int(seed)
        self._defaults = L2CallSettings.parse(defaults)
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, int] = OrderedDict()

    @property
    def defaults(self) -> dict[str, Any]:
        """The default call settings as JSON (what :meth:`dump_state` saves)."""
        return self._defaults.to_json(drop="defaults")

    # ---- DSPy's engine protocol --------------------------------------
    @property
    def backend(self) -> Any:
        """The l2reason backend (loaded on first use)."""
        if self._backend is None:
            self._backend = get_backend(self._spec)
        return self._backend

    @property
    def name(self) -> str:
        return self._spec

    def complete(self, request: Any) -> Any:
        """Serve one ``dspy.lm15.Request`` with one backend call."""
        from dspy.clients.engines.base import validate_request

        validate_request(request)
        with _dspy_errors():
            gen_req, settings = self.build_request(request)
            result = self.backend.generate(gen_req)
        return self.to_response(request, result, settings)

    def _streams_tokens(self, gen_req: Any) -> bool:
        return gen_req.n == 1 and callable(getattr(self.backend, "generate_stream", None))

    def stream(self, request: Any) -> Iterator[Any]:
        """Serve one request as ``dspy.lm15`` stream events (see the module docstring).

        Example:
            >>> events = list(eng.stream(request))  # doctest: +SKIP
            >>> "".join(e.delta.text for e in events if e.type == "delta")  # doctest: +SKIP
        """
        from dspy.clients.engines.base import validate_request
        from dspy.lm15 import StreamStartEvent, response_to_events

        validate_request(request)
        with _dspy_errors():
            gen_req, settings = self.build_request(request)
        if not self._streams_tokens(gen_req):
            with _dspy_errors():
                result = self.backend.generate(gen_req)
            yield from response_to_events(self.to_response(request, result, settings))
            return
        yield StreamStartEvent(model=request.model)
        with _dspy_errors(), contextlib.closing(self.backend.generate_stream(gen_req)) as events:
            for ev in events:
                out = self._stream_event(request, ev, settings)
                if out is not None:
                    yield out

    async def astream(self, request: Any) -> AsyncIterator[Any]:
        """:meth:`stream` for an event loop: decoding never blocks the loop."""
        from dspy.clients.engines.base import validate_request
        from dspy.lm15 import StreamStartEvent, response_to_events

        validate_request(request)
        with _dspy_errors():
            gen_req, settings = self.build_request(request)
        agen = getattr(self.backend, "agenerate_stream", None)
        if gen_req.n != 1 or not callable(agen):
            with _dspy_errors():
                result = await asyncio.to_thread(self.backend.generate, gen_req)
            for event in response_to_events(self.to_response(request, result, settings)):
                yield event
            return
        yield StreamStartEvent(model=request.model)
        events = agen(gen_req)
        try:
            with _dspy_errors():
                async for ev in events:
                    out = self._stream_event(request, ev, settings)
                    if out is not None:
                        yield out
        finally:
            await events.aclose()  # a consumer that stops early stops the decoding

    def _stream_event(self, request: Any, ev: Any, settings: L2CallSettings) -> Any:
        from dspy.lm15 import StreamDeltaEvent, StreamEndEvent, TextDelta

        if ev.kind in ("delta", "finish"):
            return StreamDeltaEvent(delta=TextDelta(text=ev.text)) if ev.text else None
        resp = self.to_response(request, ev.result, settings)
        return StreamEndEvent(finish_reason=resp.finish_reason, usage=resp.usage, provider_data=resp.provider_data)

    def close(self) -> None:
        """Nothing to close: the backend is shared and outlives the engine."""

    def __deepcopy__(self, memo: dict[int, Any]) -> L2Engine:
        # Engines are borrowed runtime objects (they hold a model): a deep copy
        # of a program (BestOfN, optimizers) must share, not clone, them.
        return self

    # ---- saving --------------------------------------------------------
    def dump_state(self) -> dict[str, Any]:
        """JSON state for ``dspy.LM.dump_state`` (the model name, never weights)."""
        return {
            "model": self._spec,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "defaults": self.defaults,
        }

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> L2Engine:
        """Rebuild from :meth:`dump_state`; the model is loaded lazily by name."""
        state = dict(state)
        return cls(
            state.pop("model", "default"),
            max_tokens=state.get("max_tokens", 256),
            temperature=state.get("temperature", 0.0),
            seed=state.get("seed", 0),
            defaults=state.get("defaults") or {},
        )

    # ---- translation ---------------------------------------------------
    def build_request(self, request: Any) -> tuple[Any, L2CallSettings]:
        """The l2reason :class:`GenerationRequest` for a ``dspy.lm15.Request``."""
        from dspy.lm15 import UnsupportedFeatureError

        from l2reason.backends.base import GenerationRequest, Message, NormSpec, SamplingParams
        from l2reason.select import LOGPROB_METHODS
        from l2reason.techniques.probe import PROBE_METHODS

        if request.tools:
            raise UnsupportedFeatureError(
                "l2reason engines do not do native tool calling; use dspy.ReAct with the default ChatAdapter "
                "(tools are described in the prompt)",
                feature="tools",
            )
        cfg = request.config
        ext = dict(cfg.extensions or {})
        meta = ext.get("metadata") or {}
        if not isinstance(meta, dict):
            raise ConfigError(f"metadata must be a dict, got {type(meta).__name__}")
        settings = L2CallSettings.parse(meta.get("l2reason"), base=self._defaults)
        if settings.tau == "calibrated" and getattr(self.backend, "calibration", None) is None:
            raise ConfigError(
                f"tau='calibrated' needs a calibration file for {self.name!r}; run `l2reason calibrate` "
                "or use tau='pooled'"
            )
        unsupported = {spec.kind for spec in settings.interventions} - set(self.backend.capabilities.interventions)
        if unsupported:
            raise CapabilityError(
                f"backend {self.name!r} cannot run {sorted(unsupported)}; it supports: "
                f"{sorted(self.backend.capabilities.interventions) or 'no interventions'}"
            )

        messages: list[Message] = []
        system = _system_text(request)
        if system.strip():
            messages.append(Message(role="system", content=system))
        for m in request.messages:
            role = {"developer": "system"}.get(m.role, m.role)
            messages.append(Message(role=role, content=_text_of(m)))

        temperature = settings.temperature
        if temperature is None:
            temperature = self.temperature if cfg.temperature is None else float(cfg.temperature)
        base_seed = settings.seed if settings.seed is not None else cfg.seed if cfg.seed is not None else self.seed
        content = json.dumps(
            [[m.role, m.content] for m in messages]
            + [temperature, cfg.top_p, cfg.top_k, list(cfg.stop), cfg.max_tokens, settings.model_dump(mode="json")],
            sort_keys=True,
        )
        seed = self._stream_seed(base_seed, content)
        sampling = SamplingParams(
            temperature=temperature,
            top_p=1.0 if cfg.top_p in (None, 0) else float(cfg.top_p),
            top_k=cfg.top_k,
            max_new_tokens=cfg.max_tokens or self.max_tokens,
            stop=list(cfg.stop),
            seed=seed,
        )
        selection = _selection(settings)
        logprobs = _LOGPROB_K if selection is not None and selection.method in LOGPROB_METHODS else None
        layers = settings.layers
        if selection is not None and selection.method in PROBE_METHODS:
            logprobs = _PROBE_LOGPROB_K  # the probe's confidence features were fitted with the evaluation's top-20
            layers = "all" if layers == "band" else layers  # it reads every layer's norms
        gen = GenerationRequest.build(
            messages=messages,
            sampling=sampling,
            n=settings.n,
            norms=NormSpec(layers=layers, per_token=True),  # selection needs per-token norms
            logprobs=logprobs,
            interventions=settings.interventions,  # typed specs, parsed once (in L2CallSettings.parse)
            selection=selection,
        )
        return gen, settings

    def _stream_seed(self, base: int, content: str) -> int:
        """Seed of the k-th identical request served by this engine (see the module docstring)."""
        key = hashlib.blake2b(f"{base}\x00{content}".encode(), digest_size=16).hexdigest()
        with self._lock:
            k = self._seen.pop(key, 0)
            self._seen[key] = k + 1
            while len(self._seen) > _MAX_OCCURRENCES:
                self._seen.popitem(last=False)
        h = hashlib.blake2b(f"{key}:{k}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "little") & ((1 << 62) - 1)

    def to_response(self, request: Any, result: Any, settings: L2CallSettings) -> Any:
        """A ``dspy.lm15.Response`` for a backend result (summary in ``provider_data``).

        First keeps the choice among candidates that parse (:meth:`keep_parsed`).
        """
        from dspy.lm15 import Message as LMessage
        from dspy.lm15 import Response, TextPart, Usage

        parsed = self.keep_parsed(request, result, settings)
        chosen = result.candidates[result.chosen_index]
        prompt_tokens = chosen.prompt_tokens
        completion = sum(c.completion_tokens for c in result.candidates)
        be = self.backend
        cal = getattr(be, "calibration", None) if settings.tau == "calibrated" else None
        summary = summarize(
            result, settings, num_layers=getattr(be, "num_layers", None), calibration=cal, parsed=parsed
        )
        return Response(
            id=None,
            model=request.model,
            message=LMessage.assistant([TextPart(chosen.text)]),
            finish_reason="length" if chosen.finish_reason == "length" else "stop",
            usage=Usage(input_tokens=prompt_tokens, output_tokens=completion),
            provider_data={"l2reason": summary},
        )

    def keep_parsed(self, request: Any, result: Any, settings: L2CallSettings) -> list[bool] | None:
        """Never return a candidate that does not parse while one that does exists (module docstring).

        Re-selects in place, with the request's own selector, among the
        candidates whose text the adapter parses; their selection scores stay,
        the others' become ``None``, and ``selection["details"]["parsed"]``
        lists those that took part.

        Returns:
            per candidate, whether its text parses; ``None`` when nothing was
            checked (no :data:`PARSE_CHECK`, no selection, one candidate, or an
            adapter whose request it cannot recognise).
        """
        check = PARSE_CHECK.get()
        spec = _selection(settings)
        if check is None or spec is None or len(result.candidates) < 2:
            return None
        parses = check(_system_text(request))
        if parses is None:
            return None
        ok = [bool(parses(c.text)) for c in result.candidates]
        chosen = result.chosen_index
        keep = [i for i, good in enumerate(ok) if good]
        if ok[chosen]:
            return ok
        if not keep:
            log.warning(
                "none of the %d candidates parses into the signature's output fields; returning the selector's "
                "choice (candidate %d): pred.l2.parsed is False",
                len(ok),
                chosen,
            )
            return ok
        from l2reason.select import apply_selection, on_subset, select_result

        be = self.backend
        needs_cal = spec.tau == "calibrated" or spec.method.startswith("l2-probe")
        sub = result.model_copy(update={"candidates": [result.candidates[i] for i in keep]})
        sel = select_result(
            sub, spec, calibration=be.calibration if needs_cal else None, num_layers=getattr(be, "num_layers", None)
        )
        sel = on_subset(sel, keep, len(ok))  # back to every candidate's index; the others score NaN
        sel.details["parsed"] = sel.details.pop("survivors")
        apply_selection(result, sel)
        log.info("candidate %d did not parse; %s chose candidate %d among %s", chosen, spec.method, sel.index, keep)
        return ok


def _system_text(request: Any) -> str:
    """A ``dspy.lm15.Request``'s system message as one string ("" without one)."""
    if request.system is None:
        return ""
    return request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)


def _selection(settings: L2CallSettings) -> Any:
    """The :class:`~l2reason.backends.base.SelectionSpec` a call's settings ask for (``None``: no selection)."""
    from l2reason.backends.base import SelectionSpec

    if settings.n <= 1 and settings.selection is None:
        return None
    sel = dict(settings.selection or {})
    sel.setdefault("score", settings.score if settings.score != "probe" else "B/T")
    sel.setdefault("tau", settings.tau)
    return SelectionSpec(**sel)


class AsyncL2Engine:
    """The async counterpart of :class:`L2Engine` (runs it in a worker thread).

    Args:
        sync: the :class:`L2Engine` to share (one backend, one lock).

    Example:
        >>> eng = L2Engine("fast")  # doctest: +SKIP
        >>> aeng = AsyncL2Engine(eng)  # doctest: +SKIP
    """

    def __init__(self, sync: L2Engine) -> None:
        if not isinstance(sync, L2Engine):
            raise ConfigError(f"AsyncL2Engine wraps an L2Engine, got {type(sync).__name__}")
        self.sync = sync

    async def complete(self, request: Any) -> Any:
        return await asyncio.to_thread(self.sync.complete, request)

    async def stream(self, request: Any) -> AsyncIterator[Any]:
        async for event in self.sync.astream(request):
            yield event

    async def aclose(self) -> None:
        """Nothing to close."""

    def __deepcopy__(self, memo: dict[int, Any]) -> AsyncL2Engine:
        return self

    def dump_state(self) -> dict[str, Any]:
        return self.sync.dump_state()

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> AsyncL2Engine:
        return cls(L2Engine.load_state(state))


# ---- the compact summary ------------------------------------------------------


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if v == v and v not in (float("inf"), float("-inf")) else None


def _compact(obj: Any, *, keep_lists: bool, depth: int = 0) -> Any:
    """JSON-safe, small: long lists (per-token traces) dropped unless asked for."""
    if isinstance(obj, dict):
        return {str(k): _compact(v, keep_lists=keep_lists, depth=depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if not keep_lists and len(obj) > 64:
            return {"len": len(obj)}
        return [_compact(v, keep_lists=keep_lists, depth=depth + 1) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return _finite(obj)
    if hasattr(obj, "item"):
        return _compact(obj.item(), keep_lists=keep_lists)
    return str(obj)


def summarize(
    result: Any,
    settings: L2CallSettings,
    *,
    num_layers: int | None = None,
    calibration: Any = None,
    parsed: list[bool] | None = None,
) -> dict[str, Any]:
    """The ``provider_data["l2reason"]`` summary of one backend result.

    Keys: ``model_id``, ``n``, ``chosen`` (candidate index), ``score_name``,
    ``score`` (the chosen candidate's ℓ2 score), ``scores`` (every ℓ2 score
    of the chosen candidate), ``selection`` (method, index, scores, answer,
    groups; ``None`` when ``n == 1``), ``candidates`` (per candidate: index,
    finish_reason, completion_tokens, ``scores`` for every score name,
    per-layer ``mean`` norm, ``T``, ``interventions``; ``text`` when
    ``n > 1``), ``layers`` and ``tau`` used, ``interventions`` (the chosen
    candidate's report), ``seconds``, and ``parsed``: whether the chosen
    candidate's text parses into the signature's fields (``None`` when not
    checked; then per candidate too, see :meth:`L2Engine.keep_parsed`).
    """
    from l2reason.select import candidate_signals, pooled_tau
    from l2reason.techniques.selection import SCORE_NAMES, l2_scores

    per_score: dict[str, list[float | None]] = {s: [None] * len(result.candidates) for s in SCORE_NAMES}
    layers: list[int] = []
    tau_out: list[float] | None = None
    try:
        cands, layers = candidate_signals(result, layers="band", num_layers=num_layers, extractor=lambda _t: None)
        if layers and any(c.band_norms.size for c in cands):
            if settings.tau == "calibrated" and calibration is not None:
                tau = calibration.tau_for(layers).numpy()
            else:
                tau = pooled_tau(cands)
            tau_out = [float(t) for t in tau]
            for s in SCORE_NAMES:
                per_score[s] = [_finite(v) for v in l2_scores(cands, tau, s)]
    except ConfigError as e:
        log.debug("no l2 scores for this call: %s", e)

    sel = result.selection
    if sel and str(sel.get("method") or "").startswith("l2-probe"):
        per_score["probe"] = [None if v is None else _finite(v) for v in sel.get("scores") or []]
    chosen = result.chosen_index
    cands_out = [
        _candidate_summary(result, i, {s: v[i] if i < len(v) else None for s, v in per_score.items()}, settings)
        for i in range(len(result.candidates))
    ]
    if parsed is not None:
        for d, ok in zip(cands_out, parsed, strict=True):
            d["parsed"] = ok
    selection = None
    if sel:
        selection = {
            "method": sel.get("method"),
            "index": sel.get("index"),
            "answer": sel.get("answer"),
            "scores": sel.get("scores"),
            "groups": sel.get("groups"),
            "score": (sel.get("details") or {}).get("score"),
        }
    chosen_scores = cands_out[chosen]["scores"]
    return {
        "model_id": result.model_id,
        "backend": result.backend,
        "n": len(result.candidates),
        "chosen": chosen,
        "score_name": settings.score,
        "score": chosen_scores.get(settings.score),
        "scores": chosen_scores,
        "selection": _compact(selection, keep_lists=True),
        "layers": layers,
        "tau": tau_out,
        "candidates": cands_out,
        "interventions": cands_out[chosen].get("interventions", {}),
        "settings": settings.to_json(drop="defaults"),
        "seconds": round(float(result.seconds), 4),
        "parsed": None if parsed is None else parsed[chosen],
    }


def _candidate_summary(
    result: Any, i: int, scores: dict[str, float | None], settings: L2CallSettings
) -> dict[str, Any]:
    """One candidate's entry of :func:`summarize`'s ``candidates``."""
    c = result.candidates[i]
    d: dict[str, Any] = {
        "index": c.index,
        "finish_reason": c.finish_reason,
        "completion_tokens": c.completion_tokens,
        "scores": scores,
    }
    if c.norms is not None:
        d["mean"] = [_finite(x) for x in c.norms.mean]
        d["T"] = c.norms.T
        if settings.per_token:
            d["per_token"] = c.norms.per_token
            d["masked"] = c.norms.masked
    if c.interventions:
        d["interventions"] = _compact(c.interventions, keep_lists=settings.per_token)
    if len(result.candidates) > 1 and settings.candidate_text:
        d["text"] = c.text
    return d


def copy_engine(engine: L2Engine) -> L2Engine:
    """A new engine over the same backend with fresh sample-stream counters."""
    new = copy.copy(engine)
    new._lock = threading.Lock()
    new._seen = OrderedDict()
    return new
