"""The evaluation harness on the tiny model: storage, resume after a crash, corrupt lines, names."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import run_config

from l2reason.backends.base import Capabilities
from l2reason.errors import CapabilityError, ConfigError
from l2reason.eval.datasets import load_dataset
from l2reason.eval.harness import RunConfig, load_run, pass_path, read_jsonl, run_eval
from l2reason.eval.methods import (
    DEFAULT_GENERATION_METHODS,
    GENERATION_METHODS,
    generation_config,
    parse_method_list,
    selection_spec,
)


class Crash(RuntimeError):
    pass


class Wrapped:
    """A backend that counts calls and can die on the k-th ``generate_many``."""

    def __init__(self, inner, crash_on: int | None = None, caps: Capabilities | None = None):
        self.inner, self.crash_on, self.calls, self.items = inner, crash_on, 0, 0
        self._caps = caps

    @property
    def model_id(self):
        return self.inner.model_id

    @property
    def num_layers(self):
        return self.inner.num_layers

    @property
    def capabilities(self):
        return self._caps or self.inner.capabilities

    def generate_many(self, reqs):
        self.calls += 1
        if self.crash_on is not None and self.calls == self.crash_on:
            raise Crash("simulated crash while this batch was in flight")
        self.items += len(reqs)
        return self.inner.generate_many(reqs)


def _cfg(be, **kw) -> RunConfig:
    base = dict(limit=4, n=2, max_new_tokens=5, batch_items=1, gen_methods=["greedy"], gen_limit=2)
    return run_config(be, **{**base, **kw})


@pytest.fixture(scope="module")
def clean_run(tiny_backend, tmp_path_factory):
    """An uninterrupted reference run."""
    d = tmp_path_factory.mktemp("clean")
    return run_eval(tiny_backend, _cfg(tiny_backend), d, show_progress=False)


def _texts(run):
    return {r.item_id: [c.text for c in r.result.candidates] for r in run.samples}


def test_run_stores_every_pass_with_all_layer_norms(clean_run, tiny_backend):
    assert len(clean_run.samples) == 4 and len(clean_run.gens["greedy"]) == 2
    r = clean_run.samples[0]
    c = r.result.candidates[0]
    assert len(r.result.candidates) == 2 and len(r.correct) == 2 and len(r.answers) == 2
    assert c.norms.layers == list(range(tiny_backend.num_layers))  # every layer, one norm per token
    assert len(c.norms.per_token) == c.completion_tokens
    assert c.logprobs.confidence is not None and c.logprobs.top_logprobs is None  # compacted
    assert (clean_run.path / "config.json").is_file()
    g = clean_run.gens["greedy"][0]
    assert len(g.result.candidates) == 1


def test_resume_after_crash_loses_at_most_the_item_in_flight(clean_run, tiny_backend, tmp_path):
    be = Wrapped(tiny_backend, crash_on=3)  # items 0 and 1 finish, item 2 is in flight
    with pytest.raises(Crash):
        run_eval(be, _cfg(be), tmp_path, show_progress=False)
    stored, _ = read_jsonl(pass_path(tmp_path, "samples"))
    assert len(stored) == 2  # nothing finished was lost
    again = Wrapped(tiny_backend)
    run = run_eval(again, _cfg(again), tmp_path, show_progress=False)
    assert again.items == 2 + 2  # 2 remaining sample items + 2 greedy items; none regenerated
    assert _texts(run) == _texts(clean_run)  # same seeds -> the same samples as an uninterrupted run
    assert len(run.gens["greedy"]) == 2


def test_corrupt_line_is_reported_and_skipped(clean_run, tiny_backend, tmp_path, caplog):
    import shutil

    shutil.copytree(clean_run.path, tmp_path, dirs_exist_ok=True)
    path = pass_path(tmp_path, "samples")
    lines = path.read_text().splitlines()
    victim = json.loads(lines[1])["item_id"]
    lines[1] = lines[1][: len(lines[1]) // 2]  # a torn write in the middle of the file
    path.write_text("\n".join(lines) + "\n" + '{"not": "an item"}\n' + lines[0][:40])  # and a torn tail
    with caplog.at_level(logging.WARNING, logger="l2reason.eval.harness"):
        recs, skipped = read_jsonl(path)
    assert skipped == 3 and victim not in recs and len(recs) == 3
    assert sum("corrupt results line skipped" in m for m in caplog.messages) == 3
    be = Wrapped(tiny_backend)
    run = run_eval(be, _cfg(be), tmp_path, show_progress=False)
    assert be.items == 1  # only the corrupted item is generated again
    assert _texts(run) == _texts(clean_run)
    assert run.skipped == 3  # the torn lines stay and keep being skipped, not fatal


def test_resume_with_other_settings_is_refused(clean_run, tiny_backend):
    with pytest.raises(ConfigError, match="n: stored 2, now 3"):
        run_eval(tiny_backend, _cfg(tiny_backend, n=3), clean_run.path, show_progress=False)


def test_extending_limit_resumes(clean_run, tiny_backend, tmp_path):
    import shutil

    shutil.copytree(clean_run.path, tmp_path, dirs_exist_ok=True)
    be = Wrapped(tiny_backend)
    run = run_eval(be, _cfg(be, limit=5), tmp_path, show_progress=False)
    assert be.items == 1 and len(run.samples) == 5
    assert load_run(tmp_path).config.limit == 5


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ConfigError, match=r"valid: .*majority.*self-certainty"):
        parse_method_list("majority,best-guess", "selection")
    with pytest.raises(ConfigError, match="valid: greedy, alrr"):
        parse_method_list("greedy,beam", "generation")
    with pytest.raises(ConfigError, match="valid scores: A/T"):
        selection_spec("l2:score=Q/T")
    with pytest.raises(ConfigError, match=r"valid names: .*gsm_symbolic"):
        load_dataset("gsm_plastic")


def test_unknown_names_fail_before_generation(tiny_backend, tmp_path):
    be = Wrapped(tiny_backend)
    with pytest.raises(ConfigError, match="valid"):
        run_eval(be, _cfg(be, methods=["nope"]), tmp_path, show_progress=False)
    assert be.calls == 0 and not (tmp_path / "config.json").exists()


def test_method_configs():
    assert parse_method_list("all", "selection")[:2] == ["random", "majority"]
    assert parse_method_list("none", "generation") == []
    assert parse_method_list("all,l2-auto", "selection")[-1] == "l2-auto"
    assert parse_method_list("default", "generation") == list(DEFAULT_GENERATION_METHODS)
    assert DEFAULT_GENERATION_METHODS[0] == "greedy" and set(DEFAULT_GENERATION_METHODS) <= set(GENERATION_METHODS)
    assert parse_method_list("alrr:K=2,g=0.1,erss", "generation") == ["alrr:K=2,g=0.1", "erss"]
    assert generation_config("alrr:K=2,g=0.1").interventions == [{"kind": "alrr", "K": 2, "g": 0.1}]
    assert generation_config("greedy").interventions == []
    assert generation_config("suppress-random").interventions == [{"kind": "suppress", "target": "random"}]
    spec = selection_spec("l2-vote:score=z_mean,layers=1-3")
    assert (spec.method, spec.score, spec.layers) == ("l2-vote", "z_mean", [1, 2, 3])
    with pytest.raises(ConfigError, match="static-steer needs steering vectors"):
        generation_config("static-steer")
    with pytest.raises(ConfigError, match="intervention #0 \\(alrr\\): K"):
        generation_config("alrr:K=-1")
    with pytest.raises(ConfigError, match="l2reason calibrate --select"):
        selection_spec("l2-auto")


def test_static_steer_reads_vectors(tmp_path: Path):
    f = tmp_path / "v.json"
    f.write_text(json.dumps({"2": [0.0, 1.0]}))
    cfg = generation_config(f"static-steer:vectors={f},alpha=3")
    assert cfg.interventions[0]["vectors"] == {2: [0.0, 1.0]} and cfg.interventions[0]["alpha"] == 3


def test_missing_intervention_fails_before_generation(tiny_backend, tmp_path):
    be = Wrapped(tiny_backend, caps=Capabilities(name="none"))
    with pytest.raises(CapabilityError, match="alrr"):
        run_eval(be, _cfg(be, gen_methods=["greedy", "alrr"]), tmp_path, show_progress=False)
    assert be.calls == 0


def test_generation_methods_run_on_the_tiny_model(tiny_backend, tmp_path):
    missing = {"alrr", "erss", "suppress", "static_steer"} - set(tiny_backend.capabilities.interventions)
    if missing:
        pytest.skip(f"backend lacks interventions {sorted(missing)}")
    vec = tmp_path / "v.json"
    vec.write_text(json.dumps({"2": [0.01] * tiny_backend.hidden_size}))
    gens = ["greedy", "alrr", "alrr-static", "erss", "suppress-high", "suppress-random", f"static-steer:vectors={vec}"]
    cfg = _cfg(tiny_backend, n=0, limit=2, gen_limit=None, gen_methods=gens, max_new_tokens=6)
    run = run_eval(tiny_backend, cfg, tmp_path / "run", show_progress=False)
    assert set(run.gens) == set(gens)
    assert all(len(v) == 2 and len(v[0].result.candidates) == 1 for v in run.gens.values())
    assert run.samples == []
    from l2reason.eval.report import compute_report

    rep = compute_report(load_run(tmp_path / "run"), n_boot=50, n_subsamples=5)
    assert {r.name for r in rep.rows} == set(gens)  # no sampling pass: no empty selection rows
    assert all(r.kind == "generation" for r in rep.rows)


def test_progress_without_a_terminal_logs_one_line_per_batch(clean_run, tiny_backend, tmp_path, capfd):
    """Under nohup or in CI logs the bar is not drawn; each stored batch prints a plain line with counts."""
    import shutil

    shutil.copytree(clean_run.path, tmp_path, dirs_exist_ok=True)
    run_eval(tiny_backend, _cfg(tiny_backend, limit=5), tmp_path, show_progress=True)
    err = capfd.readouterr().err
    lines = [x for x in err.splitlines() if " samples: " in x]
    assert len(lines) == 1 and "5/5 items" in lines[0] and "tok/s" in lines[0] and "ETA 0 min" in lines[0]
    assert not any(" greedy: " in x for x in err.splitlines())  # nothing left to do in that pass


class Recording(Wrapped):
    def __init__(self, inner):
        super().__init__(inner)
        self.requests = []

    def generate_many(self, reqs):
        self.requests.extend(reqs)
        return super().generate_many(reqs)


def test_suppress_matched_uses_the_rate_suppress_high_measured(tiny_backend, tmp_path):
    if "suppress" not in tiny_backend.capabilities.interventions:
        pytest.skip("backend lacks suppression")
    be = Recording(tiny_backend)
    gens = ['suppress-high:threshold={"warmup":2}', "suppress-matched"]  # short warm-up: hits within 24 steps
    cfg = _cfg(be, n=0, limit=3, gen_limit=None, gen_methods=gens, max_new_tokens=24)
    run = run_eval(be, cfg, tmp_path / "run", show_progress=False)
    hits = sum(
        sum(c.interventions["suppress"]["suppressed_tokens"]) for r in run.gens[gens[0]] for c in r.result.candidates
    )
    steps = sum(
        c.completion_tokens * len(c.interventions["suppress"]["layers"])
        for r in run.gens[gens[0]]
        for c in r.result.candidates
    )
    assert hits > 0  # not vacuous: the tiny model has high-norm tokens within 24 steps
    info = json.loads((tmp_path / "run" / "gen" / "suppress-matched.rate.json").read_text())
    assert info["rate"] == pytest.approx(hits / steps) and info["items"] == 3 and info["source"] == gens[0]
    matched = [r for r in be.requests if r.interventions and r.interventions[0].target == "random"]
    assert len(matched) == 3 and all(r.interventions[0].rate == pytest.approx(hits / steps) for r in matched)
    high = [r for r in be.requests if r.interventions and r.interventions[0].target == "high_norm"]
    assert len(high) == 3

    # an extended run goes on at the stored rate, not a recomputed one
    path = tmp_path / "run" / "gen" / "suppress-matched.rate.json"
    path.write_text(json.dumps({**info, "rate": 0.5}))
    be2 = Recording(tiny_backend)
    run_eval(
        be2,
        _cfg(be2, n=0, limit=4, gen_limit=None, gen_methods=gens, max_new_tokens=24),
        tmp_path / "run",
        show_progress=False,
    )
    again = [r for r in be2.requests if r.interventions[0].target == "random"]
    assert len(again) == 1 and again[0].interventions[0].rate == 0.5


def test_suppress_matched_needs_suppress_high_first(tiny_backend, tmp_path):
    with pytest.raises(ConfigError, match="list 'suppress-high' before it"):
        run_eval(tiny_backend, _cfg(tiny_backend, n=0, gen_methods=["suppress-matched"]), tmp_path, show_progress=False)
    with pytest.raises(ConfigError, match="list 'suppress-high' before it"):
        run_eval(
            tiny_backend,
            _cfg(tiny_backend, n=0, gen_methods=["suppress-matched", "suppress-high"]),
            tmp_path,
            show_progress=False,
        )


def test_report_states_suppression_rates_and_the_match(tiny_backend, tmp_path):
    if "suppress" not in tiny_backend.capabilities.interventions:
        pytest.skip("backend lacks suppression")
    from l2reason.eval.report import compute_report

    gens = ['suppress-high:threshold={"warmup":2}', "suppress-matched"]
    run_eval(
        tiny_backend,
        _cfg(tiny_backend, n=0, limit=2, gen_limit=None, gen_methods=gens, max_new_tokens=16),
        tmp_path,
        show_progress=False,
    )
    rep = compute_report(load_run(tmp_path), n_boot=50, n_subsamples=5)
    high = next(n for n in rep.notes if n.startswith(gens[0] + ": suppressed"))
    matched = next(n for n in rep.notes if n.startswith("suppress-matched: suppressed"))
    assert "matched to " + gens[0] in matched and "matched" not in high


def test_report_summarises_what_alrr_and_erss_did(tiny_backend, tmp_path):
    if not {"alrr", "erss"} <= set(tiny_backend.capabilities.interventions):
        pytest.skip("backend lacks alrr/erss")
    from l2reason.eval.report import compute_report

    cfg = _cfg(tiny_backend, n=0, limit=2, gen_limit=None, gen_methods=["alrr", "erss"], max_new_tokens=8)
    run = run_eval(tiny_backend, cfg, tmp_path, show_progress=False)
    rep = compute_report(load_run(tmp_path), n_boot=50, n_subsamples=5)
    a = [c.interventions["alrr"] for r in run.gens["alrr"] for c in r.result.candidates]
    tried = sum(sum(x["passes_tried"]) for x in a)
    accepted = sum(sum(x["passes_accepted"]) for x in a)
    note = next(n for n in rep.notes if n.startswith("alrr: "))
    assert f"{tried} re-run passes tried, {accepted} accepted" in note
    e = [c.interventions["erss"] for r in run.gens["erss"] for c in r.result.candidates]
    note = next(n for n in rep.notes if n.startswith("erss: "))
    fires, inj = sum(x["fires"] for x in e), sum(len(x["injections"]) for x in e)
    assert note.endswith(f"fired {fires} times and injected {inj} times over 2 candidates")
