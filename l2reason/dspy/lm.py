"""One-line setup: a ``dspy.LM`` served by an l2reason backend.

Example:
    >>> import dspy
    >>> from l2reason.dspy import configure_dspy
    >>> lm = configure_dspy("fast", max_tokens=200)  # doctest: +SKIP
    >>> dspy.Predict("question -> answer")(question="2+2?").answer  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from l2reason.dspy.engine import AsyncL2Engine, L2CallSettings, L2Engine

__all__ = ["configure_dspy", "l2_lm"]


def l2_lm(
    model: str = "default",
    *,
    backend: Any = None,
    name: str | None = None,
    temperature: float = 0.0,
    max_tokens: int = 256,
    seed: int = 0,
    cache: bool = True,
    num_retries: int = 0,
    **defaults: Any,
) -> Any:
    """A ``dspy.LM("l2reason/<model>", engine=…, async_engine=…)`` over an l2reason backend.

    Args:
        model: a model spec (``"default"``, ``"fast"``, a path, a hub id),
            loaded on first use and shared by every LM naming it.
        backend: an l2reason backend object to serve instead of ``model``
            (e.g. ``HFBackend(loaded_model)``); it is registered under its
            ``model_id`` so a saved program can find it again in-process.
        name: the name the LM and a saved program use (default: ``model``
            or the backend's ``model_id``).
        temperature: default sampling temperature (0 = greedy).
        max_tokens: default generation limit per call.
        seed: base seed of the engine's sample streams.
        cache: use DSPy's response cache (``provider_data`` is cached too).
        num_retries: DSPy's retry count (a local model does not fail transiently).
        **defaults: l2reason call settings applied to every call
            (:class:`~l2reason.dspy.engine.L2CallSettings`: ``n``, ``score``,
            ``tau``, ``layers``, ``interventions``, ``per_token``, ...).

    Returns:
        a ``dspy.LM``.

    Raises:
        ConfigError: an unknown setting or a bad value.

    Example:
        >>> lm = l2_lm("fast", score="C/T")  # doctest: +SKIP
        >>> lm("Say hi")  # doctest: +SKIP
        ['Hi! How can I help?']
    """
    import dspy

    settings = L2CallSettings.parse(defaults)  # fail early, with the field's name; parsed once
    engine = L2Engine(
        backend if backend is not None else model,
        name=name,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        defaults=settings,
    )
    return dspy.LM(
        f"l2reason/{engine.name}",
        engine=engine,
        async_engine=AsyncL2Engine(engine),
        temperature=temperature,
        max_tokens=max_tokens,
        cache=cache,
        num_retries=num_retries,
    )


def configure_dspy(model: str = "default", *, backend: Any = None, **kwargs: Any) -> Any:
    """Build :func:`l2_lm` and make it DSPy's default LM (``dspy.configure(lm=…)``).

    Args:
        model: a model spec, as in :func:`l2_lm`.
        backend: an l2reason backend object instead of ``model``.
        **kwargs: everything :func:`l2_lm` takes.

    Returns:
        the configured ``dspy.LM``.

    Example:
        >>> import dspy, l2reason.dspy as l2
        >>> l2.configure_dspy("fast")  # doctest: +SKIP
        >>> dspy.ChainOfThought("question -> answer")(question="What is 3*4?")  # doctest: +SKIP
    """
    import dspy

    lm = l2_lm(model, backend=backend, **kwargs)
    dspy.configure(lm=lm)
    return lm
