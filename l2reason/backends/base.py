"""The backend protocol: what any l2reason engine takes and gives back.

Everything here is plain pydantic data (lists of floats, never tensors), so a
remote engine (the SGLang server) can serve the same request and return the
same result over HTTP as the in-process :class:`~l2reason.backends.hf.HFBackend`.

Index convention: layer ``l`` (0-based) is the residual stream *after*
decoder layer ``l``, before the model's final norm: Hugging Face's
``output_hidden_states[l + 1]`` for ``l < L - 1``, while for the last layer
``L - 1`` transformers applies the final norm to ``output_hidden_states[L]``
and ours is the residual before it (see :mod:`l2reason.signal.band`). Decode step ``t`` (1-based) is the state at the
position that *produced* generated token ``t``: step 1 is the last prompt
position, step ``t > 1`` the position of generated token ``t - 1``. So every
generated token has exactly one norm per captured layer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from l2reason.errors import ConfigError, validation_summary
from l2reason.limits import (
    MAX_ABS_VALUE,
    MAX_LOGPROBS,
    MAX_MASSIVE_FACTOR,
    MAX_N,
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
    MAX_STOP,
    MAX_STOP_CHARS,
)

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def brief(e: Any) -> str:
    """A pydantic ``ValidationError`` as one short line per error: ``field: message``."""
    return validation_summary(e)


def intervention_list(v: Any) -> list[Any]:
    """A request's ``interventions`` field as parsed specs (None = none; specs pass through, dicts are parsed).

    Raises:
        ValueError: not a list or tuple (a lone dict included), or an entry
            that is not a valid intervention (the spec's own message).
    """
    from l2reason.techniques.specs import parse_interventions

    if v is None:
        return []
    if not isinstance(v, list | tuple):
        raise ValueError(
            f"interventions must be a list of intervention specs or dicts with a 'kind' (got {type(v).__name__})"
        )
    return parse_interventions(list(v))


def _no_repeats(v: Any) -> Any:
    if isinstance(v, list):
        if not v:
            raise ValueError('layers must not be empty: list layer indices or use "band"')
        if len(set(v)) != len(v):
            raise ValueError(f"layers must not repeat an index (got {v})")
    return v


def _check_tau(v: Any) -> Any:
    if isinstance(v, list):
        if not v:
            raise ValueError("tau must not be empty: one threshold per layer")
        bad = [x for x in v if not (np.isfinite(x) and 0 < x <= MAX_ABS_VALUE)]
        if bad:
            raise ValueError(f"tau values must be finite and in (0, {MAX_ABS_VALUE:g}] (got {bad[:3]})")
    return v


def _one_to(name: str, hi: int, hint: str = "") -> AfterValidator:
    """A validator of an int in ``[1, hi]`` whose message names the field (and ``hint``, the further bound)."""

    def check(v: int) -> int:
        if not 1 <= v <= hi:
            raise ValueError(f"{name} must be in [1, {hi}] (got {v})" + (f"; {hint}" if hint else ""))
        return v

    return AfterValidator(check)


def _known_name(v: str, info: ValidationInfo) -> str:
    """A selection method or ℓ2 score that names a registered selector or score."""
    from l2reason.techniques.baselines import SELECTORS
    from l2reason.techniques.selection import SCORE_NAMES

    names = {"method": ("selection method", sorted(SELECTORS)), "score": ("ℓ2 score", list(SCORE_NAMES))}
    what, valid = names[info.field_name or ""]
    if v not in valid:
        raise ValueError(f"unknown {what} {v!r}; valid: {', '.join(valid)}")
    return v


# Field types whose validation is shared by the specs below.
_Layers = Annotated[list[int] | Literal["band", "all"], AfterValidator(_no_repeats)]
_BandLayers = Annotated[list[int] | Literal["band"], AfterValidator(_no_repeats)]
_Tau = Annotated[list[float] | Literal["calibrated"] | None, AfterValidator(_check_tau)]


class Message(BaseModel):
    """One chat message."""

    model_config = _FROZEN
    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)


class SamplingParams(BaseModel):
    """How tokens are drawn.

    Args:
        temperature: 0 = greedy (argmax); > 0 samples from softmax(logits / T).
        top_p: nucleus mass in (0, 1].
        top_k: keep only the k most likely tokens (None = all).
        max_new_tokens: hard limit on generated tokens (>= 1).
        stop: strings that end a candidate (not included in its text).
        seed: base seed; candidate ``j`` of a request uses a seed derived from
            ``(seed, j)``, so the same seed gives the same text.
    """

    model_config = _FROZEN
    temperature: float = Field(0.0, ge=0.0, le=10.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=1, le=10_000_000)
    max_new_tokens: Annotated[
        int, _one_to("max_new_tokens", MAX_NEW_TOKENS, "the model's context length bounds it further")
    ] = 256
    stop: list[str] = Field(default_factory=list)
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_str(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v  # one stop string, not its characters

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: list[str]) -> list[str]:
        if any(s == "" for s in v):
            raise ValueError("stop strings must be non-empty")
        if len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings (got {len(v)})")
        if any(len(s) > MAX_STOP_CHARS for s in v):
            raise ValueError(f"stop strings must be at most {MAX_STOP_CHARS} characters")
        return v


class NormSpec(BaseModel):
    """Which ℓ2 statistics to return.

    Args:
        layers: ``"band"`` (the default layer band), ``"all"``, or layer
            indices (negative = from the end).
        per_token: return the ``[T][n_layers]`` norm array per candidate.
        tau: thresholds per returned layer for the A/B/C/D summaries:
            ``None`` (no summaries), ``"calibrated"`` (from the model's
            calibration file) or explicit floats aligned with ``layers``.
        tail_frac: the tail fraction of statistic D.
        mask_massive: exclude massive-activation tokens (norm > factor x the
            layer median) from summaries.
    """

    model_config = _FROZEN
    layers: _Layers = "band"
    per_token: bool = True
    tau: _Tau = None
    tail_frac: float = Field(0.3, gt=0.0, le=1.0, allow_inf_nan=False)
    mask_massive: bool = True
    massive_factor: float = Field(20.0, gt=1.0, le=MAX_MASSIVE_FACTOR, allow_inf_nan=False)


class SelectionSpec(BaseModel):
    """Pick one of the ``n`` candidates inside the same backend call.

    Args:
        method: a selector name: ``l2`` (argmax of an ℓ2 score), ``l2-vote``
            (ℓ2-weighted answer vote), ``majority``, ``shortest``, ``random``,
            ``self-certainty``, ``self-certainty-borda``, ``deepconf``,
            ``deepconf-tail``.
        score: the ℓ2 score for ``l2``/``l2-vote``: ``B/T`` (default), ``A/T``,
            ``C/T``, ``D/T``, ``z_mean``.
        tau: ``"calibrated"`` (the model's calibration file), ``"pooled"``
            (Q3 + 1.5·IQR of this call's pooled candidate norms per layer;
            the default, needs no calibration) or explicit per-layer floats.
        layers: the layers the ℓ2 score averages over (``"band"`` = the
            default band); they must be among the captured ``norms.layers``.
        params: extra selector parameters (e.g. ``{"keep_frac": 0.9}``).
    """

    model_config = _FROZEN
    method: str = "l2"
    score: str = "B/T"
    tau: Annotated[Literal["calibrated", "pooled"] | list[float], AfterValidator(_check_tau)] = "pooled"
    layers: _BandLayers = "band"
    seed: int = Field(0, ge=0, le=MAX_SEED)
    params: dict[str, Any] = Field(default_factory=dict)

    _names = field_validator("method", "score")(_known_name)

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, Any]) -> dict[str, Any]:
        for k, x in v.items():
            if isinstance(x, bool) or x is None or isinstance(x, str):
                continue
            if not isinstance(x, int | float) or not np.isfinite(x) or abs(x) > MAX_ABS_VALUE:
                raise ValueError(f"selection parameter {k!r} must be a finite number, bool or string (got {x!r})")
        return v


class PruneSpec(BaseModel):
    """Online pruning: stop a request's weakest candidates while they are generated.

    Each row (candidate) turns every generated token into a signal (``score``);
    its *running score* at ``L`` generated tokens is the mean signal over its
    last ``min(window, L)`` tokens, and its *lowest score* the minimum of the
    running score from ``L = warmup`` on. A still-running row is pruned as
    soon as its lowest score is below the threshold: it leaves the batch (and
    the KV cache), keeps the tokens it generated so far (exactly the prefix it
    would have generated anyway), ends with ``finish_reason="pruned"``, and
    takes no part in the request's selection. Higher scores are better.
    ``docs/techniques.md``, "Online pruning", has the rule in full.

    Args:
        score: the per-token signal: ``"confidence"`` (DeepConf token
            confidence ``-mean(top-k logprobs)``; needs ``logprobs >= 1``),
            ``"self-certainty"`` (needs ``logprobs`` set) or ``"l2"`` (the
            norms of ``layers``, see ``l2_stat``).
        threshold: a fixed value (e.g. chosen on a calibration split), or
            ``"first-finished"``: set once ``first`` rows of the request have
            finished on their own, as the ``quantile``-quantile of their lowest
            scores (DeepConf's online mode). Nothing is pruned before it is set.
        first: rows that must finish before ``"first-finished"`` sets the
            threshold (must be below ``n``).
        quantile: which quantile of the finished rows' lowest scores becomes
            the threshold (0 = the lowest, 1 = the highest; DeepConf keeping
            90% uses 0.1).
        warmup: tokens a row generates before it can be pruned.
        window: tokens in the running mean (DeepConf's group size is 2048).
        min_keep: rows never pruned: pruning stops once only this many
            unpruned rows of the request are left (lowest scores go first).
        layers: the layers of the ``"l2"`` signal (``"band"`` = the default band).
        l2_stat: ``"mean"`` (mean norm over ``layers``) or ``"exceedance"``
            (fraction of ``layers`` whose norm exceeds ``tau``).
        tau: per-layer thresholds for ``l2_stat="exceedance"``: one float per
            layer or ``"calibrated"`` (the model's calibration file).
        direction: ``"high"`` keeps rows with high signals; ``"low"`` negates
            the signal (prunes rows whose signal runs high).

    Example:
        >>> PruneSpec(score="confidence", threshold="first-finished", warmup=32).window
        2048
    """

    model_config = _FROZEN
    score: Literal["confidence", "self-certainty", "l2"] = "confidence"
    threshold: float | Literal["first-finished"] = "first-finished"
    first: int = Field(2, ge=1, le=MAX_N)
    quantile: float = Field(0.1, ge=0.0, le=1.0, allow_inf_nan=False)
    warmup: int = Field(64, ge=0, le=MAX_STEPS)
    window: int = Field(2048, ge=1, le=MAX_STEPS)
    min_keep: int = Field(1, ge=1, le=MAX_N)
    layers: _BandLayers = "band"
    l2_stat: Literal["mean", "exceedance"] = "mean"
    tau: _Tau = None
    direction: Literal["high", "low"] = "high"

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: Any) -> Any:
        if isinstance(v, float) and not (np.isfinite(v) and abs(v) <= MAX_ABS_VALUE):
            raise ValueError(f"threshold must be finite and within ±{MAX_ABS_VALUE:g} (got {v}), or 'first-finished'")
        return v

    @model_validator(mode="after")
    def _l2(self) -> PruneSpec:
        if self.score == "l2" and self.l2_stat == "exceedance" and self.tau is None:
            raise ValueError("l2_stat='exceedance' needs tau: one float per layer or 'calibrated'")
        if self.tau is not None and not (self.score == "l2" and self.l2_stat == "exceedance"):
            raise ValueError("tau is only used by score='l2' with l2_stat='exceedance'; drop it")
        return self


class CollectSpec(BaseModel):
    """Return the residual-stream vectors themselves (opt-in; ``GenerationRequest.collect``).

    The vectors are the very states the norms are taken of (the same hooks, no
    extra forward pass): layer ``l`` is the state after decoder layer ``l``,
    decode step ``t`` the position that produced generated token ``t`` (the
    module docstring has the convention), so ``‖states[t, j]‖`` equals the
    reported norm of layer ``layers[j]`` at step ``t``.

    Args:
        layers: ``"band"``, ``"all"`` or layer indices (negative = from the end);
            returned in ascending order (``HiddenStates.layers`` names them).
        positions: ``"decode"`` (one vector per generated token: ``[T, n_layers, d]``),
            ``"last"`` (the last decode step's: ``[n_layers, d]``) or ``"mean"``
            (the mean over decode steps: ``[n_layers, d]``).
        dtype: ``"float32"`` or ``"float16"`` (half the memory; rounding error ~1e-3 relative).

    Memory is bounded (:data:`l2reason.limits.MAX_COLLECT_BYTES`, counted for
    every candidate running to ``max_new_tokens``): beyond it the request is
    refused before the model runs.

    Example:
        >>> CollectSpec(layers=[20], positions="mean").dtype
        'float32'
    """

    model_config = _FROZEN
    layers: _Layers = "band"
    positions: Literal["decode", "last", "mean"] = "decode"
    dtype: Literal["float32", "float16"] = "float32"


class GenerationRequest(BaseModel):
    """One prompt, ``n`` candidates.

    Give exactly one of ``messages`` (chat; the model's chat template is
    applied) or ``prompt`` (raw text, no template).

    Example:
        >>> GenerationRequest(messages=[Message(role="user", content="2+2?")], n=4).n
        4
    """

    model_config = _FROZEN
    messages: list[Message] | None = None
    prompt: str | None = None
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    n: Annotated[int, _one_to("n (candidates per prompt)", MAX_N)] = 1
    norms: NormSpec | None = Field(default_factory=NormSpec)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    interventions: list[Any] = Field(default_factory=list)
    selection: SelectionSpec | None = None
    prune: PruneSpec | None = None
    collect: CollectSpec | None = None
    request_id: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_len(cls, v: str | None) -> str | None:
        if v is not None and len(v) > MAX_PROMPT_CHARS:
            raise ValueError(f"prompt has {len(v)} characters; at most {MAX_PROMPT_CHARS}")
        return v

    _interventions = field_validator("interventions", mode="before")(intervention_list)

    @model_validator(mode="after")
    def _one_input(self) -> GenerationRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of `messages` or `prompt`")
        if self.messages is not None:
            if not self.messages:
                raise ValueError("messages is empty: give at least one user message")
            if not any(m.content.strip() for m in self.messages):
                raise ValueError("every message is empty: give the model something to answer")
            if not any(m.content.strip() for m in self.messages if m.role in ("user", "tool")):
                raise ValueError(
                    "no user message has content: give the model a question (system and assistant turns alone "
                    "are not one)"
                )
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("prompt is empty: give the model something to answer")
        return self

    @model_validator(mode="after")
    def _prune(self) -> GenerationRequest:
        p = self.prune
        if p is None:
            return self
        if self.n <= p.min_keep:
            raise ValueError(
                f"prune needs n > prune.min_keep (got n={self.n}, min_keep={p.min_keep}): nothing could be pruned"
            )
        if p.threshold == "first-finished" and p.first >= self.n:
            raise ValueError(
                f"prune.first={p.first} rows must finish before the threshold is set, but n={self.n}: use first < n"
            )
        if p.score == "confidence" and not self.logprobs:
            raise ValueError(
                "prune score 'confidence' needs top-k logprobs: set logprobs=k with k >= 1 (DeepConf uses 20)"
            )
        if p.score == "self-certainty" and self.logprobs is None:
            raise ValueError("prune score 'self-certainty' needs logprobs: set logprobs=k (any k >= 0)")
        return self

    @classmethod
    def build(cls, **kw: Any) -> GenerationRequest:
        """Like the constructor, but raises :class:`ConfigError` with one line per bad field."""
        from pydantic import ValidationError

        try:
            return cls(**kw)
        except ValidationError as e:
            raise ConfigError(f"invalid generation request: {brief(e)}") from e


class TokenLogprobs(BaseModel):
    """Per-token probability information (compact lists, one entry per token).

    Args:
        logprob: log p of the chosen token (temperature-1 distribution).
        top_logprobs: the k largest log p per token (k = request.logprobs).
        self_certainty: ``SC_t = -(1/V) Σ_j log(V·p_j)`` (Kang et al. 2025).
        confidence: DeepConf token confidence ``C_t = -mean(top-k logprobs)``.
    """

    model_config = ConfigDict(extra="forbid")
    logprob: list[float]
    top_logprobs: list[list[float]] | None = None
    self_certainty: list[float]
    confidence: list[float] | None = None


class NormStats(BaseModel):
    """ℓ2 statistics of one candidate.

    Args:
        layers: the captured layer indices.
        per_token: ``[T][len(layers)]`` norms (``None`` if not requested).
        masked: ``[T]`` True where a token is excluded (massive activation).
        mean: per-layer mean norm over unmasked decode tokens.
        tau: the thresholds used for A/B/C/D (if any).
        A, B, C, D: per-layer sums (see ``docs/techniques.md``, "Statistics and
            scores"); T, T_tail counts.
    """

    model_config = ConfigDict(extra="forbid")
    layers: list[int]
    per_token: list[list[float]] | None = None
    masked: list[bool] | None = None
    mean: list[float]
    tau: list[float] | None = None
    A: list[float] | None = None
    B: list[float] | None = None
    C: list[float] | None = None
    D: list[float] | None = None
    T: int = 0
    T_tail: int = 0

    def array(self) -> np.ndarray:
        """The per-token norms as a ``[T, n_layers]`` float32 array."""
        if self.per_token is None:
            raise ConfigError("per-token norms were not requested (set NormSpec(per_token=True))")
        return np.asarray(self.per_token, dtype=np.float32).reshape(len(self.per_token), len(self.layers))

    def scores(self) -> dict[str, float]:
        """Length-normalised summaries averaged over layers: A/T, B/T, C/T, D/T."""
        out: dict[str, float] = {}
        if self.A is None or self.T == 0:
            return out
        for k in ("A", "B", "C"):
            out[f"{k}/T"] = float(np.mean(getattr(self, k))) / self.T
        if self.D is not None and self.T_tail > 0:
            out["D/T"] = float(np.mean(self.D)) / self.T_tail
        return out


class HiddenStates(BaseModel):
    """Collected residual-stream vectors of one candidate (see :class:`CollectSpec`).

    ``array`` is kept out of the JSON form (``model_dump`` / ``model_dump_json``):
    save it beside the JSON with :meth:`save` (``.npy``), never inline.

    Args:
        layers: the collected layer indices, in ``array``'s layer order.
        positions: ``"decode"``, ``"last"`` or ``"mean"``.
        array: ``[T, n_layers, d]`` for ``"decode"``, else ``[n_layers, d]`` (float16 or float32).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    layers: list[int]
    positions: Literal["decode", "last", "mean"]
    array: np.ndarray | None = Field(None, exclude=True, repr=False)  # None once read back from JSON

    def save(self, path: Any) -> Any:
        """Write ``array`` to ``path`` (``.npy``); returns the path."""
        from pathlib import Path

        if self.array is None:
            raise ConfigError("these hidden states carry no array (read back from JSON?): nothing to save")
        p = Path(path)
        np.save(p, self.array)
        return p


class Candidate(BaseModel):
    """One generated candidate.

    ``finish_reason``: ``eos``, ``stop`` (a stop string), ``length`` (the
    token limit), ``pruned`` (online pruning stopped it; see
    :class:`PruneSpec`) or ``nonfinite`` (its hidden state became inf/NaN; it
    stopped before emitting a token from it, with an ``L2ReasonWarning``).
    Pruned and non-finite candidates take no part in selection. ``prune``
    (requests with ``prune``): ``pruned``, ``step`` (tokens generated when
    pruned), ``score`` (the last running score) and ``lowest`` (the lowest
    running score since the warm-up).
    """

    model_config = ConfigDict(extra="forbid")
    index: int
    text: str
    finish_reason: Literal["stop", "eos", "length", "pruned", "nonfinite"]
    prompt_tokens: int
    completion_tokens: int
    tokens: list[str] | None = None
    logprobs: TokenLogprobs | None = None
    norms: NormStats | None = None
    interventions: dict[str, Any] = Field(default_factory=dict)
    score: float | None = None
    prune: dict[str, Any] | None = None
    states: HiddenStates | None = None  # requests with `collect`; not in the JSON form (HiddenStates.save)


class GenerationResult(BaseModel):
    """What a backend returns for one request.

    ``prune`` (requests with ``prune``): the ``threshold`` used and the step it
    was set (``threshold_step``), the ``pruned`` candidate indices with their
    ``pruned_steps``, and the number of ``survivors``.
    """

    model_config = ConfigDict(extra="forbid")
    request_id: str | None = None
    model_id: str
    backend: str
    candidates: list[Candidate]
    selection: dict[str, Any] | None = None
    prune: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def text(self) -> str:
        """The chosen candidate's text (candidate 0 when nothing selected)."""
        return self.candidates[self.chosen_index].text

    @property
    def chosen_index(self) -> int:
        if self.selection and "index" in self.selection:
            return int(self.selection["index"])
        return 0

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.candidates)


class StreamEvent(BaseModel):
    """One event of a streamed generation (:meth:`HFBackend.generate_stream`).

    ``kind``:

    - ``"delta"``: candidate ``candidate`` decoded more text. ``text`` is the
      new text, ``token_ids`` the tokens decoded since the candidate's last
      event and ``norms`` their ``[len(token_ids)][len(layers)]`` norms (None
      when the request asks for no norms). Text that could be the start of a
      stop string, or an incomplete multi-byte character, is held back until
      it is known, so a delta may cover several tokens.
    - ``"finish"``: the candidate ended with ``finish_reason``; ``text``,
      ``token_ids`` and ``norms`` carry whatever was still held back.
    - ``"result"``: the last event: ``result`` is the complete
      :class:`GenerationResult`, exactly what ``generate`` returns (with the
      selection when the request has one).

    Per candidate, the ``text`` of its delta and finish events joins to the
    candidate's final text, and their ``norms`` join to its per-token norms.
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["delta", "finish", "result"]
    candidate: int | None = None
    text: str = ""
    token_ids: list[int] = Field(default_factory=list)
    layers: list[int] | None = None
    norms: list[list[float]] | None = None
    finish_reason: str | None = None
    result: GenerationResult | None = None


class Capabilities(BaseModel):
    """What a backend can do; checked before a request runs."""

    model_config = _FROZEN
    name: str
    per_layer_norms: bool = True
    all_layers: bool = True
    logprobs: bool = True
    batched_candidates: bool = True
    interventions: frozenset[str] = frozenset()
    exact_erss: bool = False
    pruning: bool = False
    calibrated_thresholds: bool = True  # interventions with ThresholdSpec(mode="calibrated")
    hidden_states: bool = False  # GenerationRequest.collect (residual vectors returned)


@runtime_checkable
class Backend(Protocol):
    """The engine interface every l2reason layer above talks to.

    Backends may also offer streaming, ``generate_stream(request)`` (an
    iterator of :class:`StreamEvent`) and ``agenerate_stream(request)`` (an
    async iterator); callers check with ``hasattr``.
    """

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def model_id(self) -> str: ...

    @property
    def num_layers(self) -> int: ...

    @property
    def hidden_size(self) -> int: ...

    def generate(self, request: GenerationRequest) -> GenerationResult: ...

    def generate_many(self, requests: list[GenerationRequest]) -> list[GenerationResult]: ...
