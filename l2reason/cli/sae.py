"""``l2reason collect``, ``l2reason sae ...`` and ``l2reason vector ...``: activation stores, SAEs, vectors.

The commands that print a result print JSON (``typer.echo``); progress goes to stderr. Prompts come from the
evaluation's datasets, with the system prompt the evaluation would use (an item's own, else the default).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from l2reason.backends.shared import is_server_spec, is_vllm_spec
from l2reason.cli._common import app, err, load_backend, parse_layers, set_threads
from l2reason.errors import ConfigError

sae_app = typer.Typer(no_args_is_help=True, help="Train, load and inspect SAELens SAEs on an activation store.")
vector_app = typer.Typer(no_args_is_help=True, help="Build steering vectors (static-steer / L2Steer format).")

SaeArg = Annotated[Path, typer.Argument(help="a SAELens SAE folder")]
StoreArg = Annotated[Path, typer.Argument(help="an activation store")]
LayerOpt = Annotated[int, typer.Option()]


def _prompts(source: str, limit: int | None, offset: int) -> tuple[list[Any], Any]:
    """StorePrompts from a dataset name (the eval's names) or a text file with one prompt per line."""
    from l2reason.eval.harness import DEFAULT_SYSTEM, item_messages
    from l2reason.files import read_text_file
    from l2reason.sae.store import StorePrompt

    p = Path(source)
    if p.suffix == ".txt" and p.is_file():
        lines = [ln.strip() for ln in read_text_file(p, "the prompt file").splitlines() if ln.strip()]
        lines = lines[offset : offset + limit if limit is not None else None]
        return [
            StorePrompt(f"{p.name}:{offset + i}", [{"role": "user", "content": q}]) for i, q in enumerate(lines)
        ], None
    from l2reason.eval.datasets import load_dataset

    ds = load_dataset(source)
    items = ds.items(limit=limit, offset=offset)
    out = []
    for it in items:
        msgs = [{"role": m.role, "content": m.content} for m in item_messages(it, DEFAULT_SYSTEM)]
        out.append(StorePrompt(it.id, msgs, answer=it.answer, meta={"item": it}))
    return out, ds


@app.command("collect", help="Collect decode-token residual states into an activation store (resumable).")
def collect_cmd(
    source: Annotated[
        str, typer.Argument(help="a dataset (gsm_symbolic:seed=7, evals:<task>, jsonl:<file>) or a .txt file")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="the store folder (resumes if it exists)")],
    model: Annotated[str, typer.Option("--model", "-m")] = "default",
    layers: Annotated[str, typer.Option(help="'band', 'all' or indices '18,20'")] = "band",
    limit: Annotated[int | None, typer.Option(min=1)] = None,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    n: Annotated[int, typer.Option("-n", min=1, help="candidates per prompt")] = 1,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-t", min=1)] = 128,
    batch: Annotated[int, typer.Option(min=1, help="prompts per forward batch (= per shard)")] = 8,
    dtype: Annotated[str, typer.Option(help="float16 or float32")] = "float16",
    seed: Annotated[int, typer.Option(min=0)] = 0,
    threads: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Run a dataset or prompt file and store every decode token's residual states (sharded, resumable)."""
    from l2reason.sae.store import check_collect_settings, collect_store

    if dtype not in ("float16", "float32"):
        raise ConfigError(f"--dtype must be float16 or float32 (got {dtype!r})")
    chosen = parse_layers(layers)
    prompts, ds = _prompts(source, limit, offset)
    if not prompts:
        raise ConfigError(f"{source} gives no prompts at --offset {offset}: nothing to collect")
    settings: dict[str, Any] = dict(
        n=n, temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch, dtype=dtype, seed=seed
    )
    check_collect_settings(prompts, out, **settings)  # before the model loads
    set_threads(threads)
    score = (lambda text, p: bool(ds.score(text, p.meta["item"]))) if ds is not None else None
    be = load_backend(model)

    def progress(done: int, total: int) -> None:
        err.print(f"[dim]{done}/{total} prompts[/dim]")

    store = collect_store(be, prompts, out, layers=chosen, score=score, on_batch=progress, **settings)
    err.print(f"store {out}: {len(store)} decode tokens, layers {store.layers}")


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


@sae_app.command("train")
def train_cmd(
    store: Annotated[Path, typer.Argument(help="an activation store (l2reason collect)")],
    layer: Annotated[int, typer.Option(help="the layer to train on (must be in the store)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the SAE folder (SAELens format)")],
    architecture: Annotated[str, typer.Option(help="topk or standard")] = "topk",
    d_sae: Annotated[int, typer.Option(min=1)] = 2048,
    k: Annotated[int, typer.Option(min=1, help="active features (topk)")] = 32,
    l1: Annotated[float, typer.Option(min=0.0, help="L1 coefficient (standard)")] = 5.0,
    lr: Annotated[float, typer.Option(min=0.0)] = 3e-4,
    batch_size: Annotated[int, typer.Option(min=1)] = 512,
    samples: Annotated[int, typer.Option(min=1, help="training tokens in total")] = 300_000,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    threads: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Train an SAE with SAELens on one layer of a store; print the held-out reconstruction figures."""
    from l2reason.sae.train import SAETrainSettings, train_sae

    set_threads(threads)
    s = SAETrainSettings(
        architecture=architecture,
        d_sae=d_sae,
        k=k,
        l1=l1,
        lr=lr,
        batch_size=batch_size,
        total_samples=samples,
        seed=seed,
    )
    rep = train_sae(store, layer, out, s)
    typer.echo(json.dumps({k: rep[k] for k in ("layer", "train_tokens", "epochs", "seconds", "holdout")}, indent=1))


@sae_app.command("bound")
def bound_cmd(
    sae: SaeArg,
    store: StoreArg,
    layer: LayerOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="a folder for bound.json and bound.png")],
) -> None:
    """Check the norm bound on every stored token and feature; report its tightness vs the token norm."""
    from l2reason.files import check_output_dir
    from l2reason.sae.bound import check_store_bound, tightness_by_norm
    from l2reason.sae.plots import plot_bound
    from l2reason.sae.store import ActivationStore
    from l2reason.sae.train import load_sae

    check_output_dir(out, "--out")
    rep = check_store_bound(load_sae(sae), ActivationStore(store), layer)
    data = {"layer": layer, **rep.summary(), "by_norm_decile": tightness_by_norm(rep)}
    _write_json(out / "bound.json", data)
    plot_bound(rep, out / "bound.png", title=f"norm bound, layer {layer}")
    typer.echo(json.dumps(rep.summary(), indent=1))


@sae_app.command("features")
def features_cmd(
    sae: SaeArg,
    store: StoreArg,
    layer: LayerOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="a folder for features.json and features.html")],
    quantile: Annotated[float, typer.Option(help="high norm = above this quantile of the layer's norms")] = 0.95,
    top: Annotated[int, typer.Option(min=1)] = 20,
) -> None:
    """Rank features by how much more they fire on high-norm tokens (and right answers); HTML of their contexts."""
    import torch

    from l2reason.files import check_output_dir
    from l2reason.sae.features import (
        check_quantile,
        encode_store,
        norm_activation_correlation,
        rank_by_correct,
        rank_by_norm,
        top_contexts_html,
    )
    from l2reason.sae.store import ActivationStore
    from l2reason.sae.train import load_sae

    check_quantile(quantile)
    check_output_dir(out, "--out")
    st = ActivationStore(store)
    acts = encode_store(load_sae(sae), st, layer)
    norms = st.norms(layer)
    tau, by_norm = rank_by_norm(acts, norms, quantile, top)
    rec, _ = st.token_index()
    correct = [r.get("correct") for r in st.records()]
    known = torch.tensor([correct[r] is not None for r in rec.tolist()])
    data: dict[str, Any] = {
        "layer": layer,
        "tokens": len(norms),
        "quantile": quantile,
        "tau": tau,
        "by_norm": by_norm,
        "corr_norm_vs_top_features": norm_activation_correlation(acts, norms, [f["feature"] for f in by_norm]),
    }
    if bool(known.any()):
        right = torch.tensor([bool(correct[r]) for r in rec.tolist()])
        sub = known.nonzero().flatten()
        if 0 < int(right[sub].sum()) < len(sub):
            data["by_correct"] = rank_by_correct(acts[sub], right[sub], top)
            data["overlap_norm_correct"] = sorted(
                {f["feature"] for f in by_norm} & {f["feature"] for f in data["by_correct"]}
            )
    _write_json(out / "features.json", data)
    (out / "features.html").write_text(
        top_contexts_html(acts, st, by_norm, title=f"High-norm features, layer {layer}"), encoding="utf-8"
    )
    typer.echo(json.dumps({k: data[k] for k in ("tau", "corr_norm_vs_top_features")}, indent=1))


def _condition_data(
    layer: int,
    items: list[str],
    features: list[int],
    texts: list[str],
    engine: dict[str, Any],
    correct: list[bool] | None = None,
) -> dict[str, Any]:
    """One ablation condition's file: the texts so far (``"complete": false``), or all of them scored."""
    data: dict[str, Any] = {"layer": layer, "items": items, "features": features, "texts": texts, **engine}
    data["complete"] = correct is not None
    if correct is not None:
        data["correct"] = correct
    return data


def _stored_condition(
    done: dict[str, Any] | None, name: str, features: list[int], layer: int, ids: list[str], *, resume: bool
) -> tuple[list[str], list[bool] | None]:
    """What a condition's saved file (:func:`~l2reason.sae.ablate.read_condition`) holds for these items and
    features: all texts with their scores (the condition is done), the texts of the first items (``resume``:
    generation goes on after them), or nothing."""
    if done is None or done["features"] != features or done["layer"] != layer:
        return [], None
    if done["items"] == ids and done.get("complete", True):
        err.print(f"[dim]{name}: {sum(done['correct'])}/{len(ids)} (saved)[/dim]")
        return done["texts"], done["correct"]
    if resume and done["items"] == ids[: len(done["texts"])]:
        err.print(f"[dim]{name}: resuming after {len(done['texts'])} items (saved)[/dim]")
        return list(done["texts"]), None
    return [], None


def _greedy_texts(be: Any, prompts: list[Any], max_new_tokens: int, interventions: list[dict[str, Any]]) -> list[str]:
    """The greedy answers to ``prompts`` (store prompts), in one batched call, with ``interventions``."""
    from l2reason.backends.base import GenerationRequest, Message, SamplingParams

    reqs = [
        GenerationRequest(
            messages=[Message(role=m["role"], content=m["content"]) for m in p.messages],  # type: ignore[arg-type]
            sampling=SamplingParams(max_new_tokens=max_new_tokens),
            norms=None,
            interventions=interventions,
        )
        for p in prompts
    ]
    return [r.text for r in be.generate_many(reqs)]


@sae_app.command("export")
def export_cmd(
    sae: Annotated[Path, typer.Argument(help="a SAELens SAE folder (standard or TopK)")],
    out: Annotated[Path, typer.Argument(help="the file to write (.safetensors)")],
) -> None:
    """Write an SAE as the plain file the engine plugins read: put it in the folder a server was started with
    (``l2reason serve --sae-dir DIR``); requests name it (the ``sae_ablate`` intervention's ``sae``) by its
    name inside that folder, never by a path."""
    from l2reason.files import check_output_file
    from l2reason.sae.ablate import export_sae
    from l2reason.sae.train import load_sae

    check_output_file(out, "the SAE file")
    w = export_sae(load_sae(sae), out)
    typer.echo(f"{out}: {w.d_sae} features x {w.d_in} ({w.activation}{f', k={w.k}' if w.activation == 'topk' else ''})")


@dataclass(frozen=True)
class _AblationRun:
    """What every condition of one ``sae ablate`` run shares: the backend, the SAE, the items and the settings.

    ``sae_file`` is the name requests give the engine's ``sae_ablate`` intervention (``in_engine``); otherwise
    ``plain`` is ablated by a forward hook.
    """

    be: Any
    plain: Any
    sae_file: str
    in_engine: bool
    engine: dict[str, Any]
    prompts: list[Any]
    ds: Any
    layer: int
    out: Path
    batch: int
    max_new_tokens: int

    def run(self, cond: str, feats: list[int], got: list[str]) -> tuple[list[str], list[bool]]:
        """Generate condition ``cond`` (ablating ``feats``) after its ``got`` saved texts, saving every batch;
        all its texts and their scores (saved too)."""
        import contextlib
        import time

        from l2reason.sae.ablate import ablate_features, condition_file, save_condition

        part = condition_file(self.out, cond)  # one file per condition, saved after every batch
        ids = [p.id for p in self.prompts]
        n = len(self.prompts)
        t0 = time.perf_counter()
        specs = (
            [{"kind": "sae_ablate", "sae": self.sae_file, "layer": self.layer, "features": feats}]
            if self.in_engine and feats
            else []
        )
        for i in range(len(got), n, self.batch):  # in-process: the hook is on only while a batch runs
            with (
                contextlib.nullcontext() if self.in_engine else ablate_features(self.be, self.plain, self.layer, feats)
            ):
                got += _greedy_texts(self.be, self.prompts[i : i + self.batch], self.max_new_tokens, specs)
            save_condition(part, _condition_data(self.layer, ids[: len(got)], feats, got, self.engine))
            err.print(f"[dim]{cond}: {len(got)}/{n} items, {time.perf_counter() - t0:.0f}s[/dim]")
        correct = [bool(self.ds.score(t, p.meta["item"])) for t, p in zip(got, self.prompts, strict=True)]
        save_condition(part, _condition_data(self.layer, ids, feats, got, self.engine, correct=correct))
        err.print(f"[dim]{cond}: {sum(correct)}/{len(got)} in {time.perf_counter() - t0:.0f}s[/dim]")
        return got, correct


_ABLATION_CONDITIONS = ("none", "top", "random_matched")


def _wanted_conditions(only: str) -> list[str]:
    """The conditions ``--only`` names (all of them when empty)."""
    wanted = [c.strip() for c in only.split(",") if c.strip()] or list(_ABLATION_CONDITIONS)
    bad = sorted(set(wanted) - set(_ABLATION_CONDITIONS))
    if bad:
        raise ConfigError(f"--only: unknown condition(s) {bad}; valid: {', '.join(_ABLATION_CONDITIONS)}")
    return wanted


def _ablation_features(
    s: Any, store: Path, features: Path, layer: int, top: int, seed: int
) -> tuple[dict[str, list[int]], Any]:
    """Each condition's features (none, the ``top`` ranked in ``features``, random ones of matched mass) and
    every feature's mean activation on ``store``."""
    from l2reason.sae.ablate import matched_random_features, read_ranked_features
    from l2reason.sae.features import encode_store
    from l2reason.sae.store import ActivationStore

    chosen = read_ranked_features(features, top, d_sae=int(s.W_enc.shape[1]))
    acts = encode_store(s, ActivationStore(store), layer)
    mass = acts.mean(0)
    control = matched_random_features(mass, chosen, seed=seed)
    return {"none": [], "top": chosen, "random_matched": control}, mass


def _ablation_backend(model: str, out: Path, plain: Any, sae_name: str | None) -> tuple[Any, bool, str]:
    """The backend for ``--model``, whether its plugin runs ``sae_ablate``, and the SAE's name for requests.

    A ``vllm:<model>`` engine started here serves ``OUT/sae.safetensors`` (``plain``, saved there) from
    ``--sae-dir OUT``; a running server with the plugin needs ``--sae-name``.
    """
    spec, name = model, "sae.safetensors"
    if is_vllm_spec(model) and not is_server_spec(model):  # a server started here serves OUT by name
        out.mkdir(parents=True, exist_ok=True)
        plain.save(out.resolve() / name)
        spec = f"{model}{'&' if '?' in model else '?'}sae_dir={out.resolve()}"
    be = load_backend(spec)
    in_engine = "sae_ablate" in be.capabilities.interventions
    if in_engine and is_server_spec(model):
        if sae_name is None:
            raise ConfigError(
                f"{model} is a running server: start it with --sae-dir DIR holding the SAE "
                "(`l2reason sae export SAE DIR/NAME`) and pass --sae-name NAME"
            )
        name = sae_name
    return be, in_engine, name


def _ablation_summary(correct: dict[str, list[bool]], conditions: dict[str, list[int]], mass: Any) -> dict[str, Any]:
    """``ablation.json``'s results: the features, their activation mass, each accuracy and the paired comparisons."""
    from l2reason.eval.stats import paired_bootstrap

    def cmp(a: str, b: str) -> dict[str, float]:
        d, lo, hi, p = paired_bootstrap(correct[a], correct[b])
        return {"diff": d, "ci_lo": lo, "ci_hi": hi, "p": p}

    chosen, control = conditions["top"], conditions["random_matched"]
    return {
        "top_features": chosen,
        "random_features": control,
        "mass_top": float(mass[chosen].sum()),
        "mass_random": float(mass[control].sum()),
        "accuracy": {k: sum(v) / len(v) for k, v in correct.items()},
        "top_minus_none": cmp("top", "none"),
        "random_minus_none": cmp("random_matched", "none"),
        "top_minus_random": cmp("top", "random_matched"),
    }


@sae_app.command("ablate")
def ablate_cmd(
    sae: SaeArg,
    store: Annotated[Path, typer.Argument(help="the activation store its features were ranked on")],
    features: Annotated[Path, typer.Argument(help="features.json from `l2reason sae features`")],
    layer: LayerOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="a folder for ablation.json")],
    dataset: Annotated[str, typer.Option(help="the items to score")] = "gsm_symbolic:seed=42",
    limit: Annotated[int, typer.Option(min=1)] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    top: Annotated[int, typer.Option(min=1, help="ablate the top-k high-norm features")] = 10,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-t", min=1)] = 256,
    batch: Annotated[int, typer.Option(min=1, help="prompts per batch (each finished batch is saved)")] = 10,
    seed: Annotated[int, typer.Option(min=0, help="seed of the matched random features")] = 0,
    model: Annotated[str, typer.Option("--model", "-m", help="a model, or an engine (vllm:<model>...)")] = "default",
    threads: Annotated[int | None, typer.Option(min=1)] = None,
    only: Annotated[
        str, typer.Option(help="run only these conditions (none,top,random_matched), e.g. one per process")
    ] = "",
    sae_name: Annotated[
        str | None,
        typer.Option(help="with a running server (vllm://, sglang://): the SAE's name in the server's --sae-dir"),
    ] = None,
) -> None:
    """Greedy accuracy with the top high-norm features ablated vs random features of matched activation mass.

    With the embedded backend the ablation is a forward hook; with an engine whose plugin runs the
    ``sae_ablate`` intervention, each request carries it by name. A ``vllm:<model>`` engine this command
    starts serves ``OUT/sae.safetensors`` (the SAE, exported there) from ``--sae-dir OUT``; a running server
    must have been started with ``--sae-dir`` holding the SAE (``l2reason sae export``) and gets
    ``--sae-name``. Every finished batch is
    saved (``ablation_<condition>.json``, ``"complete": false`` until the condition is done) and a rerun
    continues from there; with all three conditions complete, ``ablation.json`` gets the paired comparisons.
    """
    from l2reason.files import check_output_dir
    from l2reason.sae.ablate import condition_file, read_condition, sae_weights
    from l2reason.sae.train import load_sae

    wanted = _wanted_conditions(only)
    prompts, ds = _prompts(dataset, limit, offset)
    if ds is None:
        raise ConfigError(f"--dataset {dataset}: ablation scores answers; give a dataset with gold answers")
    if not prompts:
        raise ConfigError(f"--dataset {dataset} has no items at --offset {offset}: nothing to score")
    check_output_dir(out, "--out")
    saved = {c: read_condition(condition_file(out, c)) for c in _ABLATION_CONDITIONS}  # a torn file fails now
    set_threads(threads)
    s = load_sae(sae)
    conditions, mass = _ablation_features(s, store, features, layer, top, seed)
    plain = sae_weights(s)  # converted once: the engine reads its file, the hook uses it directly
    be, in_engine, sae_file = _ablation_backend(model, out, plain, sae_name)
    engine = {"model": model, "backend": be.name, "ablation": "engine plugin" if in_engine else "forward hook"}
    run = _AblationRun(be, plain, sae_file, in_engine, engine, prompts, ds, layer, out, batch, max_new_tokens)
    correct: dict[str, list[bool]] = {}
    texts: dict[str, list[str]] = {}
    ids = [p.id for p in prompts]
    for cond, feats in conditions.items():
        got, scored = _stored_condition(saved[cond], cond, feats, layer, ids, resume=cond in wanted)
        if scored is None and cond in wanted:
            got, scored = run.run(cond, feats, got)
        if scored is not None:
            texts[cond], correct[cond] = got, scored

    if set(correct) != set(conditions):
        typer.echo(f"conditions done: {sorted(correct)}; run the rest (or rerun without --only) for the comparison")
        return
    data = {
        "layer": layer,
        "dataset": dataset,
        "max_new_tokens": max_new_tokens,
        **engine,
        "items": ids,
        **_ablation_summary(correct, conditions, mass),
        "correct": correct,
        "texts": texts,
    }
    _write_json(out / "ablation.json", data)
    typer.echo(json.dumps({k: data[k] for k in ("accuracy", "top_minus_random")}, indent=1))


@vector_app.command("caa")
def caa_cmd(
    pairs: Annotated[Path, typer.Argument(help='JSONL of {"positive": "...", "negative": "..."} prompts')],
    out: Annotated[Path, typer.Option("--out", "-o", help="the vector file (JSON {layer: [floats]})")],
    layers: Annotated[str, typer.Option(help="'band', 'all' or indices '18,20'")] = "band",
    model: Annotated[str, typer.Option("--model", "-m")] = "default",
) -> None:
    """CAA vectors: mean last-prompt-position state of the positives minus the negatives, per layer."""
    from l2reason.files import check_output_file
    from l2reason.sae.vectors import caa_vectors, load_pairs, save_vectors

    chosen = parse_layers(layers)
    pr = load_pairs(pairs)
    check_output_file(out, "--out")
    vecs = caa_vectors(load_backend(model), pr, chosen)
    save_vectors(vecs, out)
    typer.echo(
        f"{out}: layers {sorted(vecs)} from {len(pr)} pairs; norms "
        + ", ".join(f"{k}: {float(v.norm()):.3g}" for k, v in vecs.items())
    )


@vector_app.command("norms")
def norms_cmd(
    store: StoreArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="the vector file (JSON {layer: [floats]})")],
    layers: Annotated[str, typer.Option(help="indices '18,20' (default: every layer of the store)")] = "",
    quantile: Annotated[float, typer.Option(help="high norm = above this quantile")] = 0.95,
) -> None:
    """The high-norm minus low-norm state vector per layer, from an activation store."""
    from l2reason.files import check_output_file
    from l2reason.sae.store import ActivationStore
    from l2reason.sae.vectors import norm_split_vectors, save_vectors

    chosen = parse_layers(layers) if layers.strip() else None
    if isinstance(chosen, str):
        raise ConfigError(f"--layers {layers!r}: give layer indices of the store ('18,20'), or leave it out for all")
    check_output_file(out, "--out")
    st = ActivationStore(store)
    vecs = norm_split_vectors(st, st.layers if chosen is None else chosen, quantile)
    save_vectors(vecs, out)
    typer.echo(
        f"{out}: layers {sorted(vecs)}; norms " + ", ".join(f"{k}: {float(v.norm()):.3g}" for k, v in vecs.items())
    )


app.add_typer(sae_app, name="sae")
app.add_typer(vector_app, name="vector")
