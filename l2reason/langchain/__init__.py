"""LangChain chat model backed by an l2reason backend: :class:`ChatL2Reason`.

Requires ``langchain-core`` (``pip install l2reason[langchain]``). Where to look:

- :mod:`~l2reason.langchain.chat_model`: ``ChatL2Reason`` itself (its settings,
  one call from messages to a backend request to an ``AIMessage``, batches,
  ``bind_tools``, ``with_structured_output``);
- :mod:`~l2reason.langchain.messages`: how LangChain messages become the
  model's chat (roles, text-only content, tool calls in the history, ``stop``);
- :mod:`~l2reason.langchain.tools`: tool definitions, ``tool_choice`` and the
  prompt rendered with the tools;
- :mod:`~l2reason.langchain.tool_calls`: the ``<tool_call>`` format, written
  into the history and parsed out of an answer (:func:`parse_tool_calls`);
- :mod:`~l2reason.langchain.results`: a backend result as a LangChain
  ``ChatResult`` (ℓ2 metadata, usage);
- :mod:`~l2reason.langchain.streaming`: ``stream``/``astream`` chunks;
- :mod:`~l2reason.langchain.batching`: one backend call for a whole batch;
- :mod:`~l2reason.langchain.structured`: structured output and
  :class:`StructuredOutputError`.

``docs/langchain.md`` is the user guide. This package is named after the
framework it adapts; its modules import LangChain with absolute imports
(``langchain_core``, ``langchain``), which always resolve to the real packages.

Example:
    >>> from l2reason.langchain import ChatL2Reason
    >>> llm = ChatL2Reason(model="default", n=4, selection="l2", temperature=0.7)  # doctest: +SKIP
    >>> msg = llm.invoke("What is 17 * 23?")  # doctest: +SKIP
    >>> msg.response_metadata["l2reason"]["selection"]["index"]  # doctest: +SKIP
"""

from __future__ import annotations

from l2reason.langchain.chat_model import ChatL2Reason
from l2reason.langchain.structured import StructuredOutputError
from l2reason.langchain.tool_calls import parse_tool_calls

__all__ = ["ChatL2Reason", "StructuredOutputError", "parse_tool_calls"]
