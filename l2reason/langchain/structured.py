"""Structured output: a forced call of one tool whose arguments are the schema, parsed and validated.

:meth:`ChatL2Reason.with_structured_output <l2reason.langchain.chat_model.ChatL2Reason.with_structured_output>`
builds the runnable here. An answer that does not parse or fit raises
:class:`StructuredOutputError` (an ``OutputParserException``); with
``include_raw=True`` nothing raises, as in LangChain.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_openai_tool

from l2reason.errors import ConfigError, L2ReasonError
from l2reason.langchain.tools import openai_tools, tool_name


class StructuredOutputError(L2ReasonError, OutputParserException):
    """The model's answer is not the structured output asked for (no call of the schema's tool, bad JSON,
    or arguments that fail the schema). ``llm_output`` holds the model's raw text."""


def parse_structured(msg: BaseMessage, schema: Any, name: str) -> Any:
    """The structured value in ``msg``: the first call of tool ``name``, validated by a pydantic ``schema``."""
    raw = ""
    if isinstance(msg, AIMessage):
        raw = msg.response_metadata.get("l2reason", {}).get("raw_text") or msg.text
    calls = [c for c in getattr(msg, "tool_calls", []) if c["name"] == name]
    if not calls:
        bad = [c for c in getattr(msg, "invalid_tool_calls", []) if c.get("name") in (name, None)]
        if bad:
            why = f"its {name!r} call does not parse ({bad[0].get('error')})"
        else:
            why = f"it called no {name!r} tool"
        raise StructuredOutputError(
            f"the model's answer is not a {name!r} object: {why}; raw answer: {raw[:300]!r}. "
            "Give it more tokens (max_tokens), a clearer prompt, or a stronger model",
            llm_output=raw,
        )
    args = calls[0]["args"]
    if isinstance(schema, type) and hasattr(schema, "model_validate"):
        from pydantic import ValidationError

        try:
            return schema.model_validate(args)
        except ValidationError as e:
            raise StructuredOutputError(
                f"the model's {name!r} arguments do not fit the schema: {e}; arguments: {args!r}", llm_output=raw
            ) from e
    required = convert_to_openai_tool(schema)["function"].get("parameters", {}).get("required", [])
    missing = [k for k in required if k not in args]
    if missing:
        raise StructuredOutputError(
            f"the model's {name!r} arguments lack required keys {missing}; arguments: {args!r}", llm_output=raw
        )
    return args


def structured_runnable(
    model: Any, schema: dict[str, Any] | type, include_raw: bool, method: str, kwargs: dict[str, Any]
) -> Runnable[Any, Any]:
    """``model.with_structured_output(schema, ...)``: ``model`` bound to the schema's tool (forced), then the
    parser; with ``include_raw`` a ``{"raw", "parsed", "parsing_error"}`` dict that never raises."""
    kwargs = dict(kwargs)
    kwargs.pop("strict", None)
    if kwargs:
        raise ConfigError(f"with_structured_output does not take {', '.join(sorted(kwargs))}")
    if method != "function_calling":
        raise ConfigError(
            f"with_structured_output method={method!r} is not supported: ChatL2Reason produces structured "
            "output by a forced tool call (method='function_calling')"
        )
    tool = openai_tools([schema])[0]
    name = tool_name(tool)
    llm = model.bind_tools(
        [tool],
        tool_choice=name,
        ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
    )
    parser = RunnableLambda(lambda m: parse_structured(m, schema, name), name=f"parse_{name}")
    if not include_raw:
        return llm | parser
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    failed = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")
