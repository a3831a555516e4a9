"""A teacher cache knows which Hugging Face teacher it came from: a local directory's files (weights, config,
processor) or a hub id's commit; a teacher changed under the same name is refused. Tiny local models only."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("PIL")
os.environ["HF_HUB_OFFLINE"] = "1"

from _hf_tiny import save_tiny  # noqa: E402
from test_imagefolder_kd import CONFIG, _folder  # noqa: E402

from distill.cli import main  # noqa: E402
from distill.models import hf, weights_source  # noqa: E402
from distill.models.hf import hf_weights_source  # noqa: E402


def test_a_local_directory_is_identified_by_its_files(tmp_path):
    a = save_tiny("vit", tmp_path / "a", num_labels=3, seed=0)
    b = save_tiny("vit", tmp_path / "b", num_labels=3, seed=1)
    first = weights_source("hf", {"id": str(a), "pretrained": True, "new_head": False})
    assert first is not None and first.startswith("dir:") and len(first) == 4 + 64
    assert weights_source("hf", {"id": str(a)}) == first  # the same files: the same source
    assert weights_source("hf", {"id": str(b)}) != first  # other weights
    assert weights_source("hf", {"id": str(a), "pretrained": False}) is None  # fresh weights: nothing loaded
    assert weights_source("cnn", {"channels": [4, 8]}) is None  # the zoo's models load nothing
    config = json.loads((a / "config.json").read_text())
    (a / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.5}))
    assert weights_source("hf", {"id": str(a)}) not in (first, None)  # a changed config is seen too


def test_a_directory_is_read_once_per_process_until_a_file_changes(tmp_path, monkeypatch):
    folder = tmp_path / "teacher"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "sub" / "model.safetensors").write_bytes(bytes(range(200)))

    def reference() -> str:  # the fingerprint as recorded before the memo: old caches must still match it
        h = hashlib.sha256()
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(folder).as_posix()}:{f.stat().st_size};".encode() + f.read_bytes())
        return f"dir:{h.hexdigest()}"

    reads = []
    monkeypatch.setattr(hf, "_FOLDER_HASHES", {})
    monkeypatch.setattr(hf, "_hash_files", lambda d, files, read=hf._hash_files: reads.append(d) or read(d, files))
    first = hf_weights_source(str(folder))
    assert first == reference() and hf_weights_source(str(folder)) == first  # a second use reads nothing
    assert hf_weights_source(str(folder / "sub" / "..")) == first and len(reads) == 1  # keyed by the resolved path
    weights = folder / "sub" / "model.safetensors"
    weights.write_bytes(bytes(range(201)))  # another size
    second = hf_weights_source(str(folder))
    assert second == reference() and second != first and len(reads) == 2
    before = weights.stat().st_mtime_ns
    weights.write_bytes(bytes(reversed(range(201))))  # the same size, other bytes, a later mtime
    os.utime(weights, ns=(before + 1000, before + 1000))
    third = hf_weights_source(str(folder))
    assert third == reference() and third not in (first, second) and len(reads) == 3
    assert hf_weights_source(str(folder)) == third and len(reads) == 3


def test_a_hub_id_is_identified_by_its_commit(tmp_path):
    repo = tmp_path / "hub" / "models--someone--tiny-vit"
    for commit in ("a" * 40, "b" * 40):
        save_tiny("vit", repo / "snapshots" / commit, num_labels=3)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    where = str(tmp_path / "hub")
    assert hf_weights_source("someone/tiny-vit", hub_cache=where) == f"hub:someone/tiny-vit@{'a' * 40}"
    (repo / "refs" / "main").write_text("b" * 40)  # the hub's main moved on (seen offline from the local cache)
    assert hf_weights_source("someone/tiny-vit", hub_cache=where) == f"hub:someone/tiny-vit@{'b' * 40}"
    assert hf_weights_source("someone/absent", hub_cache=where) is None  # offline, not cached: unknown


@pytest.mark.slow
def test_a_cache_refuses_a_teacher_changed_in_its_directory(tmp_path, capsys):
    images = _folder(tmp_path / "images")
    teacher = save_tiny("resnet", tmp_path / "teacher", num_labels=3, seed=0)
    cache = tmp_path / "cache.npz"

    def run(name: str, recipe: str) -> int:
        return main(["run", str(CONFIG), "--quiet", "--output-dir", str(tmp_path / "runs"), "--name", name,
                     "--set", f"recipe={recipe}", "--set", f"data.path={images}", "--set", f"teacher.model.id={teacher}",
                     "--set", "device=cpu", "--set", "data.image_size=20", "--set", "data.num_workers=0",
                     "--set", "train.epochs=1", "--set", "report.latency=false", "--set", f"distill.cache.path={cache}",
                     "--set", "student.model={name: cnn, channels: [8, 16], hidden: 16}"])

    assert run("build", "cache") == 0
    meta = json.loads(np.load(cache)["meta"].item())
    assert meta["model_spec"]["source"] == hf_weights_source(str(teacher))  # its directory's files, recorded
    assert run("same", "distill") == 0  # the same teacher: the cache is used
    capsys.readouterr()
    save_tiny("resnet", teacher, num_labels=3, seed=1)  # another teacher saved in its place
    assert run("changed", "distill") == 1
    err = capsys.readouterr().err
    assert "does not match this run's teacher (the same name, " in err
    assert "but other pretrained files: files sha256 " in err and "its weights or config changed" in err
