"""Online pruning inside an engine, measured: tokens, wall time and accuracy against the unpruned run.

For every batch of items (the harness's selection-pass requests: same messages, sampling and seeds as
``l2reason eval``), the script generates the batch without pruning and stores it as an evaluation run
(``OUT/run/``, readable by ``load_run``, ``l2reason report`` and ``benchmarks/pruning_curves.py``). On
the first ``--rule-items`` items it also generates each batch once per pruning rule, in an order that
rotates from batch to batch (so drift of the machine's speed hits every condition alike), and times
each call; there it checks, candidate by candidate, that the engine pruned at the step the offline
replay (:func:`l2reason.eval.pruning.simulate_item`) of the unpruned samples gives.

Two tables: **measured in the engine** (the rule items: tokens, seconds, accuracy, equality with the
replay) and **replayed on every stored item** (tokens and accuracy; what the engine gives when the
first table shows online = replay). Accuracy is the survivors' majority vote, with its paired bootstrap
CI against majority@N without pruning and McNemar. Rules with a fixed threshold come from the replay
of the published 100-item vLLM run of the same model (``--rule-set``: ``docs/results/gsm_symbolic_100_vllm/
pruning/`` for the 0.5B, ``docs/results/gsm_symbolic_100_1.5b_vllm/pruning/`` for the 1.5B, chosen on its
even-indexed items). The engine reproduces a seeded request's samples (up to bf16 noise), so those
earlier samples are nearly these ones (the report counts the items whose first candidate and majority
vote are right or wrong alike in both): on the even-indexed items the fixed rules are in-sample, and the
odd-indexed items are the out-of-sample test.

Usage (resumes from ``OUT/batches.jsonl`` and ``OUT/run/``; one line per finished batch)::

    python benchmarks/engine_pruning.py --model vllm:default --items 100 --rule-items 40 -n 8 \
        --out docs/results/engine_pruning
    python benchmarks/engine_pruning.py --model vllm:large ... --out docs/results/engine_pruning_1.5b
    python benchmarks/engine_pruning.py --report-only --out docs/results/engine_pruning   # rewrite the tables

Not a test: it needs an engine (``make vllm``); each rule item costs ~1.7x an unpruned one (5 rules).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import cpu_model, engine_versions, run_config, run_info, write_report  # noqa: E402
from l2reason.backends.base import GenerationRequest, PruneSpec  # noqa: E402

log = logging.getLogger("engine_pruning")
UNPRUNED = "unpruned"
# rule name -> what it is; the fixed thresholds are the replay's even-half choices for the model's size
RULES: dict[str, str] = {
    "confidence-fixed": "DeepConf token confidence, fixed τ (replay's even-half choice)",
    "self-certainty-fixed": "self-certainty, fixed τ (replay's even-half choice)",
    "l2-low-fixed": "ℓ2 band mean norm, low kept, fixed τ (replay's even-half choice)",
    "confidence-first-finished": (
        "DeepConf online: τ = 10% quantile of the first 2 finished rows' lowest scores (PruneSpec's default)"
    ),
    "l2-low-first-finished": "the same warm-up rule on the ℓ2 band mean norm, low kept",
}
_FIRST_FINISHED: dict[str, dict[str, Any]] = {
    "confidence-first-finished": {"score": "confidence", "threshold": "first-finished", "first": 2, "quantile": 0.1},
    "l2-low-first-finished": {
        "score": "l2",
        "direction": "low",
        "threshold": "first-finished",
        "first": 2,
        "quantile": 0.1,
    },
}
# rule set -> (the replay whose even-indexed items chose its fixed thresholds, rule name -> PruneSpec fields).
# The fixed rules are each replay's cross-fitted choice on the even half ("Rules chosen", first line per score).
RULE_SETS: dict[str, tuple[str, dict[str, dict[str, Any]]]] = {
    "0.5b": (
        "docs/results/gsm_symbolic_100_vllm/pruning/",
        {
            "confidence-fixed": {"score": "confidence", "threshold": 10.49, "warmup": 32, "window": 128, "min_keep": 4},
            "self-certainty-fixed": {
                "score": "self-certainty",
                "threshold": 13.84,
                "warmup": 64,
                "window": 32,
                "min_keep": 1,
            },
            "l2-low-fixed": {
                "score": "l2",
                "direction": "low",
                "threshold": -69.21,
                "warmup": 32,
                "window": 128,
                "min_keep": 1,
            },
            **_FIRST_FINISHED,
        },
    ),
    "1.5b": (
        "docs/results/gsm_symbolic_100_1.5b_vllm/pruning/",
        {
            "confidence-fixed": {"score": "confidence", "threshold": 9.304, "warmup": 32, "window": 32, "min_keep": 1},
            "self-certainty-fixed": {
                "score": "self-certainty",
                "threshold": 13.81,
                "warmup": 32,
                "window": 2048,
                "min_keep": 2,
            },
            "l2-low-fixed": {
                "score": "l2",
                "direction": "low",
                "threshold": -121.1,
                "warmup": 128,
                "window": 32,
                "min_keep": 4,
            },
            **_FIRST_FINISHED,
        },
    ),
}


def _rule_set(name: str, model: str) -> str:
    """``--rule-set``: ``auto`` picks the set chosen on the model's own earlier run (``:large`` is the 1.5B)."""
    if name != "auto":
        return name
    return "1.5b" if model.rstrip("/").endswith(":large") else "0.5b"


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vllm:default", help="a backend spec (vllm:default, vllm://HOST:PORT, ...)")
    ap.add_argument("--dataset", default="gsm_symbolic:seed=42")
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("-t", "--max-new-tokens", type=int, default=512)
    ap.add_argument("--batch-items", type=int, default=8)
    ap.add_argument("--rule-items", type=int, default=40, help="the first items that also run every rule")
    ap.add_argument("--rules", default=",".join(RULES), help=f"comma list of {', '.join(RULES)}")
    ap.add_argument(
        "--rule-set",
        choices=["auto", *RULE_SETS],
        default="auto",
        help="whose replay chose the fixed thresholds (auto: 1.5b for a ':large' model, else 0.5b)",
    )
    ap.add_argument("--minutes", type=float, default=0, help="stop after the batch that passes this budget (0: none)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--report-only", action="store_true", help="only rewrite the report from OUT/batches.jsonl")
    return ap.parse_args()


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    names = [r for r in args.rules.split(",") if r]
    unknown = sorted(set(names) - set(RULES))
    if unknown:
        sys.exit(f"unknown rule(s) {unknown}; known: {', '.join(RULES)}")
    return {
        "model": args.model,
        "dataset": args.dataset,
        "items": args.items,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "batch_items": args.batch_items,
        "rule_items": args.rule_items,
        "rule_set": (rule_set := _rule_set(args.rule_set, args.model)),
        "rules": {name: RULE_SETS[rule_set][1][name] for name in names},
    }


def _start(out: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The batches already finished under the same settings (a resume); refuses other settings."""
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "settings.json"
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        if old != settings:
            sys.exit(f"{cfg_path} holds other settings ({old}); use another --out or the same flags")
    else:
        cfg_path.write_text(json.dumps(settings, indent=2))
    path = out / "batches.jsonl"
    if not path.exists():
        return []
    done = []
    for line in path.read_text().splitlines():
        try:
            done.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash: that batch runs again
            break
    return done


def _batch(
    be: Any, cfg: Any, ds: Any, items: list[tuple[int, Any]], rules: dict[str, PruneSpec], turn: int, run_dir: Path
) -> dict:
    """Generate one batch unpruned (stored in ``run_dir``) and under every rule (rotated order); compare each rule
    with the replay of the unpruned samples."""
    from l2reason.eval.harness import SAMPLES, append_line, item_request, pass_path, stored_item
    from l2reason.eval.pruning import check_batch, survivor_majority

    base = [item_request(cfg, item, idx, SAMPLES) for idx, item in items]
    names = [UNPRUNED, *rules]
    order = names[turn % len(names) :] + names[: turn % len(names)]
    results: dict[str, tuple[list[Any], float]] = {}
    for name in order:
        reqs = base
        if name != UNPRUNED:
            reqs = [
                GenerationRequest.model_validate({**r.model_dump(), "prune": rules[name].model_dump()}) for r in base
            ]
        t0 = time.perf_counter()
        res = be.generate_many(reqs)
        results[name] = (res, time.perf_counter() - t0)
        log.info("  %-26s %6.1fs  %6d tokens", name, results[name][1], _tokens(res))
    full, full_s = results[UNPRUNED]
    recs = [
        stored_item(item, idx, r, ds, full_s / len(items), SAMPLES) for (idx, item), r in zip(items, full, strict=True)
    ]
    for rec in recs:
        append_line(pass_path(run_dir, SAMPLES), rec.model_dump_json())
    out: dict[str, Any] = {"items": [it.id for _, it in items], "order": order, "conditions": {}}
    out["conditions"][UNPRUNED] = {
        "seconds": full_s,
        "tokens": [sum(c.completion_tokens for c in r.candidates) for r in full],
        "correct": [survivor_majority(rec, np.ones(len(rec.answers), dtype=bool))[0] for rec in recs],
    }
    for name, spec in rules.items():
        res, secs = results[name]
        rows, tot = check_batch(recs, res, spec, cfg.num_layers)
        correct = [
            survivor_majority(rec, np.array([c.finish_reason != "pruned" for c in r.candidates]))[0]
            for rec, r in zip(recs, res, strict=True)
        ]
        out["conditions"][name] = {
            "seconds": secs,
            "tokens": [sum(c.completion_tokens for c in r.candidates) for r in res],
            "pruned": [sum(c.finish_reason == "pruned" for c in r.candidates) for r in res],
            "correct": correct,
            "same_tokens": tot["same_tokens"],
            "same_step": tot["same_pruned"],
            "same_vote": tot["same_vote"],
            "prefix_ok": tot["prefix_ok"],
            "diffs": [
                r for r in rows if r["online_tokens"] != r["replay_tokens"] or r["online_vote"] != r["replay_vote"]
            ],
        }
    return out


def _tokens(results: list[Any]) -> int:
    return sum(c.completion_tokens for r in results for c in r.candidates)


def summarise(batches: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """Per condition, on the batches that ran every rule: tokens, seconds, accuracy, the paired comparison with
    the unpruned majority and the equality with the replay."""
    from l2reason.eval.stats import bootstrap_ci, mcnemar, paired_bootstrap

    batches = [b for b in batches if set(settings["rules"]) <= set(b["conditions"])]
    if not batches:
        return {"items": 0, "batches": 0, "rows": []}

    def cat(name: str, key: str) -> np.ndarray:
        return np.array([v for b in batches for v in b["conditions"][name][key]])

    base_ok, base_tok = cat(UNPRUNED, "correct"), cat(UNPRUNED, "tokens")
    base_s = sum(b["conditions"][UNPRUNED]["seconds"] for b in batches)
    n_items = len(base_ok)
    rows = []
    for name in [UNPRUNED, *settings["rules"]]:
        ok, tok = cat(name, "correct"), cat(name, "tokens")
        secs = sum(b["conditions"][name]["seconds"] for b in batches)
        acc, lo, hi = bootstrap_ci(ok.astype(float))
        row: dict[str, Any] = {
            "condition": name,
            "tokens_per_item": float(tok.mean()),
            "tokens_saved": 1 - tok.sum() / base_tok.sum(),
            "seconds_per_item": secs / n_items,
            "time_saved": 1 - secs / base_s,
            "accuracy": [acc, lo, hi],
        }
        if name != UNPRUNED:
            d, dlo, dhi, p = paired_bootstrap(ok, base_ok)
            b01, b10, mp = mcnemar(ok, base_ok)
            cands = n_items * settings["n"]
            same = {
                k: sum(b["conditions"][name][k] for b in batches) for k in ("same_tokens", "same_step", "same_vote")
            }
            diverged = [
                int(ot != rt and os_ == -1 and rs == -1)
                for b in batches
                for r in b["conditions"][name]["diffs"]
                for ot, rt, os_, rs in zip(
                    r["online_tokens"],
                    r["replay_tokens"],
                    r["online_pruned_step"],
                    r["replay_pruned_step"],
                    strict=True,
                )
            ]
            row |= {
                "survivors_diverged": sum(diverged),
                "delta": [d, dlo, dhi, p],
                "mcnemar": [b01, b10, mp],
                "pruned_per_item": float(cat(name, "pruned").mean()),
                "same_tokens": [same["same_tokens"], cands],
                "same_step": [same["same_step"], cands],
                "same_vote": [same["same_vote"], n_items],
                "goal": [bool(row["tokens_saved"] >= 0.4 and x >= -0.01) for x in (d, dlo)],
            }
        rows.append(row)
    return {"items": n_items, "batches": len(batches), "rows": rows}


def replayed(run_dir: Path | Any, settings: dict[str, Any], *, odd_only: bool = False) -> dict[str, Any]:
    """Every rule replayed on every stored unpruned item (``odd_only``: the odd-indexed ones): tokens saved and
    accuracy vs majority@N (paired). ``run_dir``: the run's folder, or the run already loaded (``load_run``)."""
    from l2reason.eval.harness import load_run
    from l2reason.eval.pruning import simulate_run
    from l2reason.eval.stats import bootstrap_ci, paired_bootstrap

    run = load_run(run_dir) if isinstance(run_dir, Path) else run_dir
    samples = [r for r in run.samples if r.index % 2 == 1] if odd_only else list(run.samples)
    rows = []
    for name, fields in settings["rules"].items():
        sim = simulate_run(samples, PruneSpec.model_validate(fields), num_layers=run.config.num_layers)
        ok = np.array([it.correct for it in sim.items])
        base = np.array([it.base_correct for it in sim.items])
        d, lo, hi, p = paired_bootstrap(ok, base)
        rows.append(sim.summary() | {"condition": name, "accuracy_ci": list(bootstrap_ci(ok)), "delta": [d, lo, hi, p]})
    base_ci = list(bootstrap_ci(np.array([it.base_correct for it in sim.items]))) if rows else []
    return {"items": len(samples), "base_accuracy_ci": base_ci, "rows": rows}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _ci(v: list[float]) -> str:
    return f"{_pct(v[0])} [{_pct(v[1])}, {_pct(v[2])}]"


def _delta(d: list[float]) -> str:
    return f"{100 * d[0]:+.1f} [{100 * d[1]:+.1f}, {100 * d[2]:+.1f}]"


def _measured_lines(s: dict[str, Any], n: int) -> list[str]:
    lines = [
        "| condition | tokens/item | tokens saved % | s/item | time saved % | pruned/item | accuracy % [95% CI] "
        "| Δ vs majority@N [95% CI] | McNemar (only this / only unpruned, p) | equal to the replay: tokens, step, vote |",
        "|---|---:|---:|---:|---:|---:|---|---|---|---|",
    ]
    for r in s["rows"]:
        head = f"{r['tokens_per_item']:.0f} |"
        if r["condition"] == UNPRUNED:
            lines.append(
                f"| unpruned (majority@{n}) | {head} – | {r['seconds_per_item']:.1f} | – | 0 | {_ci(r['accuracy'])} "
                "| – | – | – |"
            )
            continue
        b = r["mcnemar"]
        eq = ", ".join(f"{r[k][0]}/{r[k][1]}" for k in ("same_tokens", "same_step", "same_vote"))
        lines.append(
            f"| {r['condition']} | {head} {_pct(r['tokens_saved'])} | {r['seconds_per_item']:.1f} "
            f"| {_pct(r['time_saved'])} | {r['pruned_per_item']:.2f} | {_ci(r['accuracy'])} | {_delta(r['delta'])} "
            f"| {b[0]} / {b[1]}, p = {b[2]:.2f} | {eq} |"
        )
    return lines


def _replayed_lines(rep: dict[str, Any], n: int) -> list[str]:
    lines = [
        "| condition | tokens/item | tokens saved % | pruned % of candidates | accuracy % [95% CI] "
        "| Δ vs majority@N [95% CI] | p | goal: point / CI |",
        "|---|---:|---:|---:|---|---|---:|---|",
    ]
    if rep["rows"]:
        r0 = rep["rows"][0]
        lines.append(
            f"| unpruned (majority@{n}) | {r0['base_tokens_per_item']:.0f} | – | 0 | {_ci(rep['base_accuracy_ci'])} | – | – | – |"
        )
    for r in rep["rows"]:
        goal = " / ".join("yes" if r["saved"] >= 0.4 and d >= -0.01 else "no" for d in r["delta"][:2])
        lines.append(
            f"| {r['condition']} | {r['tokens_per_item']:.0f} | {_pct(r['saved'])} | {_pct(r['pruned_frac'])} "
            f"| {_ci(r['accuracy_ci'])} | {_delta(r['delta'])} | {r['delta'][3]:.2f} | {goal} |"
        )
    return lines


def _report(out: Path, settings: dict[str, Any], batches: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    s = summarise(batches, settings)
    from l2reason.eval.harness import load_run

    run = load_run(out / "run")  # once for the three uses below
    rep = replayed(run, settings)
    odd = replayed(run, settings, odd_only=True)
    n = settings["n"]
    lines = [
        f"# Online pruning inside the engine: {rep['items']} items x N = {n} ({settings['model']})",
        "",
        f"Command: `{meta['command']}`  ",
        f"Started {meta['started']}, last batch {meta['date']}; CPU: {meta['cpu']}; {meta['versions']}.  ",
        f"Data `{settings['dataset']}`; the harness's selection-pass requests (T = 0.7, top-p 0.95, at most "
        f"{settings['max_new_tokens']} new tokens, top-20 logprobs, every layer's norms), {settings['batch_items']} "
        "items per call.",
        "",
        f"## Measured in the engine: the first {s['items']} items, every rule",
        "",
        "Each condition generated each batch once, in an order that rotates from batch to batch. Seconds are the "
        f"wall time of the batch call divided by its items (the server decodes the batch's {settings['batch_items']} x "
        f"{n} candidates together); 'time saved' compares the sums. The last column counts candidates whose "
        "token count and pruning step, and items whose survivors' vote, equal the offline replay of the unpruned "
        "samples of the same batch.",
        "",
        *_measured_lines(s, n),
        "",
        "Candidates whose token count differs from the replay, by rule: "
        + "; ".join(
            f"`{r['condition']}` {r['same_tokens'][1] - r['same_tokens'][0]} ({r['survivors_diverged']} of them "
            "unpruned on both sides: a survivor whose text went another way)"
            for r in s["rows"][1:]
        )
        + ". A pruned batch has other shapes than the unpruned one, and bf16 arithmetic on these CPUs can then "
        "round a near-tie the other way; from there a sampled candidate continues differently (same seed, other "
        "text), and with it its length, its later scores and, with a first-finished rule, which rows finish first.",
        "",
        f"## Replayed on all {rep['items']} stored items",
        "",
        "The same rules replayed on the unpruned samples (`l2reason.eval.pruning.simulate_run`): what the engine "
        "gives on every item, up to the differences the first table counts.",
        "",
        *_replayed_lines(rep, n),
        "",
        "The fixed thresholds were chosen on the even-indexed items of an earlier run of the same requests"
        + (f" ({same})" if (same := _same_samples(run, settings)) else "")
        + f"; on the {odd['items']} odd-indexed items alone (not used to choose them, the out-of-sample test):",
        "",
        *_replayed_lines(odd, n),
        "",
        "Rules (their fixed thresholds were chosen on the even-indexed items of that earlier run, "
        f"`{RULE_SETS[settings['rule_set']][0]}`):",
        "",
        *[f"- `{name}`: {RULES[name]}; `{json.dumps(spec)}`" for name, spec in settings["rules"].items()],
        "",
        "Goal (issue 25): ≥ 40% fewer tokens with accuracy within 1 point of majority@N; 'point' asks it of the "
        "difference, 'CI' of its 95% CI's lower end.",
    ]
    data = {"settings": settings, "meta": meta, "measured": s, "replayed": rep, "replayed_odd": odd}
    return write_report(out / "engine_pruning", data, lines)


def _same_samples(run: Any, settings: dict[str, Any]) -> str | None:
    """How alike the stored unpruned samples are to those of the run that chose the fixed thresholds: items whose
    first candidate, and whose majority vote, is right or wrong in both (from that run's ``per_item.csv``)."""
    import csv

    from l2reason.eval.pruning import survivor_majority

    csv_path = ROOT / RULE_SETS[settings["rule_set"]][0] / ".." / "per_item.csv"
    if not csv_path.exists():
        return None
    with csv_path.open() as f:
        old = {r["item_id"]: r for r in csv.DictReader(f)}
    recs = [r for r in run.samples if r.item_id in old]
    if not recs:
        return None
    first = sum(int(r.correct[0]) == int(old[r.item_id]["sample@1"]) for r in recs)
    vote = sum(
        int(survivor_majority(r, np.ones(len(r.answers), dtype=bool))[0]) == int(old[r.item_id]["majority"])
        for r in recs
    )
    return (
        f"practically these samples: first candidate right or wrong alike on {first}/{len(recs)} items, "
        f"majority vote on {vote}/{len(recs)}"
    )


def main() -> None:
    args = _args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = _settings(args)
    batches = _start(args.out, settings)
    meta_path = args.out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"started": run_info()["date"]}
    if args.report_only:
        if not batches:
            sys.exit(f"{args.out / 'batches.jsonl'} holds no finished batch")
        print(_report(args.out, settings, batches, meta).read_text())
        return
    from l2reason import __version__
    from l2reason.backends.shared import make_backend
    from l2reason.eval.datasets import load_dataset
    from l2reason.eval.harness import open_run

    ds = load_dataset(args.dataset)
    rules = {name: PruneSpec.model_validate(f) for name, f in settings["rules"].items()}
    be = make_backend(args.model)
    cfg = run_config(
        be,
        args.dataset,
        limit=args.items,
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        batch_items=args.batch_items,
        gen_methods=[],
    )
    items = list(enumerate(ds.items(args.items)))
    cfg = open_run(args.out / "run", cfg, ds, [it for _, it in items])
    versions = f"l2reason {__version__}, python {platform.python_version()}"
    if args.model.startswith("vllm"):
        from l2reason.backends.vllm.server import vllm_python

        vllm, torch_v, tf = engine_versions(vllm_python(), "vllm")
        versions += f"; server: vLLM {vllm}, torch {torch_v}, transformers {tf}"
    t_start = time.monotonic()
    with (args.out / "batches.jsonl").open("a", encoding="utf-8") as f:
        for b, start in enumerate(range(0, len(items), args.batch_items)):
            if b < len(batches):
                continue
            log.info("batch %d/%d", b + 1, -(-len(items) // args.batch_items))
            todo = rules if start < args.rule_items else {}
            batches.append(_batch(be, cfg, ds, items[start : start + args.batch_items], todo, b, args.out / "run"))
            f.write(json.dumps(batches[-1]) + "\n")
            f.flush()
            meta |= run_info() | {"cpu": cpu_model(), "model_id": be.model_id, "versions": versions}
            meta_path.write_text(json.dumps(meta, indent=2))
            print(_report(args.out, settings, batches, meta).read_text(), flush=True)
            if args.minutes and time.monotonic() - t_start > 60 * args.minutes:
                log.info("budget of %.0f minutes spent: stopping (rerun the command to resume)", args.minutes)
                break


if __name__ == "__main__":
    main()
