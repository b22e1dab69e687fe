"""Deprecated: the LangChain adapter moved to :mod:`l2reason.langchain`.

Only :mod:`l2reason.integrations.langchain`, an alias kept for one release,
is left here. (The engine plugins live in the repository's top-level
``integrations/`` folder, outside this package.)
"""
