"""Fuzz: ``l2reason collect``, ``l2reason sae train|bound|features|export|ablate`` and ``l2reason vector
norms|caa`` through the real CLI (typer's ``CliRunner``) on a tiny store and SAE built here.

Model loading is pointed at the tiny test model; everything else runs for real. Each generated command line
has good and bad parts; it is *bad* when any part is bad, and then it must end with exit code 2 and an
``error:`` line, with no traceback (``_fuzz.cli_outcome``). What is bad:

- artefacts: a store whose ``manifest.json`` is torn, not an object, lacks fields or names a missing or torn
  shard; an SAE whose ``cfg.json`` is torn, lacks ``dtype`` or has the wrong width, or whose weights are torn;
  a features file that is not JSON, ``{}``, a list, names a feature outside the SAE, lacks ``feature``,
  repeats one or ranks none; a saved ablation condition that is torn or of another shape;
- options: ``--k`` above ``--d-sae``, ``--lr`` 0/inf/NaN, samples below one batch, a layer the store or the
  SAE does not have (an SAE trained on layer 2 used at layer 1), ``--quantile`` outside (0, 1) or NaN,
  ``--layers`` with a repeat (``1,1``, ``-1,3``), out of range, or a word where indices are asked, an empty
  prompt file or ``--offset`` past the end, a prompt file where a scored dataset is needed, an unknown
  ``--only`` condition, ``--out`` that is a file (or an existing store collected otherwise).

Good command lines must exit 0 and write what they promise (the store's records, the bound's zero
violations, the ranked features, a loadable exported SAE, one vector per layer, the ablation's conditions).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from _fuzz import assert_clean, cli_outcome

AREA = "sae/vector/collect cli"
LAYERS = [1, 2]  # the store's layers; the SAE is trained on layer 2


@pytest.fixture(scope="module")
def env(tiny_backend, tmp_path_factory):
    """The tiny store, SAE and files every command line draws from, and the CLI pointed at the tiny model."""
    import l2reason.backends.shared
    from l2reason.sae.features import encode_store, rank_by_norm
    from l2reason.sae.store import ActivationStore, StorePrompt, collect_store
    from l2reason.sae.train import SAETrainSettings, load_sae, train_sae

    mp = pytest.MonkeyPatch()
    mp.setattr(l2reason.backends.shared, "make_backend", lambda *a, **k: tiny_backend)
    d = tmp_path_factory.mktemp("sae-cli-fuzz")
    prompts = [StorePrompt(f"p{i}", [{"role": "user", "content": f"w{i} w{i + 1} hello"}]) for i in range(8)]
    collect_store(tiny_backend, prompts, d / "store", layers=LAYERS, n=2, temperature=1.0, max_new_tokens=10,
                  batch_size=4, dtype="float32", seed=3, score=lambda t, p: len(t) % 2 == 0)  # fmt: skip
    s = SAETrainSettings(d_sae=16, k=4, batch_size=16, total_samples=16 * 8, holdout_every=4)
    train_sae(d / "store", 2, d / "sae", s)
    sae = load_sae(d / "sae")
    st = ActivationStore(d / "store")
    _, ranked = rank_by_norm(encode_store(sae, st, 2), st.norms(2), 0.8, 6)
    (d / "features.json").write_text(json.dumps({"by_norm": ranked}))
    (d / "prompts.txt").write_text("w1 w2 hello\nw3 w4 world\nw5 hello\n")
    (d / "empty.txt").write_text("\n \n")
    (d / "latin1.txt").write_bytes("caf\xe9 w1\n".encode("latin-1"))
    items = [{"question": q, "answer": i} for i, q in enumerate(["w1 w2 hello", "w3 hello w4", "w5 w6 w7"])]
    (d / "items.jsonl").write_text("\n".join(json.dumps(x) for x in items) + "\n")
    pairs = [("w1 w2 hello", "w4 w5 world"), ("hello w7", "w8 w9")]
    (d / "pairs.jsonl").write_text("\n".join(json.dumps({"positive": p, "negative": n}) for p, n in pairs) + "\n")
    (d / "bad_pairs.jsonl").write_text('{"positive": "a"}\n')
    (d / "a_file").write_text("x")
    (d / "a_dir").mkdir()
    _broken_stores(d)
    _broken_saes(d)
    _broken_features(d)
    yield d
    mp.undo()


def _copy_store(d: Path, name: str) -> Path:
    out = d / name
    shutil.copytree(d / "store", out)
    return out


def _broken_stores(d: Path) -> None:
    m = json.loads((d / "store" / "manifest.json").read_text())
    variants: dict[str, Any] = {
        "torn": json.dumps(m)[:40],
        "list": "[1, 2]",
        "nan": json.dumps({**m, "hidden_size": "NaN"}).replace('"NaN"', "NaN"),
        "no_layers": json.dumps({k: v for k, v in m.items() if k != "layers"}),
        "dup_layers": json.dumps({**m, "layers": [1, 1]}),
        "bad_hidden": json.dumps({**m, "hidden_size": "32"}),
        "bad_shards": json.dumps({**m, "shards": [{"name": "../x", "tokens": 1, "items": []}]}),
        "tokens_off": json.dumps({**m, "shards": [{**m["shards"][0], "tokens": 3}, *m["shards"][1:]]}),
        "format": json.dumps({**m, "format": "other/1"}),
        "hidden_wrong": json.dumps({**m, "hidden_size": 31}),
    }
    for name, text in variants.items():
        (_copy_store(d, f"store_{name}") / "manifest.json").write_text(text)
    torn = _copy_store(d, "store_torn_shard")
    shard = torn / "shard_00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    (_copy_store(d, "store_no_shard") / "shard_00001.safetensors").unlink()
    (_copy_store(d, "store_torn_records") / "shard_00000.jsonl").write_text('{"item": "p0", "tokens": [\n')


def _broken_saes(d: Path) -> None:
    cfg = json.loads((d / "sae" / "cfg.json").read_text())
    variants = {
        "torn": json.dumps(cfg)[:30],
        "list": "[]",
        "no_dtype": json.dumps({k: v for k, v in cfg.items() if k != "dtype"}),
        "no_d_in": json.dumps({k: v for k, v in cfg.items() if k != "d_in"}),
        "wide": json.dumps({**cfg, "d_in": 64}),
        "d_sae": json.dumps({**cfg, "d_sae": 0}),
        "arch": json.dumps({**cfg, "architecture": "bogus"}),
    }
    for name, text in variants.items():
        out = d / f"sae_{name}"
        shutil.copytree(d / "sae", out)
        (out / "cfg.json").write_text(text)
    out = d / "sae_torn_weights"
    shutil.copytree(d / "sae", out)
    w = out / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:64])


def _broken_features(d: Path) -> None:
    good = json.loads((d / "features.json").read_text())
    variants: dict[str, str] = {
        "notjson": "not json",
        "empty_obj": "{}",
        "list": "[1, 2]",
        "range": json.dumps({"by_norm": [{"feature": 999}]}),
        "negative": json.dumps({"by_norm": [{"feature": -1}]}),
        "nokey": json.dumps({"by_norm": [{"feat": 1}]}),
        "str": json.dumps({"by_norm": [{"feature": "3"}]}),
        "dup": json.dumps({"by_norm": [{"feature": 3}, {"feature": 3}]}),
        "none": json.dumps({"by_norm": []}),
        "not_list": json.dumps({"by_norm": {"feature": 3}}),
        "ok_short": json.dumps({"by_norm": good["by_norm"][:2]}),
    }
    for name, text in variants.items():
        (d / f"features_{name}.json").write_text(text)


# ---- the command lines ---------------------------------------------------------------------------------------

BAD_STORES = ["store_" + n for n in ("torn", "list", "nan", "no_layers", "dup_layers", "bad_hidden", "bad_shards",
                                     "tokens_off", "format", "hidden_wrong", "torn_shard", "no_shard", "torn_records")]  # fmt: skip
BAD_SAES = ["sae_" + n for n in ("torn", "list", "no_dtype", "no_d_in", "wide", "d_sae", "arch", "torn_weights")]
BAD_FEATURES = ["features_" + n for n in ("notjson", "empty_obj", "list", "range", "negative", "nokey", "str",
                                          "dup", "none", "not_list")]  # fmt: skip


class Line:
    """A command line under construction: its words, whether a part is bad, and a check for a good result."""

    def __init__(self, rng: random.Random, d: Path, out: Path) -> None:
        self.rng, self.d, self.out = rng, d, out
        self.args: list[str] = []
        self.bad = False
        self.check: Any = None

    def pick(self, good: list[Any], bad: list[Any], p_bad: float = 0.2) -> Any:
        """A good value, or (with probability ``p_bad``) a bad one, which makes the line bad."""
        if bad and self.rng.random() < p_bad:
            self.bad = True
            return self.rng.choice(bad)
        return self.rng.choice(good)

    def opt(self, flag: str, good: list[Any], bad: list[Any], p_bad: float = 0.2) -> Any:
        v = self.pick(good, bad, p_bad)
        if v is not None:
            self.args += [flag, str(v)]
        return v

    def path(self, good: list[str], bad: list[str], p_bad: float = 0.15) -> Path:
        return self.d / self.pick(good, bad, p_bad)


def _out_folder(line: Line, flag: str = "--out") -> Path:
    """``--out``: a new folder, or (bad) an existing file."""
    out = line.path(["__new__"], ["a_file"], 0.08)
    out = line.out if out.name == "__new__" else out
    line.args += [flag, str(out)]
    return out


def _collect(line: Line) -> None:
    src = line.pick(["prompts.txt", "items.jsonl"], ["empty.txt", "latin1.txt", "missing.txt"], 0.15)
    source = f"jsonl:{line.d / src}" if src == "items.jsonl" else str(line.d / src)
    line.args = ["collect", source]
    layers = line.opt("--layers", ["1,2", "all", "band", "2", "-1"], ["1,1", "-1,3", "9", "a", "1,,2", ""], 0.2)
    offset = line.opt("--offset", [None, 0, 1], [50, 10**6], 0.1)
    line.opt("--limit", [None, 1, 2], [], 0)
    n = line.opt("-n", [1, 2], [], 0)
    line.opt("--temperature", [0, 0.7], ["nan", "inf"], 0.08)
    line.opt("-t", [2, 3], [], 0)
    line.opt("--batch", [1, 2], [], 0)
    line.opt("--dtype", ["float32", "float16"], ["int8", "float64"], 0.08)
    out = line.path(["__new__"], ["a_file", "store", "store_torn"], 0.12)
    out = line.out if out.name == "__new__" else out
    if out.name == "store":  # an existing store collected with other settings: a copy, refused
        out = _copy_store(line.d, f"store_copy_{line.out.name}")
    line.args += ["--out", str(out)]

    def check() -> None:
        from l2reason.sae.store import ActivationStore

        st = ActivationStore(out)
        assert len(st.records()) > 0 and all(len(r["tokens"]) >= 1 for r in st.records())
        assert int(n or 1) * len({r["item"] for r in st.records()}) == len(st.records())
        assert st.layers and len(st.states(st.layers[0])) == len(st)

    line.check = check
    del layers, offset


def _train(line: Line) -> None:
    store = line.path(["store"], BAD_STORES, 0.2)
    line.args = ["sae", "train", str(store)]
    line.opt("--layer", [2], [0, 7, -1], 0.1)
    arch = line.opt("--architecture", [None, "topk", "standard"], ["gated", "TopK"], 0.08)
    d_sae = line.pick([8, 16], [], 0)
    line.args += ["--d-sae", str(d_sae)]
    line.opt("--k", [2, 4] if arch != "standard" else [2], [17, 33] if arch != "standard" else [], 0.15)
    line.opt("--lr", ["1e-3", "3e-3"], ["0", "inf", "nan", "-1e-3", "1e400"], 0.2)
    line.opt("--l1", [None, "1.0"], ["nan", "inf"], 0.05)
    batch = 16
    line.args += ["--batch-size", str(batch)]
    line.opt("--samples", [32, 48], [8, 15], 0.1)
    out = _out_folder(line)

    def check() -> None:
        from l2reason.sae.train import load_sae

        rep = json.loads((out / "train_report.json").read_text())
        assert rep["layer"] == 2 and load_sae(out).cfg.d_sae == d_sae
        h = rep["holdout"]
        assert h is None or all(v == v for v in (h["mse"], h["l0"])), h  # no NaN

    line.check = check


def _bound(line: Line) -> None:
    sae = line.path(["sae"], BAD_SAES, 0.15)
    store = line.path(["store"], BAD_STORES, 0.15)
    line.args = ["sae", "bound", str(sae), str(store)]
    line.opt("--layer", [2], [1, 0, 5], 0.15)
    out = _out_folder(line)

    def check() -> None:
        rep = json.loads((out / "bound.json").read_text())
        assert rep["layer"] == 2 and rep["violations"] == 0 and rep["tokens"] > 0, rep

    line.check = check


def _features(line: Line) -> None:
    sae = line.path(["sae"], BAD_SAES, 0.12)
    store = line.path(["store"], BAD_STORES, 0.12)
    line.args = ["sae", "features", str(sae), str(store)]
    line.opt("--layer", [2], [1, 3], 0.1)
    line.opt("--quantile", [None, 0.5, 0.8, "0.25"], ["1.5", "-0.5", "nan", "0", "1", "inf"], 0.25)
    top = line.opt("--top", [None, 1, 3, 40], ["0", "-2"], 0.08)
    out = _out_folder(line)

    def check() -> None:
        data = json.loads((out / "features.json").read_text())
        assert len(data["by_norm"]) == min(int(top or 20), 16), data["by_norm"]
        assert (out / "features.html").read_text().count("<h2>feature") == len(data["by_norm"])

    line.check = check


def _export(line: Line) -> None:
    sae = line.path(["sae"], BAD_SAES, 0.2)
    dest = line.pick(["__new__"], ["a_dir", "a_file/x.safetensors"], 0.2)
    out = line.out / "sae.safetensors" if dest == "__new__" else line.d / dest
    line.args = ["sae", "export", str(sae), str(out)]

    def check() -> None:
        from l2reason.techniques.sae_ablate import load_sae_weights

        w = load_sae_weights(out)
        assert w.d_sae == 16 and w.d_in == 32

    line.check = check


def _ablate(line: Line) -> None:
    sae = line.path(["sae"], BAD_SAES, 0.08)
    store = line.path(["store"], BAD_STORES, 0.08)
    feats = line.path(["features.json", "features_ok_short.json"], [f + ".json" for f in BAD_FEATURES], 0.25)
    line.args = ["sae", "ablate", str(sae), str(store), str(feats)]
    line.opt("--layer", [2], [1], 0.05)
    ds = line.pick(["items"], ["prompts", "offset"], 0.12)
    line.args += ["--dataset", f"jsonl:{line.d / 'items.jsonl'}" if ds != "prompts" else str(line.d / "prompts.txt")]
    if ds == "offset":
        line.args += ["--offset", "3"]
    limit = line.opt("--limit", [1, 2], [], 0)
    line.opt("--top", [1, 2], [], 0)
    line.opt("--only", [None, "none", "top,none"], ["bogus", "top,x"], 0.08)
    line.args += ["-t", "2", "--batch", "2"]
    out = _out_folder(line)
    if line.rng.random() < 0.15 and out == line.out:  # a saved condition from an earlier run
        part = line.pick(["partial"], ["torn", "list", "short"], 0.7)
        body = {
            "partial": json.dumps({"layer": 2, "items": [], "features": [], "texts": [], "complete": False}),
            "torn": '{"layer": 2, "items": ["a"',
            "list": "[]",
            "short": json.dumps({"layer": 2, "items": ["x"], "features": [], "texts": ["a", "b"], "complete": False}),
        }[part]
        out.mkdir(parents=True, exist_ok=True)
        (out / "ablation_none.json").write_text(body)

    def check() -> None:
        done = sorted(p.name for p in out.glob("ablation_*.json"))
        assert done, "no condition saved"
        for p in out.glob("ablation_*.json"):
            data = json.loads(p.read_text())
            assert len(data["texts"]) == int(limit), data
        if (out / "ablation.json").is_file():
            rep = json.loads((out / "ablation.json").read_text())
            assert set(rep["accuracy"]) == {"none", "top", "random_matched"}

    line.check = check


def _vector_norms(line: Line) -> None:
    store = line.path(["store"], BAD_STORES, 0.2)
    line.args = ["vector", "norms", str(store)]
    layers = line.opt("--layers", [None, "1", "2", "1,2"], ["band", "all", "1,1", "-1", "9", "a", "1,,2"], 0.25)
    line.opt("--quantile", [None, 0.5, 0.9], ["1.5", "0", "nan", "-1"], 0.15)
    dest = line.pick(["__new__"], ["a_dir"], 0.08)
    out = line.out / "v.json" if dest == "__new__" else line.d / dest
    line.args += ["--out", str(out)]

    def check() -> None:
        v = json.loads(out.read_text())
        want = [str(x) for x in (LAYERS if layers is None else [int(y) for y in str(layers).split(",")])]
        assert sorted(v) == sorted(want) and all(len(x) == 32 for x in v.values()), sorted(v)

    line.check = check


def _vector_caa(line: Line) -> None:
    pairs = line.path(["pairs.jsonl"], ["bad_pairs.jsonl", "empty.txt", "missing.jsonl", "latin1.txt"], 0.2)
    line.args = ["vector", "caa", str(pairs)]
    layers = line.opt("--layers", ["1,2", "2", "band", "all"], ["1,1", "-1,3", "9", "x"], 0.2)
    dest = line.pick(["__new__"], ["a_dir"], 0.08)
    out = line.out / "caa.json" if dest == "__new__" else line.d / dest
    line.args += ["--out", str(out)]

    def check() -> None:
        v = json.loads(out.read_text())
        assert v and all(len(x) == 32 for x in v.values())
        if layers not in ("band", "all"):
            assert sorted(v) == sorted(str(layers).split(","))

    line.check = check


COMMANDS = [(_collect, 4), (_train, 3), (_bound, 3), (_features, 3), (_export, 2), (_ablate, 3),
            (_vector_norms, 3), (_vector_caa, 2)]  # fmt: skip
#: good lines of the commands that generate, train or plot (0.4-0.8 s each): a few suffice, the rest are bad
GOOD_CAP = {"_collect": 6, "_train": 4, "_bound": 4, "_ablate": 5, "_vector_caa": 4, "_vector_norms": 12}


def test_fuzz_sae_vector_collect_cli(env, tmp_path):
    import typer
    from click.testing import CliRunner

    from l2reason.cli import app

    runner, command = CliRunner(), typer.main.get_command(app)  # the click command, built once
    rng = random.Random(20266)
    builders = [b for b, w in COMMANDS for _ in range(w)]
    goods = {b.__name__: 0 for b, _ in COMMANDS}
    ran = 0
    for i in range(2000):
        if ran == 250:
            break
        build = rng.choice(builders)
        line = Line(rng, env, tmp_path / f"o{i}")
        build(line)
        if not line.bad and goods[build.__name__] >= GOOD_CAP.get(build.__name__, 10**9):
            continue
        goods[build.__name__] += not line.bad
        ran += 1
        res = runner.invoke(command, line.args)
        cli_outcome(AREA, line.args, res, bad=line.bad, check=line.check)
    assert all(goods.values()), goods  # every command ran good lines too
    assert_clean(AREA, at_least=250)
