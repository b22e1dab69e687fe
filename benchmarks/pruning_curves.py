"""Online-pruning curves from a stored evaluation run: tokens per item vs accuracy, per pruning score.

No generation: candidate j's tokens depend only on (seed, j), so a row that
online pruning stops after L tokens has produced exactly the first L tokens of
its stored sample, and `l2reason.eval.pruning` replays the rule the backend
runs (`PruneSpec`, the same decisions as the backend's tracker) on the run's
`samples.jsonl`. The vote is the majority vote of the survivors (what a
request with `prune` and `SelectionSpec(method="majority")` returns), compared
with majority@8 without pruning on the same items (paired bootstrap).

For each score (DeepConf confidence, self-certainty, ℓ2 mean norm of the band
in both directions, ℓ2 exceedance rate of the band) it sweeps:

- fixed thresholds (percentiles of all stored candidates' lowest running
  scores; no labels used to place them) x warm-up x window x min_keep;
- the DeepConf-online rule (`threshold="first-finished"`): first x quantile
  x min_keep;

and reports (1) a cross-fitted operating point: the rule with the largest
token saving whose accuracy on one half of the items (by index parity) is
within 1 point of that half's majority@8, scored on the other half, and vice
versa, so every item is scored by a rule chosen without it; (2) the curve over
the threshold at one reference setting; (3) the first-finished rule; (4) the
score-free control, majority@k over k of the 8 candidates.

Usage:
    python benchmarks/pruning_curves.py RUN --out OUT_DIR [--n-boot 10000] [--warmups 32,64,128] ...

Writes OUT_DIR/pruning_curves.md, .json and .png. Not a test.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import cpu_model  # noqa: E402
from l2reason.backends.base import PruneSpec  # noqa: E402
from l2reason.eval.harness import load_run  # noqa: E402
from l2reason.eval.pruning import (  # noqa: E402
    item_signals,
    majority_at_k,
    pooled_median_tau,
    simulate_item,
)
from l2reason.eval.stats import bootstrap_ci, paired_bootstrap  # noqa: E402
from l2reason.signal.band import default_band  # noqa: E402
from l2reason.techniques.pruning import running_scores  # noqa: E402

SCORES: dict[str, dict[str, Any]] = {
    "confidence": {"score": "confidence"},
    "self-certainty": {"score": "self-certainty"},
    "l2-mean": {"score": "l2", "l2_stat": "mean", "direction": "high"},
    "l2-mean-low": {"score": "l2", "l2_stat": "mean", "direction": "low"},
    "l2-exceed": {"score": "l2", "l2_stat": "exceedance", "direction": "high"},
}
LAYER_FAMILY = "l2-layer"
LABEL = {
    LAYER_FAMILY: "ℓ2 norm of one layer, layer and direction chosen on the other half",
    "confidence": "DeepConf confidence",
    "self-certainty": "self-certainty",
    "l2-mean": "ℓ2 mean norm (band), high kept",
    "l2-mean-low": "ℓ2 mean norm (band), low kept",
    "l2-exceed": "ℓ2 exceedance rate (band, τ = pooled median), high kept",
}
PERCENTILES = [2, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95]
QUANTILES = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]


def compare_verdict(a: dict[str, Any], b: dict[str, Any]) -> str:
    """How the best ℓ2 rule ``b`` compares with the best logprob rule ``a`` (cross-fitted points).

    A rule that meets the goal beats one that does not; otherwise one is better only if it is at least as
    good on both Δ and saving. When each wins on one of them, the sentence says so instead of ranking.
    """
    if bool(a["goal"]) != bool(b["goal"]):
        return f"ℓ2-based pruning {'does better than' if b['goal'] else 'is worse than'} confidence-based pruning here"
    d = float(b["delta"]) - float(a["delta"])
    sv = float(b["saved"]) - float(a["saved"])
    if d == 0 and sv == 0:
        return "ℓ2-based and confidence-based pruning do the same here"
    if d >= 0 and sv >= 0:
        return "ℓ2-based pruning does better than confidence-based pruning here"
    if d <= 0 and sv <= 0:
        return "ℓ2-based pruning is worse than confidence-based pruning here"
    overlap = a["delta_ci"][0] <= b["delta_ci"][1] and b["delta_ci"][0] <= a["delta_ci"][1]
    loses_less, saves_more = ("the ℓ2 rule", "the logprob rule") if d > 0 else ("the logprob rule", "the ℓ2 rule")
    return f"neither dominates: {loses_less} loses less accuracy, {saves_more} saves more tokens" + (
        ", and their Δ CIs overlap" if overlap else ""
    )


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "numpy": np.__version__}
    for pkg in ("l2reason", "matplotlib"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "?"
    return out


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


@dataclass
class Rule:
    """One pruning rule evaluated on every item."""

    score: str
    spec: PruneSpec
    kind: str  # "fixed" or "first-finished"
    pct: float | None  # the threshold's percentile (fixed rules)
    correct: np.ndarray  # [items] survivors' majority right
    tokens: np.ndarray  # [items] generated tokens

    def name(self) -> str:
        s = self.spec
        if self.kind == "fixed":
            thr = f"τ=p{self.pct:g} ({s.threshold:.4g})"
        else:
            thr = f"first-finished (first={s.first}, q={s.quantile:g})"
        where = f"layer {s.layers[0]} ({s.direction}), " if self.score == LAYER_FAMILY else ""
        return f"{where}{thr}, warm-up {s.warmup}, window {s.window}, min_keep {s.min_keep}"


def evaluate(items, spec: PruneSpec, pre, num_layers: int) -> tuple[np.ndarray, np.ndarray]:
    outs = [simulate_item(rec, spec, num_layers=num_layers, precomputed=p) for rec, p in zip(items, pre, strict=True)]
    return np.array([o.correct for o in outs]), np.array([o.tokens for o in outs], dtype=np.float64)


def fixed_rules(family: str, proto: PruneSpec, pre: list, min_keep: int, items: list, num_layers: int) -> list[Rule]:
    """Fixed-threshold rules at one ``min_keep``: the threshold at each of :data:`PERCENTILES` of all stored
    candidates' lowest running scores (from ``pre``; no labels used to place it)."""
    lows = np.array([low[-1] for p in pre for _, low in p])
    lows = lows[np.isfinite(lows)]
    out = []
    for p in PERCENTILES:
        spec = proto.model_copy(update={"threshold": float(np.percentile(lows, p)), "min_keep": min_keep})
        out.append(Rule(family, spec, "fixed", p, *evaluate(items, spec, pre, num_layers)))
    return out


def choose(rules: list[Rule], idx: np.ndarray, base: np.ndarray, base_tok: np.ndarray, tol: float) -> Rule:
    """The rule with the largest token saving on items ``idx`` whose accuracy there is within ``tol`` of the base."""
    b = base[idx].mean()
    ok = [r for r in rules if r.correct[idx].mean() >= b - tol - 1e-12]
    if not ok:  # nothing qualifies: the most accurate (usually the least pruning)
        return max(rules, key=lambda r: (r.correct[idx].mean(), -r.tokens[idx].sum()))
    return max(ok, key=lambda r: (1 - r.tokens[idx].sum() / base_tok[idx].sum(), r.correct[idx].mean()))


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def curve_cells(rows: dict[str, list[dict[str, Any]]], i: int) -> str:
    """Row ``i`` of every score's curve as table cells: saved % / accuracy % / Δ [95% CI]."""
    cells = (rows[score][i] for score in SCORES)
    return " | ".join(
        f"{pct(c['saved'])} / {pct(c['accuracy'])} / {delta_cell((c['delta'], *c['delta_ci'], 0))}" for c in cells
    )


def curve_header(first: str) -> list[str]:
    """A curve table's header: the ``first`` column(s) (``"percentile"``, ``"first | quantile"``), one per score."""
    n = first.count("|") + 1
    return [
        "| " + first + " | " + " | ".join(LABEL[s] for s in SCORES) + " |",
        "|" + "---:|" * n + "---|" * len(SCORES),
    ]


def delta_cell(d: tuple[float, float, float, float]) -> str:
    return f"{100 * d[0]:+.1f} [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="an evaluation run folder (config.json + samples.jsonl)")
    ap.add_argument("--out", required=True, help="output folder for pruning_curves.md/.json/.png")
    ap.add_argument("--warmups", default="32,64,128")
    ap.add_argument("--windows", default="32,128,2048")
    ap.add_argument("--min-keep", default="1,2,4")
    ap.add_argument("--firsts", default="1,2,4", help="`first` values of the first-finished rule")
    ap.add_argument(
        "--ref", default="64,128,2", help="reference setting of the threshold curve: warmup,window,min_keep"
    )
    ap.add_argument("--tol", type=float, default=0.01, help="accuracy tolerance vs majority@N (0.01 = 1 point)")
    ap.add_argument("--goal-saving", type=float, default=0.40)
    ap.add_argument("--n-boot", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t_start = time.perf_counter()

    run = load_run(args.run)
    cfg = run.config
    L = cfg.num_layers
    items = [r for r in run.samples if len(r.result.candidates) == cfg.n and cfg.n > 1]
    if len(items) < 4:
        sys.exit(f"{args.run}: {len(items)} items with N={cfg.n} candidates; need at least 4")
    n_items, N = len(items), cfg.n
    band = default_band(L)
    tau = pooled_median_tau(items, band)
    base = np.array([simulate_item(r, PruneSpec(threshold=-1e30), num_layers=L).base_correct for r in items])
    base_tok = np.array([sum(c.completion_tokens for c in r.result.candidates) for r in items], dtype=np.float64)
    warmups, windows, keeps, firsts = ints(args.warmups), ints(args.windows), ints(args.min_keep), ints(args.firsts)
    ref_w, ref_win, ref_k = ints(args.ref)
    if ref_w not in warmups or ref_win not in windows or ref_k not in keeps:
        sys.exit("--ref must be one of the swept warm-up, window and min_keep values")

    rules: dict[str, list[Rule]] = {s: [] for s in SCORES}
    for score, kw in SCORES.items():
        extra = {"tau": tau.tolist()} if kw.get("l2_stat") == "exceedance" else {}
        proto = PruneSpec(threshold=0.0, **kw, **extra)
        sigs = [item_signals(r, proto, L) for r in items]
        for w in warmups:
            for win in windows:
                pre = [[running_scores(s, win, w) for s in ss] for ss in sigs]
                at = proto.model_copy(update={"warmup": w, "window": win})
                for mk in keeps:
                    if mk >= N:
                        continue
                    rules[score] += fixed_rules(score, at, pre, mk, items, L)
                    for f in firsts:
                        if f >= N:
                            continue
                        for q in QUANTILES:
                            update = {"threshold": "first-finished", "first": f, "quantile": q, "min_keep": mk}
                            spec = at.model_copy(update=update)
                            c, t = evaluate(items, spec, pre, L)
                            rules[score].append(Rule(score, spec, "first-finished", None, c, t))
    # ℓ2 of one layer, layer and direction chosen by the cross-fit (its best honest chance; fixed thresholds
    # at the reference warm-up and window, every min_keep)
    rules[LAYER_FAMILY] = []
    for layer in range(L):
        for direction in ("high", "low"):
            proto = PruneSpec(
                score="l2", layers=[layer], direction=direction, threshold=0.0, warmup=ref_w, window=ref_win
            )
            pre = [[running_scores(s, ref_win, ref_w) for s in item_signals(r, proto, L)] for r in items]
            for mk in keeps:
                if mk < N:
                    rules[LAYER_FAMILY] += fixed_rules(LAYER_FAMILY, proto, pre, mk, items, L)
    n_rules = sum(len(v) for v in rules.values())

    idx_all = np.arange(n_items)
    parity = np.array([r.index % 2 for r in items])
    halves = [np.flatnonzero(parity == 0), np.flatnonzero(parity == 1)]
    base_acc = bootstrap_ci(base.astype(float), n_boot=args.n_boot, seed=args.seed)

    def stats(correct: np.ndarray, tokens: np.ndarray, k: int) -> dict[str, Any]:
        d = paired_bootstrap(correct.astype(float), base.astype(float), n_boot=args.n_boot, seed=args.seed + k)
        return {
            "accuracy": float(correct.mean()),
            "tokens_per_item": float(tokens.mean()),
            "saved": float(1 - tokens.sum() / base_tok.sum()),
            "delta": d[0],
            "delta_ci": [d[1], d[2]],
            "p": d[3],
        }

    # (1) cross-fitted operating points
    cross: dict[str, Any] = {}
    for k, (score, rs) in enumerate(rules.items()):
        correct = np.zeros(n_items, dtype=bool)
        tokens = np.zeros(n_items)
        chosen = []
        for fit, test in ((halves[0], halves[1]), (halves[1], halves[0])):
            r = choose(rs, fit, base, base_tok, args.tol)
            correct[test], tokens[test] = r.correct[test], r.tokens[test]
            chosen.append(r.name())
        s = stats(correct, tokens, 100 + k)
        s["rules"] = chosen
        s["goal"] = bool(s["saved"] >= args.goal_saving and s["delta"] >= -args.tol)
        s["goal_ci"] = bool(s["saved"] >= args.goal_saving and s["delta_ci"][0] >= -args.tol)
        ins = choose(rs, idx_all, base, base_tok, args.tol)
        s["in_sample"] = {**stats(ins.correct, ins.tokens, 200 + k), "rule": ins.name()}
        cross[score] = s

    # (2) the threshold curve at the reference setting, (3) the first-finished rule there
    ref_curves: dict[str, list[dict[str, Any]]] = {}
    ff_rows: dict[str, list[dict[str, Any]]] = {}
    for k, (score, rs) in enumerate((s, rules[s]) for s in SCORES):
        at = [r for r in rs if (r.spec.warmup, r.spec.window, r.spec.min_keep) == (ref_w, ref_win, ref_k)]
        ref_curves[score] = [
            {"percentile": r.pct, "threshold": r.spec.threshold, **stats(r.correct, r.tokens, 300 + k)}
            for r in at
            if r.kind == "fixed"
        ]
        ff_rows[score] = [
            {"first": r.spec.first, "quantile": r.spec.quantile, **stats(r.correct, r.tokens, 400 + k)}
            for r in at
            if r.kind == "first-finished"
        ]

    # (4) the score-free control: majority over k of the N candidates
    control = []
    for k in range(1, N + 1):
        acc_tok = [majority_at_k(r, k) for r in items]
        c = np.array([a for a, _ in acc_tok])
        t = np.array([b for _, b in acc_tok])
        control.append({"k": k, **stats(c, t, 500 + k)})
    ctl_tok = [c["tokens_per_item"] for c in control]
    ctl_acc = [c["accuracy"] for c in control]
    for s in cross.values():  # the control's accuracy at the same token budget (linear between k values)
        s["control_accuracy"] = float(np.interp(s["tokens_per_item"], ctl_tok, ctl_acc))

    # the Pareto frontier of every rule of a score (in-sample, optimistic), for the plot
    frontier: dict[str, list[list[float]]] = {}
    for score, rs in ((s, rules[s]) for s in SCORES):
        pts = sorted({(float(r.tokens.mean()), float(r.correct.mean())) for r in rs})
        front, best = [], -1.0
        for tok, acc in sorted(pts, key=lambda p: (p[0], -p[1])):
            if acc > best:
                front.append([tok, acc])
                best = acc
        frontier[score] = front

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "benchmarks/pruning_curves.py", *sys.argv[1:]])
    meta = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(),
        "cores": __import__("os").cpu_count(),
        "versions": versions(),
        "run": {
            "dataset": cfg.dataset,
            "model_id": cfg.model_id,
            "n": N,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "max_new_tokens": cfg.max_new_tokens,
            "logprobs": cfg.logprobs,
            "items": n_items,
            "sampled_with": cfg.env,
        },
        "band": band,
        "exceedance_tau": tau.tolist(),
        "grid": {
            "warmups": warmups,
            "windows": windows,
            "min_keep": keeps,
            "firsts": firsts,
            "percentiles": PERCENTILES,
            "quantiles": QUANTILES,
            "rules": n_rules,
        },
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    result = {
        "meta": meta,
        "baseline": {
            "accuracy": base_acc[0],
            "ci": [base_acc[1], base_acc[2]],
            "tokens_per_item": float(base_tok.mean()),
        },
        "cross_fitted": cross,
        "reference": {"warmup": ref_w, "window": ref_win, "min_keep": ref_k, "curves": ref_curves},
        "first_finished": ff_rows,
        "majority_at_k": control,
        "frontier": frontier,
    }
    (out_dir / "pruning_curves.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    plot(result, out_dir / "pruning_curves.png", args.goal_saving, args.tol)
    (out_dir / "pruning_curves.md").write_text(markdown(result, args), encoding="utf-8")
    print((out_dir / "pruning_curves.md").read_text(encoding="utf-8"))


def plot(res: dict[str, Any], path: Path, goal: float, tol: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = res["baseline"]
    bt, ba = base["tokens_per_item"], 100 * base["accuracy"]
    N = res["meta"]["run"]["n"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 7))
    colors = dict(zip([*SCORES, LAYER_FAMILY], ["C0", "C1", "C2", "C3", "C4", "C5"], strict=True))
    ref = res["reference"]
    ctl = res["majority_at_k"]
    cx = [100 * c["tokens_per_item"] / bt for c in ctl]

    ax = axes[0]
    ax.axhspan(ba - 100 * tol, ba + 100 * tol, color="0.85", zorder=0)
    ax.axvline(100 * (1 - goal), color="0.5", ls=":", lw=1)
    ax.plot([100], [ba], "k*", ms=12, label=f"majority@{N}, no pruning")
    ax.plot(cx, [100 * c["accuracy"] for c in ctl], "k--", marker=".", lw=1, label="majority@k, no score (control)")
    for c, x in zip(ctl, cx, strict=True):
        ax.annotate(f"k={c['k']}", (x, 100 * c["accuracy"]), fontsize=7)
    for score, pts in ref["curves"].items():
        xs = [100 * p["tokens_per_item"] / bt for p in pts]
        ax.plot(xs, [100 * p["accuracy"] for p in pts], "-o", ms=3, color=colors[score], label=LABEL[score])
        fr = res["frontier"][score]
        ax.plot([100 * t / bt for t, _ in fr], [100 * a for _, a in fr], ":", color=colors[score], lw=1)
    ax.set_xlabel("generated tokens per item (% of no pruning)")
    ax.set_ylabel("accuracy of the survivors' majority vote (%)")
    ax.set_title(
        f"fixed-threshold sweep (warm-up {ref['warmup']}, window {ref['window']}, min_keep {ref['min_keep']})\n"
        "dotted: best rule of every setting (in-sample, optimistic)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)

    ax = axes[1]
    ax.axhspan(-100 * tol, 100 * tol, color="0.85", zorder=0)
    ax.axhline(0, color="k", lw=0.8)
    ax.axvline(100 * (1 - goal), color="0.5", ls=":", lw=1)
    for c, x in zip(ctl, cx, strict=True):
        lo, hi = c["delta_ci"]
        ax.errorbar(
            [x],
            [100 * c["delta"]],
            yerr=[[100 * (c["delta"] - lo)], [100 * (hi - c["delta"])]],
            fmt="k.",
            capsize=2,
            lw=0.8,
        )
        ax.annotate(f"k={c['k']}", (x, 100 * c["delta"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for score, s in res["cross_fitted"].items():
        lo, hi = s["delta_ci"]
        ax.errorbar(
            [100 * s["tokens_per_item"] / bt],
            [100 * s["delta"]],
            yerr=[[100 * (s["delta"] - lo)], [100 * (hi - s["delta"])]],
            fmt="o",
            color=colors[score],
            capsize=4,
            label=f"{LABEL[score]}: Δ {100 * s['delta']:+.1f}",
        )
    ax.set_xlabel("generated tokens per item (% of no pruning)")
    ax.set_ylabel(f"Δ accuracy vs majority@{N}, points (95% paired CI)")
    ax.set_title(
        "cross-fitted operating points (rule chosen on the other half of the items)\nblack: majority@k control",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(res: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The findings in words, from the cross-fitted operating points."""
    cross = res["cross_fitted"]
    N = res["meta"]["run"]["n"]
    out = ["**Findings** (cross-fitted; written from the numbers by the script):", ""]
    met = [s for s, v in cross.items() if v["goal"]]
    met_ci = [s for s, v in cross.items() if v["goal_ci"]]
    out.append(
        f"- Goal (≥ {100 * args.goal_saving:.0f}% fewer tokens, Δ ≥ −{100 * args.tol:g} point): "
        + (f"met by {', '.join(LABEL[s] for s in met)}" if met else "met by no score")
        + (
            f"; with the CI's lower end too by {', '.join(LABEL[s] for s in met_ci)}."
            if met_ci
            else "; by none with the CI's lower end."
        )
    )
    lp = max(("confidence", "self-certainty"), key=lambda s: (cross[s]["goal"], cross[s]["delta"], cross[s]["saved"]))
    l2s = [s for s in cross if s.startswith("l2")]
    l2 = max(l2s, key=lambda s: (cross[s]["goal"], cross[s]["delta"], cross[s]["saved"]))
    a, b = cross[lp], cross[l2]
    verdict = compare_verdict(a, b)
    out.append(
        f"- Best logprob score ({LABEL[lp]}): saves {pct(a['saved'])}% at Δ {100 * a['delta']:+.1f} "
        f"[{100 * a['delta_ci'][0]:+.1f}, {100 * a['delta_ci'][1]:+.1f}]; best ℓ2 score ({LABEL[l2]}): saves "
        f"{pct(b['saved'])}% at Δ {100 * b['delta']:+.1f} [{100 * b['delta_ci'][0]:+.1f}, "
        f"{100 * b['delta_ci'][1]:+.1f}]: {verdict} (best of each kind ranked by goal met, then Δ, then saving)."
    )
    beat = [s for s, v in cross.items() if v["accuracy"] > v["control_accuracy"] + 1e-9]
    out.append(
        f"- Against the score-free control (majority over fewer of the {N} candidates at the same token budget): "
        + (f"{', '.join(LABEL[s] for s in beat)} above it" if beat else "no score is above it")
        + "; the control is an average over subsets, the rules single runs, so small gaps are noise."
    )
    return out


def markdown(res: dict[str, Any], args: argparse.Namespace) -> str:
    m, b = res["meta"], res["baseline"]
    run = m["run"]
    N = run["n"]
    lines = [
        f"# Online pruning replayed on stored samples: {run['dataset']}, {run['items']} items × N = {N}",
        "",
        f"Command: `{m['command']}`  ",
        f"Date: {m['date']}; CPU: {m['cpu']} ({m['cores']} cores); {m['seconds']} s (no generation).  ",
        f"Versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}.  ",
        f"Samples: model {run['model_id']}, T = {run['temperature']}, top-p {run['top_p']}, ≤ {run['max_new_tokens']} "
        f"new tokens, top-{run['logprobs']} logprobs; sampled with {run['sampled_with']}.",
        "",
        "Every number replays `PruneSpec` rules on the stored candidates (`l2reason/eval/pruning.py`, the same "
        "decisions the transformers backend's online tracker makes; a pruned row's tokens are the stored prefix). "
        "Accuracy is the majority vote of the survivors; Δ is the paired difference from majority@"
        f"{N} without pruning on the same items, in points, with its 95% paired bootstrap CI "
        f"({args.n_boot} resamples). Tokens count every generated token, pruned prefixes included. "
        f"The ℓ2 signals use the band layers {m['band']}; the exceedance τ is each layer's median stored norm "
        "over all items (no labels).",
        "",
        f"**Baseline**: majority@{N}, no pruning: {pct(b['accuracy'])}% [{pct(b['ci'][0])}, {pct(b['ci'][1])}], "
        f"{b['tokens_per_item']:.0f} tokens per item.",
        "",
        f"**Goal** (issue): ≥ {100 * args.goal_saving:.0f}% fewer generated tokens with accuracy within "
        f"{100 * args.tol:g} point of majority@{N}.",
        "",
        "## 1. Cross-fitted operating points",
        "",
        f"Per score, over {m['grid']['rules']} rules in all (fixed thresholds at percentiles "
        f"{m['grid']['percentiles'][0]}–{m['grid']['percentiles'][-1]} of the stored lowest running scores, and "
        f"the first-finished rule with first ∈ {m['grid']['firsts']} and quantile ∈ {m['grid']['quantiles']}; "
        f"warm-up ∈ {m['grid']['warmups']}, window ∈ {m['grid']['windows']}, min_keep ∈ {m['grid']['min_keep']}): "
        "the rule with the largest saving whose accuracy on the even-indexed items is within the tolerance of their "
        "majority vote is scored on the odd-indexed items, and vice versa. The in-sample column chooses on all "
        "items and scores on the same ones (optimistic).",
        "",
        "| score | tokens/item | saved % | accuracy % | Δ vs majority [95% CI] | p | goal (point / CI) | "
        "control at the same tokens, acc % | in-sample: saved %, Δ |",
        "|---|---:|---:|---:|---|---:|---|---:|---|",
    ]
    for score, s in res["cross_fitted"].items():
        ins = s["in_sample"]
        lines.append(
            f"| {LABEL[score]} | {s['tokens_per_item']:.0f} | {pct(s['saved'])} | {pct(s['accuracy'])} | "
            f"{delta_cell((s['delta'], *s['delta_ci'], s['p']))} | {s['p']:.2f} | "
            f"{'yes' if s['goal'] else 'no'} / {'yes' if s['goal_ci'] else 'no'} | "
            f"{pct(s['control_accuracy'])} | {pct(ins['saved'])}, {100 * ins['delta']:+.1f} |"
        )
    lines += [
        "",
        "Goal columns: point = saved ≥ the goal and Δ ≥ −tolerance; CI = saved ≥ the goal and the CI's lower end "
        "≥ −tolerance. Control: majority over k candidates without any score (section 4), interpolated to the same "
        "tokens per item.",
        "",
        *summary(res, args),
        "",
        "Rules chosen (even half → scored on odd; odd half → scored on even):",
        "",
    ]
    for score, s in res["cross_fitted"].items():
        lines.append(f"- {LABEL[score]}: {s['rules'][0]}; {s['rules'][1]}")
    ref = res["reference"]
    lines += [
        "",
        f"## 2. Threshold curves (fixed threshold; warm-up {ref['warmup']}, window {ref['window']}, "
        f"min_keep {ref['min_keep']})",
        "",
        "Each cell: saved % / accuracy % / Δ [95% CI]. The threshold is the given percentile of all stored "
        "candidates' lowest running scores (higher percentile = more pruning).",
        "",
        *curve_header("percentile"),
    ]
    for i, p in enumerate(PERCENTILES):
        lines.append(f"| {p} | {curve_cells(ref['curves'], i)} |")
    lines += [
        "",
        "## 3. DeepConf's online rule (threshold from the first finished rows; same warm-up, window, min_keep)",
        "",
        *curve_header("first | quantile"),
    ]
    for i, row in enumerate(res["first_finished"]["confidence"]):
        lines.append(f"| {row['first']} | {row['quantile']:g} | {curve_cells(res['first_finished'], i)} |")
    lines += [
        "",
        f"## 4. Control without a score: majority over k of the {N} candidates (mean over all k-subsets)",
        "",
        "| k | tokens/item | saved % | accuracy % | Δ vs majority@N [95% CI] |",
        "|---:|---:|---:|---:|---|",
    ]
    for c in res["majority_at_k"]:
        lines.append(
            f"| {c['k']} | {c['tokens_per_item']:.0f} | {pct(c['saved'])} | {pct(c['accuracy'])} | "
            f"{delta_cell((c['delta'], *c['delta_ci'], 0))} |"
        )
    lines += ["", "![pruning curves](pruning_curves.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
