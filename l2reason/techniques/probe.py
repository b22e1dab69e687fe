"""``l2-probe``: a learned selector over hidden-state and confidence features (pure numpy).

``docs/techniques.md``, "The learned probe". Each candidate of an item becomes
one row of features:

- **base** (every feature set): ``log_tokens`` (log(1 + generated tokens)),
  ``finished`` (EOS or stop string, not the length limit) and ``vote_share``
  (the share of the item's candidates that gave the same final answer; 0
  without an answer);
- **confidence**: ``self_certainty`` (mean SC_t), ``deepconf`` (the DeepConf
  selector's score: bottom-10% of 2048-token sliding-window means of C_t),
  ``deepconf_w32`` (the same over 32-token windows, which sees local dips in
  short answers) and ``mean_logprob`` (mean chosen-token logprob);
- **ℓ2**, for every layer ``l`` the probe reads: ``mean@l`` (mean norm),
  ``exceed@l`` (share of tokens above the item's pooled τ_l, i.e. C/T),
  ``excess@l`` (B/T divided by τ_l), ``late@l`` (mean over the last 30% of
  the valid tokens minus the mean) and ``p90@l`` (90th percentile of the
  norms). τ_l is the pooled fence Q3 + 1.5·max(IQR, 1e-3) over all the
  item's candidates' norms at that layer, as for the ``l2`` selectors.

Every feature is then **centred within the item** (minus the mean over the
item's candidates; a missing value becomes the item mean, i.e. 0), so the
probe can only learn contrasts between candidates of the same question, then
standardised with the training rows' mean and standard deviation and divided
by the square root of its group's size (3 base, 4 confidence, 5 per layer
for ℓ2, all layers together), so that each group has the same prior weight
under the penalty and the many per-layer features cannot drown the few
strong ones by number (this scale is stored with the weights). The model is
an L2-regularised logistic regression for "this candidate is right", fitted by Newton's method (IRLS; ours, not
scikit-learn's, so published and pre-registered probe numbers stay fixed: see ``_newton``) on the items of a
calibration split that have both right and wrong candidates (the others
carry no within-item contrast); the penalty is chosen by an inner,
item-grouped cross-validation on the same split (best within-item AUC, ties to
the stronger penalty).

Selection: ``l2-probe`` takes the argmax of the probe's logit (ties broken by
a seeded draw among the tied); ``l2-probe-vote`` is an answer vote weighted
by the probe's probability.

Feature sets (ablations): ``both`` (base + confidence + ℓ2), ``confidence``
(base + confidence), ``l2`` (base + ℓ2) and ``base``.

Example:
    >>> import numpy as np
    >>> from l2reason.techniques.selection import CandidateSignals
    >>> rng = np.random.default_rng(0)
    >>> def item(k):
    ...     y = np.arange(4) == k % 4
    ...     cands = [CandidateSignals("", str(j), 5, True, rng.normal(10 + 3 * y[j], 0.1, (5, 1))) for j in range(4)]
    ...     return cands, y
    >>> probe = fit_probe([item(k) for k in range(12)], layers=[7], feature_set="l2")
    >>> probe.weight("mean@7") > 0
    True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from l2reason.errors import ConfigError
from l2reason.techniques.scores import deepconf_scores, window_low
from l2reason.techniques.selection import CandidateSignals, Selection, _argmax_tied, _check_cands, group_vote

__all__ = [
    "BASE_FEATURES",
    "CONFIDENCE_FEATURES",
    "FEATURE_SETS",
    "L2_STATS",
    "PROBE_METHODS",
    "PROBE_VERSION",
    "Probe",
    "feature_names",
    "fit_probe",
    "item_features",
    "select_probe",
]

PROBE_VERSION = 1
PROBE_METHODS = ("l2-probe", "l2-probe-vote")
FEATURE_SETS = ("both", "confidence", "l2", "base")
BASE_FEATURES = ("log_tokens", "finished", "vote_share")
CONFIDENCE_FEATURES = ("self_certainty", "deepconf", "deepconf_w32", "mean_logprob")
L2_STATS = ("mean", "exceed", "excess", "late", "p90")
TAIL_FRAC = 0.3  # as the D statistic: the last 30% of the valid steps
LOCAL_WINDOW = 32  # tokens per group of ``deepconf_w32``
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # penalties tried by the inner cross-validation
DEFAULT_L2 = 0.1  # used when the split is too small for the inner cross-validation
INNER_FOLDS = 4


def _uses(feature_set: str) -> tuple[bool, bool]:
    """(confidence features?, ℓ2 features?) of a feature set."""
    if feature_set not in FEATURE_SETS:
        raise ConfigError(f"unknown probe feature set {feature_set!r}; valid: {', '.join(FEATURE_SETS)}")
    return feature_set in ("both", "confidence"), feature_set in ("both", "l2")


def feature_names(feature_set: str, layers: Sequence[int]) -> list[str]:
    """The feature names of a feature set, in the probe's column order.

    Example:
        >>> feature_names("l2", [3])[-5:]
        ['mean@3', 'exceed@3', 'excess@3', 'late@3', 'p90@3']
    """
    conf, l2 = _uses(feature_set)
    names = list(BASE_FEATURES)
    if conf:
        names += CONFIDENCE_FEATURES
    if l2:
        names += [f"{s}@{layer}" for layer in layers for s in L2_STATS]
    return names


def _pooled_tau(cands: Sequence[CandidateSignals], width: int) -> np.ndarray:
    """Per layer: Q3 + 1.5·max(IQR, 1e-3) of all candidates' valid norms (linear quantiles); inf if none."""
    arrs = [c.band_norms for c in cands if c.band_norms.size]
    if not arrs:
        return np.full(width, np.inf)
    pooled = np.concatenate(arrs, axis=0)  # [ΣT, width]
    pooled = pooled[np.isfinite(pooled).any(axis=1)]  # masked steps are NaN at every layer
    if pooled.shape[0] == 0:
        return np.full(width, np.inf)
    q1, q3 = _quantiles(pooled, [0.25, 0.75])
    tau = q3 + 1.5 * np.maximum(q3 - q1, 1e-3)
    return np.where(np.isfinite(tau), tau, np.inf)


def _quantiles(a: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """Linear-interpolation quantiles over axis 0, ignoring NaN (the fast path when there is none)."""
    if np.isfinite(a).all():
        return np.quantile(a, qs, axis=0)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column gives NaN on purpose
        return np.nanquantile(a, qs, axis=0)


def _l2_block(c: CandidateSignals, tau: np.ndarray) -> np.ndarray:
    """[n_layers, 5] ℓ2 statistics of one candidate (NaN where a layer has no valid token)."""
    a = np.asarray(c.band_norms, dtype=np.float64)  # [T, L]
    width = tau.shape[0]
    out = np.full((width, len(L2_STATS)), np.nan)
    if a.size == 0:
        return out
    rows = a[np.isfinite(a).any(axis=1)]  # valid steps (a masked step is NaN at every layer)
    T = rows.shape[0]
    if T == 0:
        return out
    valid = np.isfinite(rows)
    cnt = valid.sum(0)
    has = cnt > 0
    safe = np.where(valid, rows, 0.0)
    mean = safe.sum(0) / np.maximum(cnt, 1)
    above = valid & (rows > tau)
    exceed = above.sum(0) / np.maximum(cnt, 1)
    excess = np.where(valid, np.maximum(rows - tau, 0.0), 0.0).sum(0) / np.maximum(cnt, 1)
    excess = np.where(np.isfinite(tau), excess / np.where(np.isfinite(tau) & (tau > 0), tau, 1.0), 0.0)
    t_tail = math.floor(TAIL_FRAC * T + 1e-9)
    if t_tail > 0:
        tail = rows[T - t_tail :]
        tv = np.isfinite(tail)
        tail_mean = np.where(tv, tail, 0.0).sum(0) / np.maximum(tv.sum(0), 1)
        late = np.where(tv.sum(0) > 0, tail_mean - mean, 0.0)
    else:
        late = np.zeros(width)
    p90 = _quantiles(rows, [0.9])[0]
    block = np.stack([mean, exceed, excess, late, p90], axis=1)
    block[~has] = np.nan
    out[:] = block
    return out


def _finite_mean(x: np.ndarray | None) -> float:
    if x is None:
        return float("nan")
    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def raw_features(cands: Sequence[CandidateSignals], layers: Sequence[int], feature_set: str) -> np.ndarray:
    """[N, F] features before the within-item centring (columns as :func:`feature_names`).

    ``cands[i].band_norms`` must hold exactly the columns of ``layers`` when
    the feature set has ℓ2 features.

    Raises:
        ConfigError: unknown feature set, norms of the wrong width, or no
            logprob signals for a set with confidence features.
    """
    _check_cands(cands)
    conf, l2 = _uses(feature_set)
    N = len(cands)
    answers = [c.answer for c in cands]
    counts: dict[str, int] = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    cols: list[np.ndarray] = [
        np.log1p(np.array([max(c.n_tokens, 0) for c in cands], dtype=np.float64)),
        np.array([1.0 if c.finished else 0.0 for c in cands]),
        np.array([counts.get(a, 0) / N if a is not None else 0.0 for a in answers]),
    ]
    if conf:
        if any(c.token_self_certainty is None or c.token_confidence is None for c in cands):
            raise ConfigError(
                f"the probe's feature set {feature_set!r} needs logprob signals (self-certainty and DeepConf "
                "confidence): request logprobs (GenerationRequest(logprobs=20), as the evaluation does), "
                "or use a probe fitted on the 'l2' or 'base' feature set"
            )
        cols.append(np.array([_finite_mean(c.token_self_certainty) for c in cands]))
        cols.append(np.asarray(deepconf_scores(cands, mode="lowest_group"), dtype=np.float64))
        local = []
        for c in cands:
            v = np.asarray(c.token_confidence, dtype=np.float64)
            local.append(window_low(v[np.isfinite(v)], LOCAL_WINDOW))
        cols.append(np.array(local))
        cols.append(np.array([_finite_mean(c.token_logprob) for c in cands]))
    X = np.stack(cols, axis=1)
    if l2:
        width = len(layers)
        bad = [c.band_norms.shape for c in cands if c.band_norms.ndim != 2 or c.band_norms.shape[1] != width]
        if bad or width == 0:
            raise ConfigError(
                f"the probe reads the norms of layers {list(layers)}, but the candidates carry norms of shape "
                f"{bad[0] if bad else '(T, 0)'}: capture those layers (NormSpec(layers='all'))"
            )
        tau = _pooled_tau(cands, width)
        blocks = np.stack([_l2_block(c, tau).reshape(-1) for c in cands])  # [N, L·5], layer-major
        X = np.concatenate([X, blocks], axis=1)
    return X


def item_features(cands: Sequence[CandidateSignals], layers: Sequence[int], feature_set: str) -> np.ndarray:
    """[N, F] features centred within the item (minus the item mean; missing -> 0).

    Example:
        >>> from l2reason.techniques.selection import CandidateSignals
        >>> c = [CandidateSignals("", "1", 3, True, np.ones((3, 0))), CandidateSignals("", "2", 7, False, np.ones((7, 0)))]
        >>> item_features(c, [], "base")[:, 1].tolist()    # finished: 1 vs 0 -> +0.5 / -0.5
        [0.5, -0.5]
    """
    X = raw_features(cands, layers, feature_set)
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(X)
        cnt = finite.sum(0)
        mu = np.where(finite, X, 0.0).sum(0) / np.maximum(cnt, 1)
    return np.where(finite, X - mu, 0.0)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic


@dataclass(frozen=True, eq=False)
class Probe:
    """A fitted probe: feature names, standardisation and logistic-regression weights.

    Args:
        feature_set: ``both``, ``confidence``, ``l2`` or ``base``.
        layers: the layers whose norms the ℓ2 features read (empty without ℓ2 features).
        features: the feature names (see :func:`feature_names`).
        mean, scale: the standardisation of the (item-centred) features.
        weights: one weight per feature, on the standardised scale.
        bias: the intercept.
        l2: the penalty it was fitted with.
        info: what it was fitted on (items, candidates, the inner CV, the split's item ids ...).

    Example:
        >>> p = Probe("base", [], list(BASE_FEATURES), np.zeros(3), np.ones(3), np.array([0.0, 0.0, 2.0]), 0.0, 0.1)
        >>> Probe.from_dict(p.to_dict()).weight("vote_share")
        2.0
    """

    feature_set: str
    layers: list[int]
    features: list[str]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    l2: float
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _uses(self.feature_set)[1]:
            object.__setattr__(self, "layers", [])  # no ℓ2 features: reads no norms
        expect = feature_names(self.feature_set, self.layers)
        if list(self.features) != expect:
            raise ConfigError(
                f"probe features do not match feature set {self.feature_set!r} over layers {self.layers}: "
                f"expected {len(expect)} names ({', '.join(expect[:4])}, ...), got {len(self.features)}"
            )
        F = len(expect)
        for name in ("mean", "scale", "weights"):
            arr = np.asarray(getattr(self, name), dtype=np.float64).reshape(-1)
            if arr.shape[0] != F or not np.isfinite(arr).all():
                raise ConfigError(f"probe {name} must hold {F} finite numbers (got {arr.shape[0]})")
            object.__setattr__(self, name, arr)
        if not np.all(self.scale > 0):
            raise ConfigError("probe scale must be > 0 for every feature")
        if not math.isfinite(self.bias) or not (math.isfinite(self.l2) and self.l2 >= 0):
            raise ConfigError(f"probe bias and l2 must be finite (l2 >= 0); got {self.bias}, {self.l2}")

    def weight(self, name: str) -> float:
        """The weight of one feature, on the probe's (standardised, group-scaled) inputs."""
        return float(self.weights[self.features.index(name)])

    def effects(self) -> dict[str, float]:
        """Per feature, the change of the logit per standard deviation of the (item-centred) feature.

        Comparable across features and groups: ``weight / sqrt(group size)``.
        """
        eff = self.weights / np.sqrt(group_sizes(self.features))
        return {n: float(e) for n, e in zip(self.features, eff, strict=True)}

    def top_effects(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` features with the largest absolute :meth:`effects`."""
        return sorted(self.effects().items(), key=lambda kv: -abs(kv[1]))[:k]

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Logits of item-centred feature rows ``X`` [N, F]."""
        return ((X - self.mean) / self.scale) @ self.weights + self.bias

    def scores(self, cands: Sequence[CandidateSignals]) -> np.ndarray:
        """[N] logit of "this candidate is right" (higher = preferred)."""
        return self.logits(item_features(cands, self.layers, self.feature_set))

    def probabilities(self, cands: Sequence[CandidateSignals]) -> np.ndarray:
        """[N] probability that each candidate is right."""
        return _sigmoid(self.scores(cands))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data (the calibration file's ``probe`` section)."""
        return {
            "version": PROBE_VERSION,
            "kind": "logistic",
            "normalisation": "item-centred, then standardised",
            "feature_set": self.feature_set,
            "layers": [int(x) for x in self.layers],
            "features": list(self.features),
            "mean": [float(x) for x in self.mean],
            "scale": [float(x) for x in self.scale],
            "weights": [float(x) for x in self.weights],
            "bias": float(self.bias),
            "l2": float(self.l2),
            "info": _plain(self.info),
        }

    @classmethod
    def from_dict(cls, d: Any) -> Probe:
        """Rebuild a probe from :meth:`to_dict`'s data (validated).

        Raises:
            ConfigError: another version, a missing field or inconsistent arrays.
        """
        if isinstance(d, Probe):
            return d
        if not isinstance(d, dict):
            raise ConfigError(f"a probe must be a JSON object, got {type(d).__name__}")
        if d.get("version") != PROBE_VERSION:
            raise ConfigError(
                f"probe version {d.get('version')!r} is not {PROBE_VERSION}: re-fit it with `l2reason calibrate --select`"
            )
        try:
            return cls(
                feature_set=str(d["feature_set"]),
                layers=[int(x) for x in d["layers"]],
                features=[str(x) for x in d["features"]],
                mean=np.asarray(d["mean"], dtype=np.float64),
                scale=np.asarray(d["scale"], dtype=np.float64),
                weights=np.asarray(d["weights"], dtype=np.float64),
                bias=float(d["bias"]),
                l2=float(d["l2"]),
                info=dict(d.get("info") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(
                f"invalid probe ({type(e).__name__}: {e}); re-fit it with `l2reason calibrate --select`"
            ) from e


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


# ---- fitting ----------------------------------------------------------------------


def _newton(Z: np.ndarray, y: np.ndarray, lam: float, iters: int = 100) -> tuple[np.ndarray, float]:
    """Minimise mean log-loss + (lam/2)·‖w‖² (intercept not penalised) by damped Newton steps.

    This is scikit-learn's ``LogisticRegression(C=1 / (n·lam))`` (l2 penalty,
    intercept fitted and not penalised): ``C·Σ log-loss + ½‖w‖²`` is the same
    objective times ``1/(n·lam)``. With ``solver="newton-cholesky"`` and a
    tight ``tol`` it finds the same weights (logits agree to ~1e-9 on random
    data, ``tests/unit/test_probe.py``). We keep our own for reproducibility:
    published rows (``l2-probe-cv:l2`` in ``docs/results/``) and a
    pre-registered study use the probe, the runs' per-candidate samples are
    not in the repository to prove a switch changes none of them, and a
    library's convergence rule or default could move a logit near a tie.
    It also keeps the selector free of a scikit-learn import in the engine
    plugins, which install l2reason without its dependencies.
    """
    n, F = Z.shape
    A = np.concatenate([Z, np.ones((n, 1))], axis=1)
    theta = np.zeros(F + 1)
    pen = np.full(F + 1, lam)
    pen[-1] = 0.0

    def loss(t: np.ndarray) -> float:
        z = A @ t
        return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(pen * t * t))

    cur = loss(theta)
    for _ in range(iters):
        p = _sigmoid(A @ theta)
        g = A.T @ (p - y) / n + pen * theta
        H = (A * (p * (1 - p))[:, None]).T @ A / n + np.diag(pen + 1e-10)
        step = np.linalg.solve(H, g)
        t = 1.0
        while t > 1e-6:
            cand = theta - t * step
            new = loss(cand)
            if new <= cur + 1e-12:
                break
            t *= 0.5
        theta, cur = cand, new
        if float(np.max(np.abs(t * step))) < 1e-9:
            break
    return theta[:F], float(theta[F])


def _within_auc(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> tuple[float, int]:
    """P(a right candidate outscores a wrong one of the same item), ties 1/2."""
    wins = 0.0
    pairs = 0
    for s, y in zip(scores, labels, strict=True):
        pos, neg = s[y], s[~y]
        if pos.size and neg.size:
            d = pos[:, None] - neg[None, :]
            wins += float((d > 0).sum() + 0.5 * (d == 0).sum())
            pairs += d.size
    return (wins / pairs if pairs else float("nan")), pairs


def group_sizes(names: Sequence[str]) -> np.ndarray:
    """Per feature, the size of its group (base, confidence, or ℓ2)."""
    kind = ["base" if n in BASE_FEATURES else "confidence" if n in CONFIDENCE_FEATURES else "l2" for n in names]
    return np.array([kind.count(k) for k in kind], dtype=np.float64)


def _fit_arrays(Xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], lam: float, groups: np.ndarray) -> tuple[Any, ...]:
    X = np.concatenate(Xs, axis=0)
    y = np.concatenate(ys).astype(np.float64)
    mu = X.mean(0)
    sd = X.std(0)
    # Standardise, then shrink each feature by sqrt(its group's size): the same as a penalty λ·g on
    # its weight, so every group (3 base, 4 confidence, 5 per layer ℓ2 features) gets the same prior
    # budget and a hundred weak per-layer features cannot drown the few strong ones by sheer number.
    sd = np.where(sd > 1e-12, sd, 1.0) * np.sqrt(groups)
    w, b = _newton((X - mu) / sd, y, lam)
    return mu, sd, w, np.float64(b)


def fit_probe(
    items: Sequence[tuple[Sequence[CandidateSignals], Sequence[bool]]],
    layers: Sequence[int],
    feature_set: str = "both",
    *,
    l2: float | None = None,
    grid: Sequence[float] = L2_GRID,
    folds: int = INNER_FOLDS,
    info: dict[str, Any] | None = None,
) -> Probe:
    """Fit a probe on labelled items (the calibration split).

    Args:
        items: per item, its candidates (``band_norms`` columns = ``layers``)
            and whether each is right.
        layers: the layers of the ℓ2 features.
        feature_set: ``both``, ``confidence``, ``l2`` or ``base``.
        l2: the penalty; ``None`` chooses it from ``grid`` by an inner
            item-grouped cross-validation (``folds`` folds over the mixed
            items, best within-item AUC, ties to the larger penalty).
        info: extra facts recorded in ``Probe.info`` (e.g. the split's item ids).

    Returns:
        The fitted :class:`Probe`; only items with both right and wrong
        candidates are fitted on.

    Raises:
        ConfigError: no item has both right and wrong candidates.
    """
    layers = [int(x) for x in layers] if _uses(feature_set)[1] else []
    Xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for cands, y in items:
        yy = np.asarray(y, dtype=bool)
        if len(cands) != yy.size:
            raise ConfigError(f"an item has {len(cands)} candidates but {yy.size} labels")
        if yy.any() and not yy.all():
            Xs.append(item_features(cands, layers, feature_set))
            ys.append(yy)
    if not Xs:
        raise ConfigError(
            "no item has both right and wrong candidates, so the probe has nothing to learn from; "
            "use more items, a larger N or a higher temperature"
        )
    groups = group_sizes(feature_names(feature_set, layers))
    cv: dict[str, float] = {}
    k = min(folds, len(Xs))
    if l2 is None:
        if k >= 2:
            for lam in grid:
                s_out: list[np.ndarray] = []
                y_out: list[np.ndarray] = []
                for f in range(k):
                    tr = [i for i in range(len(Xs)) if i % k != f]
                    te = [i for i in range(len(Xs)) if i % k == f]
                    mu, sd, w, b = _fit_arrays([Xs[i] for i in tr], [ys[i] for i in tr], lam, groups)
                    s_out += [((Xs[i] - mu) / sd) @ w + b for i in te]
                    y_out += [ys[i] for i in te]
                cv[f"{lam:g}"] = _within_auc(s_out, y_out)[0]
            best = max(grid, key=lambda lam: (np.nan_to_num(cv[f"{lam:g}"], nan=-1.0), lam))
            l2 = float(best)
        else:
            l2 = DEFAULT_L2
    mu, sd, w, b = _fit_arrays(Xs, ys, float(l2), groups)
    train_auc, pairs = _within_auc([((X - mu) / sd) @ w + b for X in Xs], ys)
    meta = {
        "items": len(items),
        "mixed_items": len(Xs),
        "candidates": int(sum(x.shape[0] for x in Xs)),
        "right": int(sum(int(y.sum()) for y in ys)),
        "pairs": pairs,
        "train_within_auc": train_auc,
        "inner_cv_within_auc": cv,
        **(info or {}),
    }
    return Probe(feature_set, layers, feature_names(feature_set, layers), mu, sd, w, float(b), float(l2), meta)


# ---- selection --------------------------------------------------------------------


def select_probe(
    cands: Sequence[CandidateSignals],
    probe: Probe | dict[str, Any],
    *,
    rule: str = "argmax",
    seed: int | None = 0,
) -> Selection:
    """Select with a probe: argmax of its logit (``l2-probe``) or a probability-weighted vote (``l2-probe-vote``).

    ``cands[i].band_norms`` must hold the columns of ``probe.layers``.
    Argmax ties are broken by a draw among the tied candidates seeded with
    ``seed`` (``None``: the lowest index). The vote sums the probabilities per
    answer (candidates without an answer do not vote; ties as
    :func:`~l2reason.techniques.selection.group_vote`) and returns the winning
    answer's highest-logit member; with no answers at all it is the argmax.

    Returns:
        A :class:`Selection`; ``scores`` are the logits.
    """
    p = Probe.from_dict(probe)
    s = p.scores(cands)
    details: dict[str, Any] = {"feature_set": p.feature_set, "rule": rule}
    if rule == "argmax":
        i, tied = _argmax_tied(s, seed)
        details["n_tied"] = tied
        return Selection("l2-probe", i, s.tolist(), cands[i].answer, None, details)
    if rule != "vote":
        raise ConfigError(f"probe rule must be 'argmax' or 'vote' (got {rule!r})")
    prob = _sigmoid(s)
    answer, groups = group_vote([c.answer for c in cands], prob.tolist())
    if answer is None:
        i, tied = _argmax_tied(s, seed)
        details.update(n_tied=tied, fallback="no answers")
        return Selection("l2-probe-vote", i, s.tolist(), cands[i].answer, None, details)
    members = [k for k, c in enumerate(cands) if c.answer == answer]
    i = max(members, key=lambda k: (s[k], -k))
    return Selection("l2-probe-vote", i, s.tolist(), answer, groups, details)
