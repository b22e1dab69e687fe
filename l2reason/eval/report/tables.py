"""The report as markdown: the header, then one section per table, the notes and the plots' links.

Numbers are formatted here only: accuracies as percentages with one decimal,
AUCs and correlations with three, ``–`` for a value that is not computable.
Each section function returns its lines (empty when it has nothing to show);
:func:`render_markdown` joins them with newlines.
"""

from __future__ import annotations

import math
import platform
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from l2reason.eval.methods import format_method_list
from l2reason.eval.report.data import PROBE_ABLATIONS, PROBE_CV, PROBE_VOTE_CV, Paired, ReportData


def _f(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pct(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _paired_cell(p: Paired | None) -> str:
    if p is None:
        return "–"
    star = " **" if (p.lo > 0 or p.hi < 0) else ""
    return f"{100 * p.diff:+.1f} [{100 * p.lo:+.1f}, {100 * p.hi:+.1f}]{star} p={p.p_boot:.3f}; +{p.wins}/−{p.losses} (McN p={p.p_mcnemar:.3f})"


def _ci_note(lo: float, hi: float) -> str:
    return " (CI excludes 0)" if (lo > 0 or hi < 0) else " (CI includes 0)"


def _table(head: Sequence[object], align: str, rows: Iterable[Sequence[object]]) -> list[str]:
    """A markdown table's lines; ``align`` has one letter per column, ``l`` (left) or ``r`` (right)."""

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c) for c in cells) + " |"

    return [line(head), "|" + "".join("---:|" if a == "r" else "---|" for a in align), *(line(r) for r in rows)]


def _section(title: str, intro: str, table: list[str]) -> list[str]:
    """A section: its title, an intro paragraph (none when empty), its table and a blank line."""
    return [f"## {title}\n", *([intro] if intro else []), *table, ""]


PROMPT_SHOWN = 100
"""The most characters of a system prompt the header shows (a longer one is cut, with a note)."""


def _prompt_argument(text: str | None) -> str:
    """``--system-prompt``'s value for ``text``: ``none``, the quoted text, or ``@SYSTEM_PROMPT_FILE``.

    The placeholder stands for a file holding the text (config.json's
    ``system_prompt``) where the text would not survive a one-line markdown
    code span or the option's parsing: a line break, a backtick, a leading
    ``@``, the word ``none``, surrounding spaces, or more than
    :data:`PROMPT_SHOWN` characters.
    """
    if not text:
        return "none"
    unsafe = "\n" in text or "`" in text or text.startswith("@") or text.strip() in ("", "none")
    if unsafe or text != text.strip() or len(text) > PROMPT_SHOWN:
        return "@SYSTEM_PROMPT_FILE"
    return shlex.quote(text)


def _prompt_shown(text: str) -> str:
    """``text`` on one line in a code span, cut to :data:`PROMPT_SHOWN` characters with a note."""
    flat = " ".join(text.split())
    note = ""
    if len(flat) > PROMPT_SHOWN:
        flat = flat[: PROMPT_SHOWN - 1] + "…"
        note = f" (shortened: {len(text)} characters in all; the full text is config.json's `system_prompt`)"
    fence = "``" if "`" in flat else "`"
    pad = " " if "`" in flat else ""
    return f"{fence}{pad}{flat}{pad}{fence}{note}"


def system_prompt_line(c: dict[str, Any]) -> str | None:
    """The header's line on the system prompt the run used (None: the config does not record one).

    ``system_prompt_override`` (``--system-prompt``): that prompt, or none, for
    every item. Otherwise items that bring their own prompt (an evals task's
    chat prompt) used it, and the others ``system_prompt`` (or none).
    """
    if "system_prompt" not in c:
        return None
    text = c["system_prompt"]
    shown = _prompt_shown(text) if text else "none"
    if c.get("system_prompt_override"):
        return f"- system prompt: {shown}" + (", for every item (over the dataset's own)" if text else "")
    return f"- system prompt: the dataset's own where an item brings one, else {shown}"


def reproduce_command(c: dict[str, Any]) -> str:
    """The ``l2reason eval`` command that recreates (or resumes) a run with this config."""
    parts = [
        "l2reason eval",
        f"--dataset {shlex.quote(c['dataset'])}",
        f"--model {shlex.quote(c.get('model') or 'default')}",
        f"--offset {c['offset']}",
        f"--limit {c['limit']}",
        f"-n {c['n']}",
        f"-t {c['max_new_tokens']}",
        f"--temperature {c['temperature']}",
        f"--top-p {c['top_p']}",
        f"--seed {c['seed']}",
        f"--methods {shlex.quote(format_method_list(c.get('methods') or []))}",
        f"--gen-methods {shlex.quote(format_method_list(c.get('gen_methods') or []))}",
    ]
    if c.get("system_prompt_override"):
        parts.append(f"--system-prompt {_prompt_argument(c.get('system_prompt'))}")
    if c.get("gen_limit"):
        parts.append(f"--gen-limit {c['gen_limit']}")
    parts.append(f"--batch-items {c.get('batch_items', 2)}")
    threads = (c.get("env") or {}).get("torch_threads")
    if threads:
        parts.append(f"--threads {threads}")
    parts.append("--out RUN_DIR")
    return " ".join(parts)


def render_markdown(rep: ReportData, plots: Sequence[str] = ()) -> str:
    """The report as markdown (tables and links to the plots)."""
    out = _header(rep) + _accuracy(rep)
    if rep.probe:
        out.extend(_probe_markdown(rep))
    for section in (_ties, _truncation, _signals, _layers, _curves, _notes):
        out.extend(section(rep))
    if plots:
        out.append("## Plots\n")
        out.extend(f"![{Path(p).stem}]({Path(p).name})" for p in plots)
        out.append("")
    return "\n".join(out)


def _header(rep: ReportData) -> list[str]:
    """The title and the run's settings: items, sampling, passes, how to reproduce it, band, machine."""
    c = rep.config
    out = [f"# Evaluation: {c['dataset']} on {c['model_id']}\n"]
    out.append(
        f"- items: {rep.n_items} (offset {c['offset']}, limit {c['limit']}); N = {c['n']} samples per item at "
        f"T = {c['temperature']}, top-p = {c['top_p']}; generation passes: "
        f"{', '.join(c.get('gen_methods') or []) or 'none'} on {c['gen_limit'] or 'all'} items; "
        f"max new tokens {c['max_new_tokens']}; seed {c['seed']}"
    )
    prompt = system_prompt_line(c)
    if prompt:
        out.append(prompt)
    out.append(f"- reproduce: `{reproduce_command(c)}`")
    out.append(f"- default layer band: {rep.band}; ℓ2 scores use a per-item pooled τ (Q3 + 1.5·IQR)")
    env = c.get("env") or {}
    if env:
        out.append("- machine: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    out.append(f"- started {c.get('created_at', '')}; report rendered on {platform.node()} ({platform.platform()})\n")
    return out


def _accuracy(rep: ReportData) -> list[str]:
    """The accuracy table: every row with its CI, its paired comparisons and its cost."""
    out = ["## Accuracy\n"]
    out.append(
        "Δ columns: method − baseline in points on the shared items, 95% paired-bootstrap CI "
        "(** = excludes 0), bootstrap p, then +wins/−losses with the exact McNemar p.\n"
    )
    head = ("method", "kind", "items", "accuracy %", "95% CI", "Δ vs greedy", "Δ vs majority", "tokens/item", "s/item")
    rows = [
        (
            r.name,
            r.kind,
            len(r.correct),
            _pct(r.acc),
            f"[{_pct(r.lo)}, {_pct(r.hi)}]",
            _paired_cell(r.vs_greedy),
            _paired_cell(r.vs_majority),
            _f(r.tokens, 0),
            _f(r.seconds, 1),
        )
        for r in rep.rows
    ]
    out.extend(_table(head, "llrrlllrr", rows))
    out.append(
        "\nSelection methods share one sampling pass, so their tokens and seconds are those of the N samples; "
        "`sample@1` shows one sample's share.\n"
    )
    counts = {len(r.correct) for r in rep.rows if r.correct}
    if len(counts) > 1:
        out.append(
            f"Rows are scored on different numbers of items ({', '.join(str(k) for k in sorted(counts))}): "
            "compare rows over the same items through their Δ columns (computed on the shared items).\n"
        )
    return out


_PROBE_FEATURES = {
    PROBE_CV: "all",
    PROBE_VOTE_CV: "all (vote)",
    f"{PROBE_CV}:confidence": "confidence + base",
    f"{PROBE_CV}:l2": "ℓ2 + base",
    f"{PROBE_CV}:base": "base: length, finished, vote share",
}


def _probe_markdown(rep: ReportData) -> list[str]:
    """The section on the learned probe and the "do norms add information?" comparison."""
    out = ["## The learned probe: do hidden-state norms add information beyond confidence?\n"]
    out.append(
        f"`{PROBE_CV}` is a logistic regression over per-candidate features (per-layer norm statistics of every "
        "layer, self-certainty, DeepConf confidence, length, finished, vote share; centred within the item), "
        "cross-fitted: a probe fitted on the odd-index items picks among the even ones and the reverse, so no "
        f"item is scored by a probe that saw it. `{PROBE_VOTE_CV}` is its probability-weighted answer vote. "
        f"Ablations: `{PROBE_CV}:confidence` (confidence + base features), `{PROBE_CV}:l2` (ℓ2 + base "
        f"features), `{PROBE_CV}:base` (length, finished, vote share only).\n"
    )
    by = {r.name: r for r in rep.rows}
    sig = {x["score"]: x for x in rep.signals}
    rows = []
    for n in [PROBE_CV, PROBE_VOTE_CV, *(f"{PROBE_CV}:{fs}" for fs in PROBE_ABLATIONS)]:
        r = by.get(n)
        if r is None:
            continue
        auc = sig.get(n if n != PROBE_VOTE_CV else PROBE_CV, {}).get("within_auc", float("nan"))
        ci = f"[{_pct(r.lo)}, {_pct(r.hi)}]"
        rows.append((n, _PROBE_FEATURES[n], _pct(r.acc), ci, _f(auc), _paired_cell(r.vs_majority)))
    head = ("probe", "features", "accuracy %", "95% CI", "within-item AUC", "Δ vs majority")
    out.extend(_table(head, "llrlrl", rows))
    acc, auc = rep.probe.get("accuracy", {}), rep.probe.get("auc", {})
    out.append("")
    if "diff" in acc:
        out.append(
            f"- **all features − confidence only, accuracy**: {100 * acc['diff']:+.1f} points "
            f"[{100 * acc['lo']:+.1f}, {100 * acc['hi']:+.1f}]{_ci_note(acc['lo'], acc['hi'])}, paired bootstrap "
            f"p = {acc['p_boot']:.3f}, +{acc['wins']}/−{acc['losses']} items (McNemar p = {acc['p_mcnemar']:.3f}), "
            f"n = {acc['n']} items"
        )
    if auc.get("pairs"):
        out.append(
            f"- **all features − confidence only, within-item AUC**: {auc['auc_a']:.3f} − {auc['auc_b']:.3f} = "
            f"{auc['diff']:+.3f} [{auc['lo']:+.3f}, {auc['hi']:+.3f}]{_ci_note(auc['lo'], auc['hi'])}, item "
            f"bootstrap p = {auc['p']:.3f}, {auc['items']} items with right and wrong candidates ({auc['pairs']} pairs)"
        )
    out.append("")
    return out


def _ties(rep: ReportData) -> list[str]:
    """Argmax rules: how often several candidates shared the best score."""
    tied = [r for r in rep.rows if r.ties is not None and r.correct]
    if not tied:
        return []
    intro = (
        "Argmax rules: share of items where several candidates shared the best score. Ties are broken by a "
        "draw among the tied candidates seeded with the item's seed (reproducible, and neutral to the "
        "candidate order).\n"
    )
    head = ("method", "items", "items with a tie", "tie rate %")
    rows = [(r.name, len(r.correct), r.ties, _pct((r.ties or 0) / len(r.correct))) for r in tied]
    return _section("Ties at the best score", intro, _table(head, "lrrr", rows))


def _truncation(rep: ReportData) -> list[str]:
    """Per pass: candidates cut off at the token limit, and their accuracy vs the finished ones'."""
    if not rep.truncation:
        return []
    head = ("pass", "candidates", "cut off at the limit %", "accuracy finished %", "accuracy cut off %", "mean tokens")
    rows = [
        (
            t["pass"],
            t["candidates"],
            _pct(t["truncated"]),
            _pct(t["acc_finished"]),
            _pct(t["acc_truncated"]),
            _f(t["mean_tokens"], 0),
        )
        for t in rep.truncation
    ]
    return _section("Truncation", "", _table(head, "lrrrrr", rows))


def _signals(rep: ReportData) -> list[str]:
    """Per score: pooled and within-item AUC, pairs, Spearman with length."""
    if not rep.signals:
        return []
    intro = (
        "Within-item AUC = P(a right candidate outscores a wrong one of the same item); 0.5 = no signal. "
        "Compare each score with `-length`: an ℓ2 score is only useful if it beats length alone.\n"
    )
    head = ("score", "pooled AUC", "within-item AUC", "pairs", "Spearman with length")
    rows = [
        (s["score"], _f(s["pooled_auc"]), _f(s["within_auc"]), s["pairs"], _f(s["spearman_length"]))
        for s in rep.signals
    ]
    return _section("Which signals separate right from wrong candidates", intro, _table(head, "lrrrr", rows))


def _layers(rep: ReportData) -> list[str]:
    """Per layer: the AUCs of its mean norm and B/T as a score (band layers marked)."""
    if not rep.layers:
        return []
    intro = "Mean norm and B/T (per-item pooled τ) of each single layer as a score.\n"
    head = (
        "layer",
        "mean: pooled AUC",
        "mean: within AUC",
        "B/T: pooled AUC",
        "B/T: within AUC",
        "mean: Spearman w/ length",
    )
    rows = [
        (
            f"{x['layer']}{' (band)' if x['layer'] in rep.band else ''}",
            *(_f(x[k]) for k in ("mean_pooled_auc", "mean_within_auc", "bt_pooled_auc", "bt_within_auc")),
            _f(x["mean_spearman_length"]),
        )
        for x in rep.layers
    ]
    return _section("Per layer (all layers)", intro, _table(head, "rrrrrr", rows))


def _curves(rep: ReportData) -> list[str]:
    """Accuracy vs N per rule, with how many subsets each N averages over."""
    if not rep.curves:
        return []
    ns = sorted({k for v in rep.curves.values() for k in v})
    s1 = next((r for r in rep.rows if r.name == "sample@1"), None)
    sizes = ", ".join(f"N={k}: {rep.curve_sizes[k]}" for k in ns if k in rep.curve_sizes)
    intro = (
        "Each rule is exactly the table's (same seed and tie-breaks; ℓ2 scores recompute the pooled τ on the "
        f"subset), averaged over subsets of each size per item ({sizes or 'all subsets'}; every subset when "
        "there are that few). At the largest N the value is the table's. **N = 1 is the mean accuracy of a "
        "single sample over all candidates**"
        + (f"; the table's `sample@1` is candidate 0 only ({_pct(s1.acc)}%)" if s1 is not None else "")
        + ".\n"
    )
    head = ("rule", *(f"N={k}" for k in ns))
    rows = [(name, *(_pct(curve.get(k, float("nan"))) for k in ns)) for name, curve in rep.curves.items()]
    return _section("Accuracy vs N (subsets of the stored candidates)", intro, _table(head, "l" + "r" * len(ns), rows))


def _notes(rep: ReportData) -> list[str]:
    if not rep.notes:
        return []
    return ["## Notes\n", *(f"- {n}" for n in rep.notes), ""]
