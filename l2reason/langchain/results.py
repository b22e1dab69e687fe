"""A backend :class:`~l2reason.backends.base.GenerationResult` as a LangChain ``ChatResult``.

Every message carries ``response_metadata["l2reason"]`` (also
``generation_info["l2reason"]``): the captured ``layers`` and their
``mean_norm``, ``completion_tokens``, ``finish_reason``, the ℓ2 ``score``, what
the ``interventions`` did and, with a selection, the ``selection`` and every
candidate's summary. ``usage_metadata`` counts the prompt once and the tokens
of every candidate the call generated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from l2reason.backends.base import Candidate, GenerationRequest, GenerationResult
from l2reason.langchain.tool_calls import parse_tool_calls


@dataclass(frozen=True)
class Call:
    """One call's backend request and how to read its answer: parse tool calls (of ``names``) after
    putting back the assistant ``prefix`` the prompt ended with."""

    req: GenerationRequest
    parse: bool = False
    prefix: str = ""
    names: tuple[str, ...] = ()


def candidate_meta(c: Candidate) -> dict[str, Any]:
    """One candidate's ℓ2 summary as it appears in the metadata."""
    return {
        "index": c.index,
        "finish_reason": c.finish_reason,
        "completion_tokens": c.completion_tokens,
        "layers": c.norms.layers if c.norms else None,
        "mean_norm": c.norms.mean if c.norms else None,
        "score": c.score,
        "interventions": c.interventions,
    }


def chat_result(res: GenerationResult, call: Call) -> ChatResult:
    """The chosen candidate (with a selection) or every candidate as ``AIMessage`` generations."""
    sel = call.req.selection is not None
    prompt_tokens = res.candidates[0].prompt_tokens
    usage = {
        "input_tokens": prompt_tokens,
        "output_tokens": res.completion_tokens,
        "total_tokens": prompt_tokens + res.completion_tokens,
    }
    chosen = [res.candidates[res.chosen_index]] if sel else res.candidates
    gens = []
    for c in chosen:
        info = {
            "model_id": res.model_id,
            "selection": res.selection,
            "candidates": [candidate_meta(x) for x in res.candidates] if sel else None,
            **candidate_meta(c),
        }
        fields: dict[str, Any] = {"content": c.text}
        if call.parse:
            raw = call.prefix + c.text
            info["raw_text"] = raw
            content, calls, bad = parse_tool_calls(raw, call.names)
            fields = {"content": content, "tool_calls": calls, "invalid_tool_calls": bad}
        msg = AIMessage(
            **fields,
            response_metadata={"model_name": res.model_id, "finish_reason": c.finish_reason, "l2reason": info},
            usage_metadata=usage,  # type: ignore[arg-type]
        )
        gens.append(ChatGeneration(message=msg, generation_info={"l2reason": info}))
    return ChatResult(generations=gens, llm_output={"model_id": res.model_id, "seconds": res.seconds})
