"""Issue 11, rule 6 (and the file parts of rules 4/5): files we read are validated, runs we resume are fingerprinted.

Every bad case asserts the error class *and* a message substring; every group
also has known-good inputs that must pass, so the checks cannot pass by
refusing everything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pydantic
import pytest
import torch

from l2reason.errors import CalibrationError, ConfigError
from l2reason.eval.datasets import JSONLDataset, load_dataset
from l2reason.eval.harness import RunConfig, load_run, pass_path, run_eval
from l2reason.files import check_output_dir, check_output_file, read_text_file
from l2reason.signal.calibration import Calibration, fit_calibration

MODEL = "org/tiny-model"


# ---------------------------------------------------------------- calibration files


def _cal(num_layers: int = 24, hidden_size: int = 32, q: float = 0.95) -> Calibration:
    g = torch.Generator().manual_seed(0)
    return fit_calibration(
        {18: torch.arange(1.0, 101.0), 19: 10.0 + torch.rand(50, generator=g)},
        model_id=MODEL,
        num_layers=num_layers,
        hidden_size=hidden_size,
        q=q,
        n_prompts=2,
        created_at="2026-01-01T00:00:00+00:00",
    )


def _write_cal(tmp_path: Path, mutate: dict | None = None, raw: str | bytes | None = None) -> Path:
    path = tmp_path / "cal.json"
    if raw is None:
        data = _cal().model_dump()
        data.update(mutate or {})
        raw = json.dumps(data)
    if isinstance(raw, bytes):
        path.write_bytes(raw)
    else:
        path.write_text(raw, encoding="utf-8")
    return path


def test_valid_calibration_files_load(tmp_path: Path) -> None:
    cal = _cal().with_selection({"layers": [18, 19], "score": "B/T", "table": [{"layers": [18], "value": 0.5}]})
    path = cal.save(tmp_path / "ok.json")
    assert Calibration.load(path, expected_model_id=MODEL, expected_num_layers=24, expected_hidden_size=32) == cal
    # a UTF-8 BOM (some editors add one) and integer-valued numbers are fine
    data = cal.model_dump()
    data["tau"] = [96, 11]  # ints where floats are expected
    data["q3"] = [75.25, 10.9]
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(data).encode())
    assert Calibration.load(bom).tau == [96, 11]
    # q = 0.5: tau is the median; q = 0.1: tau is below q1
    for q in (0.5, 0.1):
        assert Calibration.load(_cal(q=q).save(tmp_path / f"q{q}.json")).quantile == q


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        ({"tau": [1e39, 11.0]}, "beyond float32's range"),  # inf once it is a float32 tensor
        ({"q3": [3.5e38, 10.9]}, "beyond float32's range"),
        ({"tau": [1e-50, 11.0]}, "round to 0 in float32"),
        ({"tau": [0.0, 11.0]}, "tau must be > 0"),
        ({"tau": [-1.0, 11.0]}, "tau must be > 0"),
        ({"q1": [-1.0, 10.2]}, "q1 must be >= 0"),
        ({"q1": [90.0, 10.2]}, "layer 18: the quantiles are out of order"),
        ({"median": [80.0, 10.5]}, "q1 <= median <= q3 <= tau"),
        ({"tau": [50.0, 11.0]}, "out of order"),  # the 0.95-quantile below q3
        ({"layers": ["18", 19]}, "layers must be a list of integers"),
        ({"layers": [True, 19]}, "layers must be a list of integers"),
        ({"layers": [18.5, 19]}, "layers must be a list of integers"),
        ({"layers": 18}, "layers must be a list of integers, got int"),
        ({"tau": ["96.0", 11.0]}, "tau must be a list of numbers"),
        ({"median": [None, 10.5]}, "median must be a list of numbers"),
        ({"n_tokens": [100, False]}, "n_tokens must be a list of integers"),
        ({"quantile": "0.95"}, "quantile must be a number"),
        ({"quantile": 1.5}, "quantile must be in (0, 1)"),
        ({"num_layers": True}, "num_layers must be an integer"),
        ({"num_layers": 10}, "layers [18, 19] are outside 0..9"),
        ({"hidden_size": 32.5}, "hidden_size must be an integer"),
        ({"model_id": 7}, "model_id must be a string"),
        ({"model_id": "  "}, "model_id is empty"),
        ({"created_at": "yesterday"}, "created_at must be an ISO-8601 timestamp"),
        ({"n_tokens": [0, 50]}, "layers [18] were calibrated on fewer than 10 tokens"),
        ({"selection": [1, 2]}, "selection"),
        ({"tau": [96.0]}, "tau has 1 entries but layers has 2"),
        ({"schema_version": True}, "schema_version True"),
        ({"schema_version": "1"}, "schema_version '1'"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_calibration_values(tmp_path: Path, mutate: dict, message: str) -> None:
    with pytest.raises(CalibrationError) as err:
        Calibration.load(_write_cal(tmp_path, mutate))
    assert message in str(err.value)
    assert "cal.json" in str(err.value) and "l2reason calibrate" in str(err.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"model_id": "\xff"}', "is not UTF-8 text (byte 0xff"),
        (b"\xfe\xff\x00{", "is not UTF-8 text"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"selection": ' + "[" * 40 + "]" * 40 + "}", "nested more than 32 levels"),
        ('{"selection": ' + '{"a": ' * 200 + "1" + "}" * 201, "nested more than 32 levels"),
        ("1" + "0" * 5000, "is not usable JSON"),
        ("null", "holds a JSON NoneType, not an object"),
        ('"text"', "holds a JSON str, not an object"),
        ("", "not valid JSON"),
        ('{"tau": NaN}', "holds NaN"),
        ('{"tau": -Infinity}', "holds -Infinity"),
        ('{"schema_version": 1,', "not valid JSON"),
    ],
)
def test_bad_calibration_bytes(tmp_path: Path, raw: str | bytes, message: str) -> None:
    with pytest.raises(CalibrationError) as err:
        Calibration.load(_write_cal(tmp_path, raw=raw))
    assert message in str(err.value)


def test_calibration_path_that_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="is not a regular file"):
        Calibration.load(tmp_path)
    with pytest.raises(CalibrationError, match="no calibration file at"):
        Calibration.load(tmp_path / "absent.json")
    with pytest.raises(CalibrationError, match="not a usable calibration file path"):
        Calibration.load("bad\0name.json")
    if hasattr(os, "mkfifo"):  # a FIFO would block a plain read forever
        fifo = tmp_path / "fifo.json"
        os.mkfifo(fifo)
        with pytest.raises(CalibrationError, match="not a regular file"):
            Calibration.load(fifo)


def test_calibration_sizes_against_the_model(tmp_path: Path) -> None:
    path = _cal().save(tmp_path / "cal.json")
    Calibration.load(path, expected_num_layers=24, expected_hidden_size=32)  # the right model
    with pytest.raises(
        CalibrationError, match="num_layers=24 but the model 'org/tiny-model' loaded now has num_layers=28"
    ):
        Calibration.load(path, expected_num_layers=28)
    with pytest.raises(CalibrationError, match="hidden_size=32 .* hidden_size=896"):
        Calibration.load(path, expected_hidden_size=896)
    with pytest.raises(CalibrationError, match="is for model 'org/tiny-model', not 'other'"):
        Calibration.load(path, expected_model_id="other")


def test_direct_construction_checks_float32_and_order() -> None:
    data = _cal().model_dump()
    with pytest.raises(pydantic.ValidationError, match="beyond float32"):
        Calibration(**{**data, "tau": [1e39, 11.0]})
    with pytest.raises(pydantic.ValidationError, match="out of order"):
        Calibration(**{**data, "median": [99.0, 10.5]})
    assert Calibration(**data) == _cal()


def test_backend_refuses_a_calibration_of_another_size(tiny, tmp_path, monkeypatch) -> None:
    from l2reason.backends.hf import HFBackend

    wrong = fit_calibration(
        {1: torch.arange(1.0, 21.0)}, model_id=tiny.model_id, num_layers=24, hidden_size=32, n_prompts=1
    )
    with pytest.raises(CalibrationError, match="num_layers=24 but the model .* has num_layers=4"):
        _ = HFBackend(tiny, calibration=wrong).calibration
    right = fit_calibration(
        {1: torch.arange(1.0, 21.0)}, model_id=tiny.model_id, num_layers=4, hidden_size=32, n_prompts=1
    )
    assert HFBackend(tiny, calibration=right).calibration is right
    # the default file of the model, corrupt: a CalibrationError naming it, not a JSON traceback
    monkeypatch.setenv("L2REASON_CACHE", str(tmp_path))
    from l2reason.signal.calibration import default_calibration_path

    path = default_calibration_path(tiny.model_id)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00\xff garbage")
    with pytest.raises(CalibrationError, match="not UTF-8 text"):
        _ = HFBackend(tiny).calibration


# ---------------------------------------------------------------- JSONL datasets

GOOD = '{"question": "1 + 1?", "answer": 2, "id": "a"}'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "2 + 2?", "answer": NaN}', "holds NaN, which is not a JSON value"),
        ('{"question": "2 + 2?", "answer": Infinity}', "holds Infinity, which is not a JSON value"),
        ('{"question": "2 + 2?", "answer": -Infinity}', "holds -Infinity, which is not a JSON value"),
        ('{"question": "2 + 2?", "answer": 4, "note": NaN}', "holds NaN, which is not a JSON value"),
        ('{"question": "2 + 2?", "answer": 1e999}', "'answer' must be a finite number"),
        ('{"question": "2 + 2?", "answer": 4, "id": [1]}', "'id' must be a non-empty string or an integer"),
        ('{"question": "2 + 2?", "answer": 4, "id": {"k": 1}}', "'id' must be a non-empty string or an integer"),
        ('{"question": "2 + 2?", "answer": 4, "id": null}', "got None"),
        ('{"question": "2 + 2?", "answer": 4, "id": true}', "got True (bool)"),
        ('{"question": "2 + 2?", "answer": 4, "id": 1.5}', "'id' must be"),
        ('{"question": "2 + 2?", "answer": 4, "id": ""}', "'id' must be"),
        ('{"answer": 4}', "'question' is missing"),
        ('{"question": "2 + 2?"}', "'answer' is missing"),
        ('{"question": ["2 + 2?"], "answer": 4}', "'question' must be a non-empty string"),
        ('{"question": "2 + 2?", "answer": [4]}', "'answer' must be a non-empty string or a number"),
        ('{"question": "2 + 2?", "answer": true}', "'answer' must be"),
        ('{"question": "2 + 2?", "answer": 4', "not valid JSON"),
        ("[1, 2]", "holds a JSON list, not an object"),
        ('{"question": "q", "answer": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        ('{"question": "q", "answer": 1, "x": ' + "[" * 70 + "]" * 70 + "}", "nested more than 64 levels"),
        ('{"question": "q", "answer": ' + "9" * 5000 + "}", "is not usable JSON"),
    ],
)
def test_jsonl_bad_line_names_the_line(tmp_path: Path, line: str, message: str) -> None:
    p = tmp_path / "mine.jsonl"
    p.write_text(GOOD + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        JSONLDataset(p)
    assert "mine.jsonl:2:" in str(err.value) and message in str(err.value)


def test_jsonl_non_utf8_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "mine.jsonl"
    p.write_bytes(GOOD.encode() + b'\n\n{"question": "caf\xe9?", "answer": 1}\n')
    with pytest.raises(ConfigError, match=r"mine\.jsonl:3: not valid UTF-8 \(byte 0xe9 at column 18\)"):
        JSONLDataset(p)


def test_jsonl_good_files_load(tmp_path: Path) -> None:
    p = tmp_path / "ok.jsonl"
    rows = [
        {"question": "2 + 2?", "answer": 4, "id": 7},
        {"question": "Half of 3?", "answer": 1.5, "id": "h"},
        {"question": "Big?", "answer": "1e999"},  # a string gold is kept as text
        {"question": "Nested ok?", "answer": "-3", "meta": {"tags": [["a"]]}},
    ]
    p.write_bytes(b"\xef\xbb\xbf" + "\n".join(json.dumps(r) for r in rows).encode() + b"\r\n")
    items = JSONLDataset(p).items()
    assert [it.id for it in items] == ["7", "h", "jsonl:ok:2", "jsonl:ok:3"]
    assert [it.answer for it in items[:2]] == ["4", "1.5"]
    assert load_dataset(f"jsonl:{p}").items(1)[0].question == "2 + 2?"


def test_jsonl_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="a directory, not a JSONL file"):
        load_dataset(f"jsonl:{tmp_path}")
    with pytest.raises(ConfigError, match="needs a file path"):
        load_dataset("jsonl:")
    with pytest.raises(ConfigError, match="no JSONL file at"):
        load_dataset(f"jsonl:{tmp_path / 'absent.jsonl'}")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("gsm_symbolic:seed=abc", "seed must be an integer, got 'abc'"),
        ("gsm_symbolic:seed=", "seed must be an integer, got ''"),
        ("gsm_symbolic:seed=1.5", "seed must be an integer, got 1.5"),
        ("gsm_symbolic:seed=true", "seed must be an integer, got True"),
        ("chain_sum:size=abc", "size must be an integer"),
        ("chain_sum:size=nan", "size must be an integer, got 'nan'"),
        ("chain_sum:size=1e12", "size must be an integer"),
        ("chain_sum:size=1000000000", "size must be at most 10000000"),
        ("gsm_symbolic:bogus=1", "it takes seed, size"),
        ("chain_sum:bogus=1", "reasoning_gym 'chain_sum' has no option 'bogus'; its options: min_terms: int"),
        ("rg:gcd:min_value=abc", "option min_value must be int, got 'abc'"),
        ("chain_sum:allow_negation=3", "option allow_negation must be bool"),
        ("basic_arithmetic:max_terms=99999999999999999999", "option max_terms must be at most 1000"),
        ("chain_sum:min_terms=9", "bad config for reasoning_gym 'chain_sum'"),
        ("rg:no_such_family", "reasoning_gym has no dataset 'no_such_family'"),
        ("gsm8k", "unknown dataset 'gsm8k'; valid names: gsm_symbolic"),
        ("gsm_symbolic:seed", "write key=value"),
    ],
)
def test_bad_dataset_specs(name: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_dataset(name)
    assert message in str(err.value)


def test_good_dataset_specs_and_bad_arguments() -> None:
    ds = load_dataset("chain_sum:seed=3,size=5,min_terms=2,max_terms=3,allow_negation=false")
    assert len(ds.items()) == 5 and ds.items(1)[0].id.startswith("chain_sum:")
    assert load_dataset("chain_sum:seed=-1", size=2).items(1)[0].id == "chain_sum:seed=-1:0"
    with pytest.raises(ConfigError, match="a dataset name is a string"):
        load_dataset(5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="limit must be an integer"):
        ds.items(limit="3")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="offset must be an integer"):
        ds.items(offset=1.5)  # type: ignore[arg-type]


# ---------------------------------------------------------------- run fingerprint


class Counting:
    """The tiny backend, counting the items it is asked to generate."""

    def __init__(self, inner):
        self.inner, self.items = inner, 0

    model_id = property(lambda self: self.inner.model_id)
    num_layers = property(lambda self: self.inner.num_layers)
    capabilities = property(lambda self: self.inner.capabilities)
    limits = property(lambda self: self.inner.limits)

    def generate_many(self, reqs):
        self.items += len(reqs)
        return self.inner.generate_many(reqs)


def _rows(*questions: str) -> str:
    return "".join(json.dumps({"question": q, "answer": i}) + "\n" for i, q in enumerate(questions))


def _run(be, data: Path, out: Path, limit: int = 2):
    cfg = RunConfig(
        dataset=f"jsonl:{data}",
        model_id=be.model_id,
        num_layers=be.num_layers,
        limit=limit,
        n=1,
        max_new_tokens=2,
        logprobs=0,
        methods=[],
        gen_methods=[],
        batch_items=2,
    )
    return run_eval(be, cfg, out, show_progress=False)


@pytest.fixture()
def fresh_run(tiny_backend, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(_rows("hello w1", "hello w2", "hello w3"), encoding="utf-8")
    out = tmp_path / "run"
    _run(tiny_backend, data, out)
    return data, out


def test_run_records_the_items_hash_and_resumes_unchanged(fresh_run, tiny_backend):
    data, out = fresh_run
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["items_hashed"] == 2 and len(cfg["items_sha256"]) == 64
    be = Counting(tiny_backend)
    assert len(_run(be, data, out).samples) == 2 and be.items == 0  # nothing generated again
    # rows beyond the run's items may change: the run's items did not
    data.write_text(_rows("hello w1", "hello w2", "something else", "and more"), encoding="utf-8")
    assert len(_run(be, data, out).samples) == 2 and be.items == 0
    # a larger limit extends the run and the record
    assert len(_run(be, data, out, limit=3).samples) == 3 and be.items == 1
    assert json.loads((out / "config.json").read_text())["items_hashed"] == 3


def test_resume_after_the_jsonl_changed_is_refused(fresh_run, tiny_backend):
    data, out = fresh_run
    data.write_text(_rows("hello w1", "hello w9", "hello w3"), encoding="utf-8")
    be = Counting(tiny_backend)
    with pytest.raises(ConfigError) as err:
        _run(be, data, out)
    msg = str(err.value)
    assert f"the dataset 'jsonl:{data}' changed since the run in {out} started" in msg
    assert "item 'jsonl:data:1' has another question (stored 'hello w2', now 'hello w9')" in msg
    assert "new --out folder" in msg and f"delete {out}" in msg
    assert be.items == 0
    # a smaller limit does not get around it: the stored items are checked
    with pytest.raises(ConfigError, match="changed since the run"):
        _run(be, data, out, limit=1)
    # another gold answer, and fewer items than the run had
    data.write_text(_rows("hello w1", "hello w2", "hello w3").replace('"answer": 1', '"answer": 5'), encoding="utf-8")
    with pytest.raises(ConfigError, match="has another gold answer"):
        _run(be, data, out)
    data.write_text(_rows("hello w1"), encoding="utf-8")
    with pytest.raises(ConfigError, match="it gave 2 items from offset 0, it now gives 1"):
        _run(be, data, out)
    data.write_text(_rows("hello w1", "hello w2"), encoding="utf-8")  # restored: resumes
    assert len(_run(be, data, out).samples) == 2 and be.items == 0


def test_old_run_folders_without_the_hash_resume_and_record_it(fresh_run, tiny_backend):
    data, out = fresh_run
    cfg = json.loads((out / "config.json").read_text())
    for key in ("items_hashed", "items_sha256"):
        del cfg[key]
    (out / "config.json").write_text(json.dumps(cfg))
    be = Counting(tiny_backend)
    assert len(_run(be, data, out).samples) == 2 and be.items == 0
    assert json.loads((out / "config.json").read_text())["items_hashed"] == 2
    # an old folder whose data changed: the stored questions give it away
    del cfg["created_at"]
    (out / "config.json").write_text(json.dumps(cfg))
    data.write_text(_rows("hello w7", "hello w2"), encoding="utf-8")
    with pytest.raises(ConfigError, match="item 'jsonl:data:0' has another question"):
        _run(be, data, out)


def test_run_folder_paths(fresh_run, tiny_backend, tmp_path):
    data, out = fresh_run
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a run folder"):
        _run(tiny_backend, data, afile)
    (out / "config.json").write_text('{"dataset": 3}')
    with pytest.raises(ConfigError, match="is not a valid run config"):
        load_run(out)
    with pytest.raises(ConfigError, match="is not a valid run config"):
        _run(tiny_backend, data, out)
    with pytest.raises(ConfigError, match="not an evaluation run"):
        load_run(afile)
    assert pass_path(out, "samples").is_file()  # nothing was deleted


# ---------------------------------------------------------------- path helpers and the CLI


def test_path_helpers(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_text("line\n", encoding="utf-8")
    assert read_text_file(f, "--prompts file") == "line\n"
    assert check_output_file(tmp_path / "new" / "x.png", "--out", (".png",)) == tmp_path / "new" / "x.png"
    assert check_output_dir(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    with pytest.raises(ConfigError, match="--out .* is a directory"):
        check_output_file(tmp_path, "--out")
    with pytest.raises(ConfigError, match="extension must be one of .png"):
        check_output_file(tmp_path / "x.bogusext", "--out", (".png",))
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_output_file(f / "x.png", "--out")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_output_dir(f, "--out")
    with pytest.raises(ConfigError, match="is a directory"):
        read_text_file(tmp_path, "--prompts file")
    with pytest.raises(ConfigError, match="does not exist"):
        read_text_file(tmp_path / "absent", "--prompts file")
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(ConfigError, match="not writable"):
                check_output_file(ro / "x.png", "--out")
        finally:
            ro.chmod(0o700)


def _cli(args: list[str]):
    from typer.testing import CliRunner

    from l2reason.cli import app

    res = CliRunner().invoke(app, args)
    return res.exit_code, " ".join(res.output.split()), res.exception


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "latin1.txt").write_bytes(b"first prompt\ncaf\xe9?\n")
    (tmp_path / "latin1.jsonl").write_bytes(GOOD.encode() + b'\n{"question": "caf\xe9?", "answer": 1}\n')
    return tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["eval", "-d", "chain_sum", "--out", "{d}/afile"], "--out {d}/afile is a file, not a folder"),
        (["eval", "-d", "gsm_symbolic:seed=abc"], "seed must be an integer, got 'abc'"),
        (["eval", "-d", "jsonl:{d}/latin1.jsonl"], "latin1.jsonl:2: not valid UTF-8"),
        (["eval", "-d", "jsonl:{d}"], "a directory, not a JSONL file"),
        (["report", "{d}/afile"], "is a file; give the run folder"),
        (["report", "{d}"], "is not an evaluation run"),
        (["calibrate", "--prompts", "{d}/latin1.txt"], "is not UTF-8 text (byte 0xe9 on line 2)"),
        (["calibrate", "--prompts", "{d}"], "--prompts file {d} is a directory"),
        (["calibrate", "--out", "{d}"], "--out {d} is a directory"),
        (["calibrate", "--out", "{d}/afile/cal.json"], "{d}/afile is a file, not a folder"),
        (["trace", "q", "-o", "{d}"], "--out {d} is a directory"),
        (["trace", "q", "-o", "{d}/x.bogusext"], "the extension must be one of .png, .svg, .pdf"),
        (["trace", "q", "-o", "{d}/x.png", "--html", "{d}"], "--html {d} is a directory"),
        (["demo", "--out", "{d}/afile"], "is a file, not a folder"),
    ],
)
def test_cli_file_mistakes_are_errors_before_the_model_loads(files: Path, monkeypatch, args, message) -> None:
    import l2reason.backends.shared as shared

    def no_model(*a, **k):
        raise AssertionError("the model must not load for a file mistake")

    monkeypatch.setattr(shared, "make_backend", no_model)
    code, out, exc = _cli([a.format(d=files) for a in args])
    assert code == 2, (out, exc)
    assert out.startswith("error:") and message.format(d=files) in out


def test_cli_corrupt_calibration_with_l2_auto(tiny_backend, tmp_path: Path, monkeypatch) -> None:
    import l2reason.backends.shared as shared
    from l2reason.signal.calibration import default_calibration_path

    monkeypatch.setenv("L2REASON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tiny_backend, "_calibration", None)
    monkeypatch.setattr(shared, "make_backend", lambda model: tiny_backend)
    path = default_calibration_path(tiny_backend.model_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"schema_version": 1, "tau": [', encoding="utf-8")
    run = tmp_path / "run"
    args = ["eval", "-d", "chain_sum", "--limit", "1", "-n", "1", "-t", "2", "--gen-methods", "none"]
    code, out, exc = _cli([*args, "--methods", "majority,l2-auto", "--out", str(run), "--no-report"])
    assert code == 2, (out, exc)
    assert "error: calibration file" in out and "is not valid JSON" in out
    assert not run.exists()  # refused before the run folder was written
    fit_calibration(
        {1: torch.arange(1.0, 21.0)}, model_id=tiny_backend.model_id, num_layers=4, hidden_size=32, n_prompts=1
    ).save(path)
    code, out, exc = _cli([*args, "--methods", "majority,l2-auto", "--out", str(run), "--no-report"])
    assert code == 0, (out, exc)  # a valid file passes (no selection in it: l2-auto is not reported)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[1, 2]", "is not a JSON object {layer: [floats]} (a JSON list, not an object)"),
        (b'{"x": [1.0]}', "is not a JSON object {layer: [floats]} (invalid literal for int()"),
        (b"{", "is not a JSON object {layer: [floats]}"),
        (b"\xff", "is not UTF-8 text (byte 0xff on line 1)"),
        (b"[" * 100_000, "is not a JSON object"),
    ],
)
def test_static_steer_vectors_file(tmp_path: Path, raw: bytes, message: str) -> None:
    from l2reason.eval.methods import generation_config

    path = tmp_path / "v.json"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as err:
        generation_config(f"static-steer:vectors={path}")
    assert message in str(err.value)
    path.write_text('{"1": [1.0, 2.0]}')
    assert generation_config(f"static-steer:vectors={path}").interventions[0]["vectors"] == {1: [1.0, 2.0]}


# ---------------------------------------------------------------- issue 28: checked where the input comes in


def test_calibration_argument_that_is_not_a_path(tiny) -> None:
    from l2reason.backends.hf import HFBackend

    with pytest.raises(CalibrationError, match="a calibration is a Calibration or the path of its JSON file, got int"):
        _ = HFBackend(tiny, calibration=5).calibration


def test_cli_l2_auto_with_a_selection_l2_auto_cannot_use(tiny_backend, tmp_path: Path, monkeypatch) -> None:
    """A file whose selection names layers the model lacks (or a direction there is not) fails as it loads, so
    ``eval --methods l2-auto`` stops before the run folder is written instead of storing the section."""
    import l2reason.backends.shared as shared
    from l2reason.signal.calibration import default_calibration_path

    monkeypatch.setenv("L2REASON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tiny_backend, "_calibration", None)
    monkeypatch.setattr(shared, "make_backend", lambda model: tiny_backend)
    path = default_calibration_path(tiny_backend.model_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    cal = fit_calibration(
        {1: torch.arange(1.0, 21.0)}, model_id=tiny_backend.model_id, num_layers=4, hidden_size=32, n_prompts=1
    )
    run = tmp_path / "run"
    args = ["eval", "-d", "chain_sum", "--limit", "1", "-n", "1", "-t", "2", "--gen-methods", "none"]
    for sel, message in (
        ({"layers": [99], "score": "B/T"}, "layers [99] are outside 0..3"),
        ({"layers": [1], "score": "B/T", "direction": "sideways"}, "direction must be one of high, low"),
        ({"score": "B/T"}, "has no 'layers'"),
    ):
        data = cal.model_dump()
        data["selection"] = sel
        path.write_text(json.dumps(data), encoding="utf-8")
        code, out, exc = _cli([*args, "--methods", "majority,l2-auto", "--out", str(run), "--no-report"])
        assert code == 2, (out, exc)
        assert "error: calibration file" in out and message in out
        assert not run.exists()


def test_generation_method_the_model_lacks_fails_before_sampling(fresh_run, tiny_backend, tmp_path) -> None:
    data, _ = fresh_run
    be = Counting(tiny_backend)
    cfg = RunConfig(
        dataset=f"jsonl:{data}", model_id=be.model_id, num_layers=be.num_layers, limit=2, n=2, max_new_tokens=2,
        logprobs=0, methods=[], gen_methods=["greedy", "alrr:layers=[99]"],
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"generation method 'alrr:layers=\[99\]': .*layer"):
        run_eval(be, cfg, tmp_path / "gen-run", show_progress=False)
    assert be.items == 0 and not (tmp_path / "gen-run").exists()


def test_a_results_line_this_run_did_not_write_is_refused(fresh_run, tiny_backend) -> None:
    data, out = fresh_run
    lines = pass_path(out, "samples").read_text().splitlines()
    foreign = json.loads(lines[0])
    foreign["item_id"] = "another-run:7"
    pass_path(out, "samples").write_text("\n".join([*lines, json.dumps(foreign)]) + "\n")
    with pytest.raises(ConfigError, match=r"holds a result for item 'another-run:7', which is not among the run's"):
        _run(tiny_backend, data, out)
    foreign = {**json.loads(lines[0]), "index": 5}
    pass_path(out, "samples").write_text("\n".join([*lines, json.dumps(foreign)]) + "\n")
    with pytest.raises(ConfigError, match=r"at index 5; the dataset has it at 0"):
        _run(tiny_backend, data, out)
    pass_path(out, "samples").write_text("\n".join([*lines, lines[0][:40]]) + "\n")  # a torn line: redone
    assert len(_run(tiny_backend, data, out).samples) == 2
