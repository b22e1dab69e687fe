"""l2reason as DSPy building blocks: an ℓ2-aware LM, three modules and a metric.

- :func:`configure_dspy` / :func:`l2_lm`: a ``dspy.LM`` whose engine
  (:class:`L2Engine`) is an l2reason backend; ℓ2 statistics come back in
  each response's ``provider_data``.
- :class:`L2SelectBest`, :class:`L2Steer`, :class:`L2Recurse`,
  :class:`L2Observe`: wrap any DSPy module; every LM call inside runs the
  technique. Settings are per call (:func:`l2_context`), never on ``self``.
- :func:`l2_metric`, :func:`make_l2_metric`, :func:`l2_combined`: the ℓ2
  score of a prediction as a metric (Evaluate, BootstrapFewShot, MIPROv2,
  GEPA's 5-argument form); :func:`confidence_metric` /
  :func:`make_confidence_metric`: the label-free confidence baseline
  (self-certainty, DeepConf) in the same forms.

Importing this package imports dspy; ``import l2reason`` does not.

Example:
    >>> import dspy
    >>> from l2reason.dspy import configure_dspy, L2SelectBest
    >>> configure_dspy("default")  # doctest: +SKIP
    >>> best = L2SelectBest(dspy.ChainOfThought("question -> answer"), n=4)  # doctest: +SKIP
    >>> pred = best(question="What is 17*3?")  # doctest: +SKIP
    >>> pred.answer, pred.l2.score  # doctest: +SKIP
"""

from __future__ import annotations

import os

# litellm (imported by dspy) fetches a model cost map from the network unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from l2reason.dspy.engine import (
    AsyncL2Engine,
    L2CallSettings,
    L2Engine,
    get_backend,
    register_backend,
)
from l2reason.dspy.lm import configure_dspy, l2_lm
from l2reason.dspy.metric import (
    confidence_metric,
    l2_combined,
    l2_metric,
    make_confidence_metric,
    make_l2_metric,
)
from l2reason.dspy.modules import (
    L2Observe,
    L2Recurse,
    L2Report,
    L2SelectBest,
    L2Steer,
    l2_context,
    l2_report,
)

__all__ = [
    "AsyncL2Engine",
    "L2CallSettings",
    "L2Engine",
    "L2Observe",
    "L2Recurse",
    "L2Report",
    "L2SelectBest",
    "L2Steer",
    "confidence_metric",
    "configure_dspy",
    "get_backend",
    "l2_combined",
    "l2_context",
    "l2_lm",
    "l2_metric",
    "l2_report",
    "make_confidence_metric",
    "make_l2_metric",
    "register_backend",
]
