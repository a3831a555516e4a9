"""The teacher cache for a training split streamed from disk: a directory of memory-mapped ``.npy`` files
written in one pass, rows equal to the in-memory ``.npz`` cache's, refused when incomplete or stale."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

import distill.cache as cache_module  # noqa: E402
from distill.cache import (  # noqa: E402
    CachedTeacher,
    CacheError,
    build_cache,
    build_stream_cache,
    cache_size_bytes,
    load_cache,
    save_cache,
    stream_checksum,
)
from distill.cli import main  # noqa: E402
from distill.config import OptimizerConfig, TrainConfig  # noqa: E402
from distill.data.streaming import FileOptions, load_file_splits  # noqa: E402
from distill.engine import fit  # noqa: E402
from distill.models import create_model  # noqa: E402
from distill.objectives import KnowledgeDistillation  # noqa: E402


def make_tree(root: Path, per_class: int = 10, classes: int = 3, size: int = 8) -> Path:
    """``root/c<k>/<i>.png``: seeded random RGB images whose brightness depends on the class."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (rng.random((size, size, 3)) * 80 + 60 * c).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i:03d}.png")
    return root


def splits(tree: Path, stream: bool):
    return load_file_splits("imagefolder", str(tree), FileOptions(stream=stream, num_workers=0))[0]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree"))


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return create_model("mlp", 3, (3, 8, 8), hidden=[16]).eval()


@pytest.mark.parametrize("topk", [None, 2])
def test_the_directory_cache_holds_the_npz_cache_s_rows_memory_mapped(tree, teacher, tmp_path, topk):
    memory, streamed = splits(tree, False), splits(tree, True)
    assert streamed.stream is not None and memory.stream is None
    options = dict(topk=topk, temperature=4.0 if topk else None, batch_size=8)
    save_cache(tmp_path / "c.npz", build_cache(teacher, memory, **options))
    npz = load_cache(tmp_path / "c.npz", data=memory, teacher=teacher)
    built = build_stream_cache(tmp_path / "c", teacher, streamed, **options)
    names = ["logits"] if topk is None else ["indices", "log_probs"]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted(
        [f"{n}.npy" for n in names] + ["meta.json", "test_predictions.npy"])
    mapped = load_cache(tmp_path / "c", data=streamed, teacher=teacher, views=npz.views)
    for cache in (built, mapped):
        assert sorted(cache.mapped) == names
        for name in names:  # mapped, not read: the tensors are views of the maps
            array = cache.mapped[name]
            assert isinstance(array, np.memmap)
            assert getattr(cache, name).data_ptr() == array.ctypes.data
            assert np.array_equal(array.astype(np.int64) if name == "indices" else array,
                                  getattr(npz, name).numpy())
        assert cache.mapped.get("indices", np.zeros(0, np.uint8)).dtype == np.uint8
        assert torch.equal(cache.test_predictions, npz.test_predictions)
        assert {**cache.test, "checksum": None} == {**npz.test, "checksum": None}  # the same teacher metrics
        assert cache.test["checksum"] == streamed.test.stream.checksum()  # a streamed test split: its files
        assert (cache.kind, cache.k, cache.n, cache.temperature) == (npz.kind, npz.k, 24, npz.temperature)
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["data_checksum"] == stream_checksum(streamed) and meta["data"]["unreadable_rows"] == 0
    assert meta["checksums"] == {k: cache_module._array_sha256(np.load(tmp_path / "c" / f"{k}.npy"))
                                 for k in [*names, "test_predictions"]}
    assert cache_size_bytes(tmp_path / "c") == sum(p.stat().st_size for p in (tmp_path / "c").iterdir())

    index = torch.tensor([5, 0, 23, 5])  # a cached teacher gathers the same rows from either
    a, b = CachedTeacher(npz)(torch.zeros(4, 1), index), CachedTeacher(mapped)(torch.zeros(4, 1), index)
    if topk is None:
        assert torch.equal(a.logits, b.logits) and b.logits.dtype == torch.float32
    else:
        assert torch.equal(a.topk.indices, b.topk.indices) and b.topk.indices.dtype == torch.int64
        assert torch.equal(a.topk.log_probs, b.topk.log_probs)
    with pytest.raises(CacheError, match="training-set position 24 is outside the teacher cache's 24 rows"):
        CachedTeacher(mapped)(torch.zeros(1, 1), torch.tensor([24]))


def test_distilling_from_the_directory_cache_on_the_stream_equals_the_npz_cache_in_memory(tree, teacher, tmp_path):
    memory, streamed = splits(tree, False), splits(tree, True)
    save_cache(tmp_path / "c.npz", build_cache(teacher, memory, batch_size=8))
    build_stream_cache(tmp_path / "c", teacher, streamed, batch_size=8)
    cfg = TrainConfig(epochs=2, batch_size=8, optimizer=OptimizerConfig(lr=0.05), log_every=1000)

    def distil(data, cache):
        torch.manual_seed(4)
        student = create_model("mlp", 3, (3, 8, 8), hidden=[8])
        batches = data.stream.batches(cfg.batch_size, torch.device("cpu"), 3) if data.stream is not None else None
        fit(student, KnowledgeDistillation(4.0, 0.9), data, cfg, teacher=CachedTeacher(cache),
            seed=3, progress=None, batches=batches)
        return student.state_dict()

    want = distil(memory, load_cache(tmp_path / "c.npz", data=memory))
    mapped = load_cache(tmp_path / "c", data=streamed)
    with pytest.raises(CacheError, match="does not match this run's data"):  # a stream's checksum is of its files
        load_cache(tmp_path / "c", data=memory)
    for data in (streamed, memory):  # the mapped rows, on the streamed batches and on the in-memory ones
        got = distil(data, mapped)
        for name, value in want.items():
            assert torch.equal(got[name], value), name


def test_a_killed_build_is_refused_as_incomplete(tree, teacher, tmp_path, monkeypatch):
    streamed = splits(tree, True)
    build_stream_cache(tmp_path / "c", teacher, streamed, batch_size=8)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "write_atomic", killed)
    with pytest.raises(KeyboardInterrupt):  # a rebuild over a complete cache, killed before its meta.json
        build_stream_cache(tmp_path / "c", teacher, streamed, batch_size=8, topk=2, temperature=2.0)
    assert (tmp_path / "c" / "indices.npy").exists() and not (tmp_path / "c" / "meta.json").exists()
    with pytest.raises(CacheError, match=r"teacher cache .*c is incomplete: the directory has no meta.json, which "
                                         r"its build writes last \(the build was interrupted"):
        load_cache(tmp_path / "c")
    monkeypatch.undo()
    build_stream_cache(tmp_path / "c", teacher, streamed, batch_size=8)
    (tmp_path / "c" / "logits.npy").write_bytes((tmp_path / "c" / "logits.npy").read_bytes()[:200])
    with pytest.raises(CacheError, match=r"is damaged: logits.npy cannot be read"):
        load_cache(tmp_path / "c")


def test_a_directory_cache_of_other_files_or_another_teacher_is_refused(tree, teacher, tmp_path):
    streamed = splits(tree, True)
    build_stream_cache(tmp_path / "c", teacher, streamed, batch_size=8)
    other = make_tree(tmp_path / "other", per_class=10)
    edited = other / "c0" / "000.png"  # the same file names, one file of another size
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(edited)
    with pytest.raises(CacheError, match=r"does not match this run's data \(a different dataset/split/normalization\)"
                                         r": its training set has 24 rows"):
        load_cache(tmp_path / "c", data=splits(other, True))
    torch.manual_seed(1)
    with pytest.raises(CacheError, match=r"does not match this run's teacher \(a different teacher: its weights"):
        load_cache(tmp_path / "c", teacher=create_model("mlp", 3, (3, 8, 8), hidden=[16]))
    with pytest.raises(CacheError, match=r"does not match this run's views"):
        load_cache(tmp_path / "c", views={"mode": "fix/ic", "size": [8, 8]})


@pytest.mark.slow
def test_the_cache_recipe_on_a_streamed_folder_then_distil_from_it(tree, tmp_path):
    common = ["--set", f"data.path={tree}", "--set", "data.stream=true", "--set", "data.num_workers=0",
              "--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "report.latency=false",
              "--set", f"distill.cache.path={tmp_path / 'cache'}"]
    assert main(["demo", "--output-dir", str(tmp_path), "--name", "c", "--set", "recipe=cache", *common]) == 0
    built = json.loads((tmp_path / "c" / "results.json").read_text())["teacher_cache"]
    assert (tmp_path / "cache" / "meta.json").exists() and built["rows"] == 24
    assert built["train_top1_agreement"] is None
    assert built["size_bytes"] == cache_size_bytes(tmp_path / "cache")
    assert main(["demo", "--output-dir", str(tmp_path), "--name", "d", "--set", "recipe=distill", *common]) == 0
    used = json.loads((tmp_path / "d" / "results.json").read_text())["teacher_cache"]
    assert not used["built_by_this_run"] and used["created"] == built["created"]
