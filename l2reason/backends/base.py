"""The backend protocol: what any l2reason engine takes and gives back.

Everything here is plain pydantic data (lists of floats, never tensors), so a
remote engine (the SGLang server) can serve the same request and return the
same result over HTTP as the in-process :class:`~l2reason.backends.hf.HFBackend`.

Index convention: layer ``l`` (0-based) is the residual stream *after*
decoder layer ``l``, i.e. Hugging Face's ``output_hidden_states[l + 1]``
(before the final norm). Decode step ``t`` (1-based) is the state at the
position that *produced* generated token ``t``: step 1 is the last prompt
position, step ``t > 1`` the position of generated token ``t - 1``. So every
generated token has exactly one norm per captured layer.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from l2reason.errors import ConfigError

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class Message(BaseModel):
    """One chat message."""

    model_config = _FROZEN
    role: Literal["system", "user", "assistant", "tool"]
    content: str


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
    temperature: float = Field(0.0, ge=0.0, le=10.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    max_new_tokens: int = 256
    stop: list[str] = Field(default_factory=list)
    seed: int = 0

    @field_validator("max_new_tokens")
    @classmethod
    def _max_new(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"max_new_tokens must be >= 1 (got {v})")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: list[str]) -> list[str]:
        if any(s == "" for s in v):
            raise ValueError("stop strings must be non-empty")
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
    layers: list[int] | Literal["band", "all"] = "band"
    per_token: bool = True
    tau: list[float] | Literal["calibrated"] | None = None
    tail_frac: float = Field(0.3, gt=0.0, le=1.0)
    mask_massive: bool = True
    massive_factor: float = Field(20.0, gt=1.0)

    @field_validator("tau")
    @classmethod
    def _tau(cls, v: Any) -> Any:
        if isinstance(v, list) and not all(np.isfinite(x) and x > 0 for x in v):
            raise ValueError(f"tau values must be finite and > 0 (got {v})")
        return v


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
    tau: Literal["calibrated", "pooled"] | list[float] = "pooled"
    layers: list[int] | Literal["band"] = "band"
    seed: int = 0
    params: dict[str, Any] = Field(default_factory=dict)


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
    n: int = 1
    norms: NormSpec | None = Field(default_factory=NormSpec)
    logprobs: int | None = Field(None, ge=0, le=50)
    interventions: list[Any] = Field(default_factory=list)
    selection: SelectionSpec | None = None
    request_id: str | None = None

    @field_validator("n")
    @classmethod
    def _n(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"n (candidates per prompt) must be >= 1 (got {v})")
        return v

    @field_validator("interventions", mode="before")
    @classmethod
    def _interventions(cls, v: Any) -> Any:
        from l2reason.techniques.specs import parse_interventions

        return parse_interventions(list(v or []))

    @model_validator(mode="after")
    def _one_input(self) -> GenerationRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of `messages` or `prompt`")
        if self.messages is not None:
            if not self.messages:
                raise ValueError("messages is empty: give at least one user message")
            if not any(m.content.strip() for m in self.messages):
                raise ValueError("every message is empty: give the model something to answer")
        if self.prompt is not None and not self.prompt.strip():
            raise ValueError("prompt is empty: give the model something to answer")
        return self

    @classmethod
    def build(cls, **kw: Any) -> GenerationRequest:
        """Like the constructor, but raises :class:`ConfigError` with pydantic's message."""
        from pydantic import ValidationError

        try:
            return cls(**kw)
        except ValidationError as e:
            raise ConfigError(f"invalid generation request: {e}") from e


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


class Candidate(BaseModel):
    """One generated candidate."""

    model_config = ConfigDict(extra="forbid")
    index: int
    text: str
    finish_reason: Literal["stop", "eos", "length"]
    prompt_tokens: int
    completion_tokens: int
    tokens: list[str] | None = None
    logprobs: TokenLogprobs | None = None
    norms: NormStats | None = None
    interventions: dict[str, Any] = Field(default_factory=dict)
    score: float | None = None


class GenerationResult(BaseModel):
    """What a backend returns for one request."""

    model_config = ConfigDict(extra="forbid")
    request_id: str | None = None
    model_id: str
    backend: str
    candidates: list[Candidate]
    selection: dict[str, Any] | None = None
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


@runtime_checkable
class Backend(Protocol):
    """The engine interface every l2reason layer above talks to."""

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
