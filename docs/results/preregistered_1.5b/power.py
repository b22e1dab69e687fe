"""Power of the pre-registered test, from the two existing runs' discordance (issue 27; see PLAN.md).

The primary test of ``PLAN.md``: on N items, the paired-bootstrap 95% CI of
accuracy(``l2-probe-cv:l2``) − accuracy(``majority``), computed by the
harness's own :func:`l2reason.eval.stats.paired_bootstrap` (10,000 resamples,
the seed the report gives that row); success iff its lower bound is > 0.

Per item, the difference d ∈ {+1, 0, −1}: +1 when the probe is right and
majority wrong (probability p_b), −1 the reverse (p_c), 0 when they agree.
The true difference is Δ = p_b − p_c, the discordance q = p_b + p_c; a true
Δ = +3 points needs q ≥ 3%.

How the power is computed (deterministic; no simulation noise in the table):

1. The decision depends on the items only through (B, C), the counts of +1
   and −1 items. For each N and each C = c the script finds, with the
   harness's function itself, the smallest B = b*(N, c) whose CI lower bound
   is > 0 (items laid out as B × (+1), then zeros, then C × (−1); with the
   resampling seed fixed the resampled index sets do not depend on B or C, so
   the lower bound is exactly monotone in B and in C, and a scan from
   b*(N, c − 1) upwards finds the threshold).
2. Power = Σ_c P(C = c) · P(B ≥ b*(N, c) | C = c), with C ~ Binomial(N, p_c)
   and B | C = c ~ Binomial(N − c, p_b / (1 − p_c)) (the item outcomes are
   i.i.d. multinomial), summed exactly.
3. A Monte Carlo check at the chosen N (``--mc`` studies per scenario, items
   drawn at random positions, the harness's function called on each study)
   confirms the exact numbers, and gives the false-positive rate at Δ = 0.

Usage (from the repository root; about 5 minutes on a shared 2-core machine), with the frozen code of
``PLAN.md`` (``git archive 827b11e l2reason | tar -x -C ../l2r-827b11e``; without ``PYTHONPATH`` it
uses the working tree's ``l2reason``):
    PYTHONPATH=../l2r-827b11e .venv/bin/python docs/results/preregistered_1.5b/power.py \
        > docs/results/preregistered_1.5b/power.md
"""

# ruff: noqa: T201  (a script: it prints its Markdown report, as benchmarks/ do)
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np

from l2reason.eval.stats import mcnemar, paired_bootstrap

ROOT = Path(__file__).resolve().parents[3]

PUBLISHED = ROOT / "docs/results/gsm_symbolic_100_1.5b_vllm"
RULE, BASELINE = "l2-probe-cv:l2", "majority"
N_BOOT = 10_000  # the report's default (`l2reason report --n-boot`)
REPORT_SEED = 2023  # compute_report: seed 0 + 2000 + the row's index (23 for l2-probe-cv:l2 with --methods all)
DELTA = 0.03  # the effect to detect: +3 points vs majority@8 (issue 27)
TARGET_POWER = 0.80
N_GRID = (100, 200, 300, 400, 500, 550, 560, 570, 580, 590, 600, 700, 800, 1000)
FRESH_N = 40  # issue 27: 40 fresh gsm_symbolic items, run the same way
FRESH_40 = {"acc_rule": 0.65, "acc_majority": 0.60, "lo": 0.0, "hi": 0.125}  # issue 27's numbers
SEED = 20261207  # Monte Carlo check


def log_binom_pmf(k: np.ndarray, n: int, p: float) -> np.ndarray:
    """log P(X = k) for X ~ Binomial(n, p), k an integer array in [0, n]."""
    k = np.asarray(k, dtype=np.float64)
    if p <= 0.0:
        return np.where(k == 0, 0.0, -np.inf)
    if p >= 1.0:
        return np.where(k == n, 0.0, -np.inf)
    lg = np.vectorize(math.lgamma)
    return lg(n + 1.0) - lg(k + 1.0) - lg(n - k + 1.0) + k * math.log(p) + (n - k) * math.log1p(-p)


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X ≥ k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return float(np.exp(log_binom_pmf(np.arange(k, n + 1), n, p)).sum())


def cp_upper(x: int, n: int, level: float = 0.95) -> float:
    """One-sided Clopper–Pearson upper bound of a binomial proportion (bisection on the CDF)."""
    lo, hi = x / n, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 1.0 - binom_sf(x + 1, n, mid) > 1.0 - level:  # P(X ≤ x | mid) still above 5%
            lo = mid
        else:
            hi = mid
    return hi


def lower_bound(n: int, b: int, c: int, seed: int = REPORT_SEED) -> float:
    """The harness's paired-bootstrap lower bound for B = b wins and C = c losses among n items."""
    a = np.zeros(n)
    m = np.zeros(n)
    a[:b] = 1.0  # rule right, majority wrong
    if c:
        m[n - c :] = 1.0  # majority right, rule wrong
    return paired_bootstrap(a, m, n_boot=N_BOOT, seed=seed)[1]


def thresholds(n: int, c_max: int) -> list[int]:
    """b*(n, c) for c = 0..c_max: the fewest wins whose CI lower bound is > 0 (n + 1 = never)."""
    out: list[int] = []
    b = 1
    for c in range(c_max + 1):
        b = max(b, c + 1)
        while b + c <= n and lower_bound(n, b, c) <= 0.0:
            b += 1
        out.append(b if b + c <= n else n + 1)
    return out


def power(n: int, p_b: float, p_c: float, thr: list[int]) -> float:
    """P(lower bound > 0) when each item is +1 w.p. p_b, −1 w.p. p_c (exact sum over C)."""
    cs = np.arange(len(thr))
    w_c = np.exp(log_binom_pmf(cs, n, p_c))
    cond = p_b / (1.0 - p_c)
    return float(sum(w * binom_sf(t, n - int(c), cond) for c, w, t in zip(cs, w_c, thr, strict=True)))


def c_max_for(n: int, p_c: float) -> int:
    """C values beyond this carry negligible probability (> 8 SD above the mean)."""
    return min(n, math.ceil(n * p_c + 8 * math.sqrt(n * p_c * (1 - p_c)) + 10))


def simulate(n: int, p_b: float, p_c: float, studies: int, rng: np.random.Generator) -> tuple[float, float]:
    """Monte Carlo power: share of simulated studies whose CI lower bound is > 0, and its SE."""
    hits = 0
    for _ in range(studies):
        u = rng.random(n)
        a = (u < p_b).astype(float)  # +1 items at random positions
        m = ((u >= p_b) & (u < p_b + p_c)).astype(float)
        hits += paired_bootstrap(a, m, n_boot=N_BOOT, seed=REPORT_SEED)[1] > 0.0
    p = hits / studies
    return p, math.sqrt(p * (1 - p) / studies)


def _points(values: set[float]) -> str:
    return ", ".join(f"{100 * v:+.1f}" for v in sorted(values))


def observed() -> tuple[int, int, int]:
    """Print the two runs' discordance; return pooled (wins, losses, items) vs majority."""
    with open(PUBLISHED / "per_item.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    a = np.array([float(r[RULE]) for r in rows])
    print("## 1. The existing runs' discordance\n")
    print("| run | items | base | rule right, base wrong (b) | the reverse (c) | Δ [95% CI] (harness) |")
    print("|---|---:|---|---:|---:|---|")
    for base in (BASELINE, "deepconf"):
        x = np.array([float(r[base]) for r in rows])
        c, b, _ = mcnemar(a, x)  # mcnemar(a, b) -> (a wrong & b right, a right & b wrong, p)
        d, lo, hi, _ = paired_bootstrap(a, x, n_boot=N_BOOT, seed=REPORT_SEED if base == BASELINE else 0)
        print(
            f"| published, seed 42, items 0–99 | {len(rows)} | {base} | {b} | {c} | {100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] |"
        )
        if base == BASELINE:
            pub_b, pub_c = b, c
            rep = json.loads((PUBLISHED / "report.json").read_text(encoding="utf-8"))
            vm = next(m for m in rep["methods"] if m["name"] == RULE)["vs_majority"]
            same = (vm["wins"], vm["losses"], vm["lo"], vm["hi"]) == (b, c, lo, hi)
            assert same, f"the published report says {vm}; recomputed {b}, {c}, {lo}, {hi}"
    f = FRESH_40
    net = round(FRESH_N * (f["acc_rule"] - f["acc_majority"]))
    print(
        f"\nThe {FRESH_N} fresh items' per-item results are not stored in this repository; issue 27 gives "
        f"{100 * f['acc_rule']:.1f}% vs {100 * f['acc_majority']:.1f}% ({net:+d} items net), CI "
        f"[{100 * f['lo']:+.1f}, {100 * f['hi']:+.1f}]. The harness's CI for each (b, c) with b − c = {net} "
        "(20 random item orders each; the CI depends a little on the order):\n"
    )
    rng = np.random.default_rng(SEED)
    print("| b | c | CI lower bounds seen | CI upper bounds seen | matches the issue |")
    print("|---:|---:|---|---|---|")
    fresh: tuple[int, int] | None = None
    for c in range(0, 4):
        b = c + net
        los, his = set(), set()
        for _ in range(20):
            perm = rng.permutation(FRESH_N)
            x = np.zeros(FRESH_N)
            y = np.zeros(FRESH_N)
            x[perm[:b]] = 1.0
            y[perm[b : b + c]] = 1.0
            _, lo, hi, _ = paired_bootstrap(x, y, n_boot=N_BOOT, seed=REPORT_SEED)
            los.add(round(lo, 4))
            his.add(round(hi, 4))
        ok = los == {f["lo"]} and f["hi"] in his
        if ok and fresh is None:
            fresh = (b, c)
        print(f"| {b} | {c} | {_points(los)} | {_points(his)} | {'yes' if ok else 'no'} |")
    assert fresh is not None, "no (b, c) reproduces the issue's CI"
    wins, losses, items = pub_b + fresh[0], pub_c + fresh[1], len(rows) + FRESH_N
    print(
        f"\nPooled over both runs: b = {wins}, c = {losses} on {items} items: discordance "
        f"q̂ = {(wins + losses) / items:.2%}, one-sided 95% Clopper–Pearson upper bound "
        f"{cp_upper(wins + losses, items):.2%}.\n"
    )
    return wins, losses, items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mc", type=int, default=400, help="Monte Carlo studies per scenario at the chosen N (0: none)")
    args = ap.parse_args(argv)
    print("# Power of the pre-registered primary test (`power.py`)\n")
    wins, losses, items = observed()
    q_hat = (wins + losses) / items
    q_up = cp_upper(wins + losses, items)
    design_q = math.ceil(q_up * 1000) / 1000  # round the upper bound up to 0.1 point
    scenarios = sorted({max(DELTA, round(q_hat, 3)), 0.04, 0.05, design_q, 0.08, 0.10})
    print("## 2. Power: P(CI lower bound > 0) when the true Δ = +3 points\n")
    print(
        f"Each column is a discordance q = p_b + p_c with p_b − p_c = {DELTA:.2f} (q = 3% means the rule is never "
        f"worse than majority). Design scenario (**bold**): q = {design_q:.1%}, the one-sided 95% upper bound "
        "of the pooled discordance rounded up. Harness CI: 10,000 resamples, seed 2023. `b*|c=0`: the fewest "
        "wins that give a lower bound > 0 when the rule never loses.\n"
    )
    head = " | ".join(f"**q = {q:.1%}**" if q == design_q else f"q = {q:.1%}" for q in scenarios)
    print(f"| N | b*\\|c=0 | {head} |")
    print("|---:|---:|" + "---:|" * len(scenarios))
    chosen = None
    for n in N_GRID:
        c_max = c_max_for(n, (max(scenarios) - DELTA) / 2)
        thr = thresholds(n, c_max)
        pw = {q: power(n, (q + DELTA) / 2, (q - DELTA) / 2, thr) for q in scenarios}
        cells = " | ".join(f"**{pw[q]:.3f}**" if q == design_q else f"{pw[q]:.3f}" for q in scenarios)
        print(f"| {n} | {thr[0]} | {cells} |")
        if chosen is None and pw[design_q] >= TARGET_POWER:
            chosen = n
    print()
    if chosen is None:
        print(f"No N up to {N_GRID[-1]} reaches {TARGET_POWER:.0%} power in the design scenario.")
        return 0
    print(f"Smallest N of the grid with power ≥ {TARGET_POWER:.0%} at q = {design_q:.1%}: **N = {chosen}**.\n")
    if args.mc:
        rng = np.random.default_rng(SEED)
        print(f"## 3. Monte Carlo check at N = {chosen} ({args.mc} simulated studies each, harness CI per study)\n")
        print("| scenario | p_b | p_c | exact | Monte Carlo ± SE |")
        print("|---|---:|---:|---:|---|")
        thr = thresholds(chosen, c_max_for(chosen, design_q))
        for label, p_b, p_c in (
            (f"Δ = +3 points, q = {design_q:.1%}", (design_q + DELTA) / 2, (design_q - DELTA) / 2),
            (f"Δ = 0, q = {design_q:.1%} (false positives)", design_q / 2, design_q / 2),
        ):
            ex = power(chosen, p_b, p_c, thr)
            mc, se = simulate(chosen, p_b, p_c, args.mc, rng)
            print(f"| {label} | {p_b:.4f} | {p_c:.4f} | {ex:.3f} | {mc:.3f} ± {se:.3f} |")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
