"""Adapters for other frameworks (imported only when used)."""
