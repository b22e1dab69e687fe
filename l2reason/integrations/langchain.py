"""LangChain chat model backed by an l2reason backend: ``ChatL2Reason``.

Requires ``langchain-core`` (``pip install l2reason[langchain]``).

Example:
    >>> from l2reason.integrations.langchain import ChatL2Reason
    >>> llm = ChatL2Reason(model="default", n=4, selection="l2", temperature=0.7)  # doctest: +SKIP
    >>> msg = llm.invoke("What is 17 * 23?")  # doctest: +SKIP
    >>> msg.response_metadata["l2reason"]["selection"]["index"]  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr

from l2reason.backends.base import GenerationRequest, Message, NormSpec, SamplingParams, SelectionSpec
from l2reason.backends.shared import get_backend
from l2reason.errors import ConfigError


def _role(m: BaseMessage) -> str:
    if isinstance(m, SystemMessage):
        return "system"
    if isinstance(m, HumanMessage):
        return "user"
    if isinstance(m, AIMessage):
        return "assistant"
    if isinstance(m, ToolMessage):
        return "tool"
    raise ConfigError(f"unsupported message type {type(m).__name__}; use System/Human/AI/Tool messages")


class ChatL2Reason(BaseChatModel):
    """A LangChain chat model whose answers carry ℓ2 statistics.

    Args:
        model: model spec (``"default"``, ``"fast"``, a path, a hub id); ignored
            when ``backend`` is given.
        backend: an l2reason backend object to use instead of loading ``model``.
        temperature, top_p, max_tokens, seed: sampling settings.
        n: candidates per call (one batch).
        selection: a selector name (``l2``, ``l2-vote``, ``majority``, ...);
            with ``n > 1`` and a selection the chosen candidate is returned and
            every candidate's score is in ``generation_info``; without one all
            ``n`` candidates are returned as generations.
        score: the ℓ2 score of the ``l2`` selectors (``B/T`` default).
        interventions: intervention specs, e.g. ``[{"kind": "alrr"}]``.
        norm_layers: layers whose norms are summarised (``"band"`` default).

    The chosen message's ``response_metadata["l2reason"]`` holds per-layer
    mean norms, the ℓ2 scores, the selection and what the interventions did;
    ``usage_metadata`` counts every candidate's tokens.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str = "default"
    backend: Any = Field(default=None, exclude=True)
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0
    n: int = 1
    selection: str | None = None
    score: str = "B/T"
    interventions: list[dict[str, Any]] = Field(default_factory=list)
    norm_layers: list[int] | str = "band"
    _be: Any = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "l2reason"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "n": self.n,
            "selection": self.selection,
            "score": self.score,
            "interventions": self.interventions,
        }

    def _backend(self) -> Any:
        if self.backend is not None:
            return self.backend
        if self._be is None:
            self._be = get_backend(self.model)
        return self._be

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        msgs = [
            Message(
                role=_role(m), content=m.content if isinstance(m, str) or isinstance(m.content, str) else str(m.content)
            )
            for m in messages
        ]  # type: ignore[arg-type]
        sel = SelectionSpec(method=self.selection, score=self.score) if self.selection else None
        req = GenerationRequest.build(
            messages=msgs,
            n=kwargs.get("n", self.n),
            sampling=SamplingParams(
                temperature=kwargs.get("temperature", self.temperature),
                top_p=self.top_p,
                max_new_tokens=kwargs.get("max_tokens", self.max_tokens),
                stop=list(stop or []),
                seed=kwargs.get("seed", self.seed),
            ),
            norms=NormSpec(layers=self.norm_layers, per_token=True),  # type: ignore[arg-type]
            logprobs=5 if sel is not None else None,
            interventions=self.interventions,
            selection=sel,
        )
        res = self._backend().generate(req)
        usage = {
            "input_tokens": res.candidates[0].prompt_tokens,
            "output_tokens": res.completion_tokens,
            "total_tokens": res.candidates[0].prompt_tokens + res.completion_tokens,
        }

        def meta(c: Any) -> dict[str, Any]:
            return {
                "index": c.index,
                "finish_reason": c.finish_reason,
                "completion_tokens": c.completion_tokens,
                "layers": c.norms.layers if c.norms else None,
                "mean_norm": c.norms.mean if c.norms else None,
                "score": c.score,
                "interventions": c.interventions,
            }

        chosen = [res.candidates[res.chosen_index]] if sel is not None else res.candidates
        gens = []
        for c in chosen:
            info = {
                "model_id": res.model_id,
                "selection": res.selection,
                "candidates": [meta(x) for x in res.candidates] if sel is not None else None,
                **meta(c),
            }
            msg = AIMessage(
                content=c.text,
                response_metadata={"model_name": res.model_id, "finish_reason": c.finish_reason, "l2reason": info},
                usage_metadata=usage,  # type: ignore[arg-type]
            )
            gens.append(ChatGeneration(message=msg, generation_info={"l2reason": info}))
        return ChatResult(generations=gens, llm_output={"model_id": res.model_id, "seconds": res.seconds})
