"""Image files from disk: scanning (folder, manifest), decoding, the in-memory and streamed paths, exact
order, mid-epoch resume, per-rank sharding, unreadable files, and a run on a folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from distill import distributed  # noqa: E402
from distill.cli import main  # noqa: E402
from distill.data import streaming  # noqa: E402
from distill.data.batches import BatchSource, TensorBatches  # noqa: E402
from distill.data.sources import CorruptDataError, load_dataset  # noqa: E402
from distill.data.sources.files import file_kind, scan_splits  # noqa: E402
from distill.data.streaming import FileOptions, load_file_splits  # noqa: E402

CPU = torch.device("cpu")


def make_tree(root: Path, per_class: int = 10, classes: int = 3, size: int = 8, mode: str = "RGB") -> Path:
    """``root/c<k>/<i>.png``: seeded random images whose mean brightness depends on the class."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            Image.fromarray((rng.random(shape) * 80 + 60 * c).astype(np.uint8)).save(root / f"c{c}" / f"{i:03d}.png")
    return root


def batches_of(source: BatchSource, epoch: int, start: int = 0) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(t.clone() for t in b) for b in source.epoch(epoch, start)]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree"))


def test_scan_reports_classes_counts_and_skipped_files(tmp_path):
    root = make_tree(tmp_path / "t", per_class=4)
    (root / "c1" / "readme.txt").write_text("not an image")
    found = scan_splits("imagefolder", root)
    assert found.class_names == ("c0", "c1", "c2")
    assert found.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert found.train.paths[0] == str(root / "c0" / "000.png")
    assert (found.skipped, found.skipped_examples) == (1, (str(root / "c1" / "readme.txt"),))
    assert found.report() == (f"imagefolder at {root}: train 12 images; train per class c0: 4, c1: 4, c2: 4; "
                              f"skipped 1 entries that are not labelled images, e.g. {root / 'c1' / 'readme.txt'}")


def test_manifests_csv_and_jsonl_list_the_same_files(tmp_path, tree):
    folder = scan_splits("imagefolder", tree)
    rows = [(p, folder.class_names[int(y)]) for p, y in zip(folder.train.paths, folder.train.labels)]
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"{Path(p).relative_to(tree)},{y}\n" for p, y in rows))
    for p in tree.iterdir():
        (tmp_path / p.name).symlink_to(p)
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"path": p, "label": y}) + "\n" for p, y in rows))
    for name in ("m.csv", "m.jsonl"):
        found = scan_splits("manifest", tmp_path / name)
        assert found.class_names == folder.class_names
        assert [Path(p).resolve() for p in found.train.paths] == [Path(p).resolve() for p in folder.train.paths]
        assert torch.equal(found.train.labels, folder.train.labels)
    (tmp_path / "bad.csv").write_text("file,class\nx.png,0\n")
    with pytest.raises(CorruptDataError, match="must name the columns path and label"):
        scan_splits("manifest", tmp_path / "bad.csv")


def test_a_dataset_is_detected_from_its_path_or_named(tmp_path, tree):
    (tmp_path / "m.csv").write_text("path,label\n")
    assert file_kind("digits", str(tree)) == "imagefolder"  # the default name reads no files: the path decides
    assert file_kind("digits", str(tmp_path / "m.csv")) == "manifest"
    assert file_kind("imagefolder", None) == "imagefolder"
    assert file_kind("digits", None) is None
    assert file_kind("mnist", str(tree)) is None  # a named dataset stays that dataset


def test_split_folders_become_the_splits(tmp_path):
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        make_tree(tmp_path / "d" / split, per_class=n)
    data, _ = load_file_splits("imagefolder", str(tmp_path / "d"), FileOptions(num_workers=0))
    assert (len(data.train), len(data.val), len(data.test)) == (18, 6, 9)
    (tmp_path / "d" / "test").rename(tmp_path / "gone")  # val/ alone is the test split; validation is carved
    data, _ = load_file_splits("imagefolder", str(tmp_path / "d"), FileOptions(num_workers=0), val_size=3)
    assert (len(data.train), len(data.val), len(data.test)) == (15, 3, 6)
    raw = load_dataset("imagefolder", tmp_path / "d")
    assert (tuple(raw.train_x.shape), tuple(raw.test_x.shape), raw.class_names) == ((18, 3, 8, 8), (6, 3, 8, 8),
                                                                                     ("c0", "c1", "c2"))


def test_resize_and_channels_follow_the_settings(tree):
    data, _ = load_file_splits("imagefolder", str(tree), FileOptions(image_size=(6, 5), channels=1, num_workers=0))
    assert data.in_shape == (1, 6, 5)
    assert data.summary() == "imagefolder: 24 train / 3 val / 3 test, 3 classes, input (1, 6, 5)"


def test_a_batch_leaves_a_worker_as_one_tensor_with_its_indices_as_an_array(tree):
    files = scan_splits("imagefolder", tree).train
    images = streaming.DecodedImages(files.paths, (8, 8), 3)
    x, index, failed = streaming.collate([images[2], images[0]])
    assert isinstance(index, np.ndarray) and index.dtype == np.int64 and index.tolist() == [2, 0]
    assert x.dtype == torch.uint8 and x.shape == (2, 3, 8, 8) and failed == []
    assert x.is_contiguous()  # stacked (B, C, H, W) in the worker, though each RGB image decodes as (H, W, C)
    assert not np.stack([images[2][0], images[0][0]]).flags["C_CONTIGUOUS"]
    [(got_x, got_index, got_failed)] = list(streaming.received([(x, index, failed)]))
    assert got_index.dtype == torch.long and got_index.tolist() == [2, 0]
    assert torch.equal(got_x, torch.from_numpy(np.stack([images[2][0], images[0][0]])))
    assert got_failed == []



def test_normalizing_in_place_gives_the_formula_s_values_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    gray = torch.randint(0, 256, (5, 1, 7, 6), dtype=torch.uint8, generator=g)
    rgb_hwc = torch.randint(0, 256, (5, 7, 6, 3), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2)
    for x, mean, std in ((gray, torch.tensor([0.2861]), torch.tensor([0.3530])),
                         (rgb_hwc, torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225]))):
        before = x.clone()
        got = streaming.normalize_batch(x, mean, std)
        shape = (1, -1, 1, 1)
        want = ((x.float() / 255 - mean.view(shape)) / std.view(shape)).contiguous()
        assert got.dtype == torch.float32 and got.is_contiguous() and got.shape == want.shape
        assert torch.equal(got.view(torch.int32), want.view(torch.int32))  # the same bits
        assert torch.equal(x, before)
def test_streamed_batches_equal_the_in_memory_ones_and_repeat_with_the_seed(tree):
    memory, _ = load_file_splits("imagefolder", str(tree), FileOptions(stream=False, num_workers=0))
    streamed, _ = load_file_splits("imagefolder", str(tree), FileOptions(stream=True, num_workers=2))
    assert memory.stream is None and streamed.stream is not None
    assert streamed.train.x.device.type == "meta" and torch.equal(streamed.train.y, memory.train.y)
    assert torch.equal(streamed.mean, memory.mean) and torch.equal(streamed.std, memory.std)
    assert streamed.val.x.device.type == streamed.test.x.device.type == "meta"  # read from disk when evaluated
    assert torch.equal(streamed.val.y, memory.val.y) and torch.equal(streamed.test.y, memory.test.y)
    assert torch.equal(streamed.examples(2), memory.examples(2))
    source = streamed.stream.batches(5, CPU, seed=3)
    reference = TensorBatches(memory.train, 5, CPU, seed=3)
    assert len(source) == len(reference) == 4 and source.num_examples == 24
    for epoch in (0, 1):
        got, want = batches_of(source, epoch), batches_of(reference, epoch)
        assert len(got) == 4
        for (x, y, i), (x2, y2, i2) in zip(got, want):
            assert torch.equal(i, i2) and torch.equal(y, y2) and torch.equal(x, x2)
    again = batches_of(streamed.stream.batches(5, CPU, seed=3), 1)
    assert all(torch.equal(a[2], b[2]) and torch.equal(a[0], b[0]) for a, b in zip(again, batches_of(source, 1)))
    other = batches_of(streamed.stream.batches(5, CPU, seed=4), 1)
    assert not all(torch.equal(a[2], b[2]) for a, b in zip(other, again))


def test_streamed_validation_and_test_splits_evaluate_exactly_as_in_memory(tmp_path):
    from distill.engine import evaluate, split_logits
    from distill.engine.evaluation import validate
    from distill.models import create_model
    from distill.recipes.views import student_data
    from distill.views import Views

    root = make_tree(tmp_path / "t", per_class=12)
    memory, _ = load_file_splits("imagefolder", str(root), FileOptions(stream=False, num_workers=0), val_size=7)
    streamed, _ = load_file_splits("imagefolder", str(root), FileOptions(stream=True, num_workers=2), val_size=7)
    torch.manual_seed(0)
    model = create_model("cnn", 3, memory.in_shape, channels=(4, 8))
    for split in ("val", "test"):
        a, b = getattr(memory, split), getattr(streamed, split)
        for batch_size in (3, 1024):
            want, got = evaluate(model, a, batch_size), evaluate(model, b, batch_size)
            assert torch.equal(got.predictions, want.predictions) and torch.equal(got.labels, want.labels)
            assert (got.accuracy, got.errors, got.nll, got.n, got.ece) == (want.accuracy, want.errors, want.nll,
                                                                            want.n, want.ece)
            assert torch.equal(split_logits(model, b, batch_size)[0], split_logits(model, a, batch_size)[0])
        assert validate(model, b, 4, CPU) == validate(model, a, 4, CPU)
        assert torch.equal(evaluate(model, b.rows(2, 6)).predictions, evaluate(model, a.rows(2, 6)).predictions)
    assert streamed.test.stream.checksum() == streamed.test.stream.checksum() != streamed.val.stream.checksum()
    views = Views("same/rc", (8, 8), student_size=(6, 6), padding=0)  # a student at another resolution
    small_memory, small_streamed = student_data(memory, views), student_data(streamed, views)
    assert small_streamed.test.x.shape == small_memory.test.x.shape == (len(memory.test), 3, 6, 6)
    student = create_model("cnn", 3, (3, 6, 6), channels=(4, 8))
    want, got = evaluate(student, small_memory.test), evaluate(student, small_streamed.test)
    assert torch.equal(got.predictions, want.predictions) and got.nll == want.nll


def test_an_unreadable_test_file_is_left_out_of_the_streamed_evaluation(tmp_path):
    from distill.engine import evaluate
    from distill.models import create_model

    root = make_tree(tmp_path / "t", per_class=10)
    (root / "c2" / "007.png").write_bytes(b"garbage")
    options = dict(num_workers=0, max_bad_fraction=0.2)  # 1 of the 6 validation or 9 test files
    memory, _ = load_file_splits("imagefolder", str(root), FileOptions(stream=False, **options), val_size=0.3)
    streamed, bad = load_file_splits("imagefolder", str(root), FileOptions(stream=True, **options), val_size=0.3)
    model = create_model("cnn", 3, memory.in_shape, channels=(4, 8))
    split = next(s for s in ("val", "test") if len(getattr(memory, s)) < len(getattr(streamed, s)))
    want, got = evaluate(model, getattr(memory, split)), evaluate(model, getattr(streamed, split))
    assert got.n == want.n == len(getattr(streamed, split)) - 1
    assert torch.equal(got.predictions, want.predictions) and torch.equal(got.labels, want.labels)
    assert list(bad.found) == [str(root / "c2" / "007.png")]


def split_tree(root: Path, bad_test: int = 1) -> Path:
    """``root/{train,val,test}/c<k>/``: 8, 2 and 3 images per class; the first ``bad_test`` files of test, class
    by class (``c0/000.png``, ``c1/000.png``, ...), garbage."""
    for split, n in (("train", 8), ("val", 2), ("test", 3)):
        make_tree(root / split, per_class=n)
    for i in range(bad_test):
        (root / "test" / f"c{i % 3}" / f"{i // 3:03d}.png").write_bytes(b"garbage")
    return root


def test_a_streamed_split_skips_a_batch_of_bad_files_only_and_records_them_under_its_name(tmp_path):
    from distill.engine import evaluate
    from distill.models import create_model

    root = split_tree(tmp_path / "d")
    options = dict(num_workers=0, max_bad_fraction=0.2)  # 1 of the 9 test files
    memory, _ = load_file_splits("imagefolder", str(root), FileOptions(stream=False, **options))
    streamed, bad = load_file_splits("imagefolder", str(root), FileOptions(stream=True, **options))
    model = create_model("cnn", 3, memory.in_shape, channels=(4, 8))
    want = evaluate(model, memory.test)
    for batch_size in (1, 4, 1024):  # batch_size 1: a batch of the bad file alone, left out
        got = evaluate(model, streamed.test, batch_size)
        assert got.n == want.n == 8 and torch.equal(got.predictions, want.predictions)
    evaluate(model, streamed.val)
    assert (bad.count("train"), bad.count("val"), bad.count("test")) == (0, 0, 1)
    assert bad.record("test")["examples"][0].startswith(f"{root / 'test' / 'c0' / '000.png'} (UnidentifiedImageError")
    assert bad.line("test").startswith(f"skipped 1 unreadable image files in the test split: {root}/test/c0/000.png (")


@pytest.mark.parametrize("batch_size", [1, 1024])
def test_a_streamed_split_none_of_whose_files_decode_is_an_error_naming_it(tmp_path, batch_size):
    from distill.engine import evaluate
    from distill.models import create_model

    root = split_tree(tmp_path / "d", bad_test=9)
    data, _ = load_file_splits("imagefolder", str(root), FileOptions(stream=True, num_workers=0,
                                                                     max_bad_fraction=1.0))
    model = create_model("cnn", 3, data.in_shape, channels=(4, 8))
    with pytest.raises(CorruptDataError, match=rf"^none of the 9 image files of the test split \(under "
                       rf"{root / 'test'}\) could be decoded \(skipped 9 unreadable image files in the test split: "
                       rf"{root / 'test' / 'c0' / '000.png'} \(UnidentifiedImageError.*\): there is nothing to "
                       rf"evaluate. Fix or replace those files \(each must open with Pillow\), or remove them$"):
        evaluate(model, data.test, batch_size)
    with pytest.raises(CorruptDataError, match=r"^none of the 2 image files of rows 3..4 of the test split"):
        evaluate(model, data.test.rows(3, 5), batch_size)
    with pytest.raises(CorruptDataError, match=rf"^none of the 9 image files of the test split \(under "
                       rf"{root / 'test'}\) could be decoded \(skipped 9 unreadable image files in the test split"):
        load_file_splits("imagefolder", str(root), FileOptions(stream=False, num_workers=0, max_bad_fraction=1.0))


def test_too_many_bad_files_read_from_a_streamed_split_is_an_error_naming_it(tmp_path):
    from distill.engine import evaluate
    from distill.models import create_model

    root = split_tree(tmp_path / "d", bad_test=4)  # 4 of the 9 test files (44%), of all 39 files 10%
    data, _ = load_file_splits("imagefolder", str(root), FileOptions(stream=True, num_workers=0,
                                                                     max_bad_fraction=0.4))
    model = create_model("cnn", 3, data.in_shape, channels=(4, 8))
    with pytest.raises(CorruptDataError, match=rf"^reading the test split \(under {re.escape(str(root / 'test'))}\): "
                       r"4 of its 9 image files could not be decoded, more than data.max_bad_fraction=0.4 of the "
                       r"split; first: "):
        evaluate(model, data.test)


def test_validation_and_test_loaders_are_not_persistent_and_training_s_is(tree):
    data, _ = load_file_splits("imagefolder", str(tree), FileOptions(stream=True, num_workers=2))
    for split in (data.val, data.test):
        list(split.stream.batches(2, CPU))
        (loader,) = [s._loader for s in split.stream._pools.values()]
        assert (loader.num_workers, loader.persistent_workers) == (2, False)
    loader = data.stream.batches(4, CPU, seed=0)._loader
    assert (loader.num_workers, loader.persistent_workers) == (2, True)


def test_reading_a_stream_leaves_the_global_rng_alone(tree):
    data, _ = load_file_splits("imagefolder", str(tree), FileOptions(stream=True, num_workers=0))
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    batches_of(data.stream.batches(5, CPU, seed=3), 0)  # a DataLoader iterator drew its base seed from it
    list(data.val.stream.batches(2, CPU))
    assert torch.equal(torch.rand(3), want)  # so dropout draws what it draws on the in-memory path


def test_a_streamed_batch_seen_at_two_resolutions_is_one_crop_resized_twice(tmp_path):
    from distill.views import Views

    root = tmp_path / "pos"  # each pixel says where it is: red = 15 * row, green = 15 * column
    rows, cols = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    image = np.stack([15 * rows, 15 * cols, np.zeros_like(rows)], -1).astype(np.uint8)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(image).save(root / c / f"{i}.png")
    options = dict(num_workers=1)
    streamed, _ = load_file_splits("imagefolder", str(root), FileOptions(stream=True, **options), val_size=0)
    memory, _ = load_file_splits("imagefolder", str(root), FileOptions(stream=False, **options), val_size=0)
    views = Views("same/ic", (16, 16), student_size=(8, 8), scale=(0.1, 0.5))
    x, _, index = next(iter(streamed.stream.batches(8, CPU, seed=0).epoch(0)))
    student, teacher = views(x, generator=torch.Generator().manual_seed(5))
    assert student.shape == (8, 3, 8, 8) and teacher.shape == (8, 3, 16, 16)
    s2, t2 = views(TensorBatches(memory.train, 8, CPU)(index)[0], generator=torch.Generator().manual_seed(5))
    assert torch.equal(student, s2) and torch.equal(teacher, t2)  # what the in-memory path gives
    std = streamed.std.view(3, 1, 1)
    where_s = (student * std).mean((2, 3))[:, :2] * 255 / 15  # mean row and column (in pixels, + a constant)
    where_t = (teacher * std).mean((2, 3))[:, :2] * 255 / 15
    assert float((where_s - where_t).abs().max()) < 0.25  # the same place of the image...
    assert float(where_t[:, 0].max() - where_t[:, 0].min()) > 2  # ...and the crops are not all alike


def test_resume_mid_epoch_gives_the_exact_remaining_batches(tree):
    data, _ = load_file_splits("imagefolder", str(tree), FileOptions(stream=True, num_workers=1))
    source = data.stream.batches(4, CPU, seed=0)
    whole = batches_of(source, 2)
    rest = batches_of(source, 2, start=4)
    assert len(whole) == 6 and len(rest) == 2
    for a, b in zip(rest, whole[4:]):
        assert all(torch.equal(s, t) for s, t in zip(a, b))


def test_two_ranks_take_the_two_halves_of_each_global_batch(tree, monkeypatch):
    data, _ = load_file_splits("imagefolder", str(tree), FileOptions(stream=True, num_workers=0))
    single = batches_of(data.stream.batches(6, CPU, seed=1), 0)
    ranks = []
    for r in (0, 1):
        monkeypatch.setattr(distributed, "world_size", lambda: 2)
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        ranks.append(batches_of(data.stream.batches(6, CPU, seed=1), 0))
    for whole, first, second in zip(single, *ranks):
        for k in range(3):  # x, y, index: rank 0's rows then rank 1's are the one-process batch
            assert torch.equal(torch.cat([first[k], second[k]]), whole[k])


def test_an_unreadable_file_is_skipped_counted_and_named(tmp_path):
    root = make_tree(tmp_path / "t", per_class=10)
    bad = root / "c1" / "005.png"
    bad.write_bytes(b"\x89PNG truncated")
    data, record = load_file_splits("imagefolder", str(root), FileOptions(stream=True, num_workers=1,
                                                                          max_bad_fraction=0.1), val_size=0.1)
    seen = torch.cat([i for _, _, i in data.stream.batches(4, CPU, seed=0).epoch(0)])
    where = [p for p in record.found]
    assert record.record()["count"] == 1 and where == [str(bad)]
    assert record.record()["examples"][0].startswith(f"{bad} (UnidentifiedImageError")
    position = data.stream.files.paths.index(str(bad)) if str(bad) in data.stream.files.paths else None
    assert position is None or position not in seen.tolist()
    lines: list[str] = []
    memory, record = load_file_splits("imagefolder", str(root), FileOptions(stream=False, num_workers=0,
                                                                            max_bad_fraction=0.1), say=lines.append)
    assert len(memory.train) + len(memory.val) + len(memory.test) == 29
    assert lines[-1].startswith(f"imagefolder: skipped 1 unreadable image files: {bad} (")


def test_too_many_bad_files_is_an_error_naming_the_key(tmp_path):
    root = make_tree(tmp_path / "t", per_class=10)
    for name in ("001.png", "002.png"):
        (root / "c0" / name).write_bytes(b"garbage")
    with pytest.raises(CorruptDataError, match=rf"^reading the train split \(under {re.escape(str(root))}\): 2 of "
                       r"its 24 image files could not be decoded, more than data.max_bad_fraction=0.05 of the split; first: "
                       r".*c0/001.png \(UnidentifiedImageError.*Fix or remove them, or raise data.max_bad_fraction$"):
        load_file_splits("imagefolder", str(root), FileOptions(stream=False, num_workers=0, max_bad_fraction=0.05))


@pytest.mark.parametrize("stream", [False, True])
def test_the_bad_fraction_is_per_split_so_a_small_largely_unreadable_validation_split_is_refused(tmp_path, stream):
    from distill.engine import evaluate
    from distill.models import create_model

    root = tmp_path / "d"
    for split, n in (("train", 30), ("val", 2), ("test", 3)):
        make_tree(root / split, per_class=n)
    for c in (0, 1):  # 2 of the 6 validation files (33%), of all 105 files 2%
        (root / "val" / f"c{c}" / "000.png").write_bytes(b"garbage")
    options = FileOptions(stream=stream, num_workers=0, max_bad_fraction=0.25)
    refused = pytest.raises(CorruptDataError, match=(
        rf"^reading the val split \(under {re.escape(str(root / 'val'))}\): 2 of its 6 image files could not be "
        rf"decoded, more than data.max_bad_fraction=0.25 of the split; first: "
        rf"{re.escape(str(root / 'val' / 'c0' / '000.png'))} \(UnidentifiedImageError.*\); "
        rf"{re.escape(str(root / 'val' / 'c1' / '000.png'))} \(UnidentifiedImageError.*\)\. "
        rf"Fix or remove them, or raise data.max_bad_fraction$"))
    if not stream:
        with refused:
            load_file_splits("imagefolder", str(root), options)
    else:
        data, _ = load_file_splits("imagefolder", str(root), options)
        with refused:
            evaluate(create_model("cnn", 3, data.in_shape, channels=(4, 8)), data.val)
    (root / "val" / "c1" / "000.png").write_bytes((root / "val" / "c1" / "001.png").read_bytes())
    data, bad = load_file_splits("imagefolder", str(root), options)  # 1 of 6 (17%): under the limit
    if stream:
        evaluate(create_model("cnn", 3, data.in_shape, channels=(4, 8)), data.val)
    assert (bad.count("train"), bad.count("val"), bad.count("test")) == (0, 1, 0)
    assert bad.sizes == {"train": 90, "val": 6, "test": 9}


def test_auto_streams_above_the_threshold(tree, monkeypatch):
    data, _ = load_file_splits("imagefolder", str(tree), FileOptions(num_workers=0))
    assert data.stream is None
    monkeypatch.setattr(streaming, "STREAM_ABOVE_BYTES", 24 * 3 * 8 * 8 * 4 - 1)
    data, _ = load_file_splits("imagefolder", str(tree), FileOptions(num_workers=0))
    assert data.stream is not None


@pytest.mark.parametrize("stream", [pytest.param("true", marks=pytest.mark.slow), "false"])
def test_a_run_on_a_folder_gives_the_results_table(tree, tmp_path, capsys, stream):
    args = ["demo", "--output-dir", str(tmp_path), "--name", "f", "--set", "recipe=baseline",
            "--set", f"data.path={tree}", "--set", f"data.stream={stream}", "--set", "data.num_workers=0",
            "--set", "student.train.epochs=1", "--set", "student.train.batch_size=8", "--set", "report.latency=false"]
    assert main(args) == 0
    results = json.loads((tmp_path / "f" / "results.json").read_text())
    assert results["data"] == {"name": "imagefolder", "train": 24, "val": 3, "test": 3, "num_classes": 3,
                               "streamed": stream == "true", "bad_files": {"count": 0, "examples": []}}
    assert "baseline" in capsys.readouterr().out


def test_a_streamed_run_counts_and_reports_the_unreadable_test_files(tmp_path, capsys):
    root = split_tree(tmp_path / "d")
    args = ["demo", "--output-dir", str(tmp_path), "--name", "f", "--set", "recipe=baseline",
            "--set", f"data.path={root}", "--set", "data.stream=true", "--set", "data.num_workers=0",
            "--set", "data.max_bad_fraction=0.2", "--set", "student.train.epochs=1",
            "--set", "student.train.batch_size=8", "--set", "report.latency=false"]
    assert main(args) == 0
    results = json.loads((tmp_path / "f" / "results.json").read_text())
    data, bad = results["data"], str(root / "test" / "c0" / "000.png")
    assert (data["train"], data["val"], data["test"], results["models"]["baseline"]["n_test"]) == (24, 6, 8, 8)
    assert data["bad_files"]["count"] == 1 and data["bad_files"]["examples"][0].startswith(f"{bad} (Unidentified")
    assert data["bad_files_by_split"] == {"test": data["bad_files"]}
    assert f"[test] skipped 1 unreadable image files in the test split: {bad} (Unidentified" in capsys.readouterr().err


@pytest.mark.slow
def test_a_streamed_run_reports_what_the_in_memory_run_reports(tree, tmp_path):
    rows, predictions = {}, {}
    for stream in ("true", "false"):
        args = ["demo", "--output-dir", str(tmp_path), "--name", stream, "--set", "recipe=baseline", "--set",
                f"data.path={tree}", "--set", f"data.stream={stream}", "--set", "data.num_workers=1", "--set",
                "student.train.epochs=2", "--set", "student.train.batch_size=8", "--set", "report.latency=false",
                "--quiet"]
        assert main(args) == 0
        row = json.loads((tmp_path / stream / "results.json").read_text())["models"]["baseline"]
        rows[stream] = {k: row[k] for k in ("test_acc", "test_errors", "test_nll", "test_ece", "n_test")}
        predictions[stream] = dict(np.load(tmp_path / stream / "test_predictions.npz"))
    assert rows["true"] == rows["false"]
    assert predictions["true"].keys() == predictions["false"].keys() == {"labels", "baseline"}
    assert all(np.array_equal(predictions["true"][k], predictions["false"][k]) for k in predictions["true"])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["same/ic", "fix/ic_ens"])
def test_a_streamed_distillation_at_two_resolutions_is_the_in_memory_one(tmp_path, mode):
    root = make_tree(tmp_path / "t", per_class=12, size=12)
    results = {}
    for stream in ("true", "false"):
        args = ["demo", "--output-dir", str(tmp_path), "--name", stream, "--set", "recipe=distill", "--set",
                f"data.path={root}", "--set", f"data.stream={stream}", "--set", "data.num_workers=1", "--set",
                "train.epochs=1", "--set", "train.batch_size=8", "--set", "report.latency=false", "--set",
                f"distill.views.mode={mode}", "--set", "distill.views.student_size=8", "--set",
                "distill.views.ensemble_crops=2", "--set", "teacher.train.channels_last=false", "--set",
                "student.train.channels_last=false", "--set", "teacher.model.name=cnn", "--set",
                "teacher.model.hidden=16", "--set", "teacher.model.channels=[4,8]", "--set", "student.model.name=cnn",
                "--set", "student.model.hidden=16", "--set", "student.model.channels=[4,8]", "--quiet"]
        assert main(args) == 0
        rows = json.loads((tmp_path / stream / "results.json").read_text())["models"]
        results[stream] = {tag: (r["test_acc"], r["test_nll"], r["agreement"]) for tag, r in rows.items()}
    assert results["true"] == results["false"]
    assert (tmp_path / "true" / "fixed_view_teacher" / "meta.json").exists() == (mode == "fix/ic_ens")


def test_what_needs_the_whole_split_in_memory_refuses_a_stream(tree, tmp_path, capsys):
    from distill.cache import build_cache

    data, _ = load_file_splits("imagefolder", str(tree), FileOptions(stream=True, num_workers=0))
    with pytest.raises(ValueError, match=r"the teacher cache \(build_cache\) needs the training split in memory, "
                       r"but it is streamed from disk .* set data.stream=false if it fits"):
        build_cache(torch.nn.Flatten(), data)
    args = ["demo", "--output-dir", str(tmp_path), "--name", "c", "--set", "recipe=ensemble", "--set",
            f"data.path={tree}", "--set", "data.stream=true", "--set", "data.num_workers=0"]
    assert main(args) == 1
    assert "recipe 'ensemble' needs the training split in memory" in capsys.readouterr().err


def test_fit_on_a_stream_killed_mid_epoch_resumes_exactly(tmp_path):
    from distill.checkpoint import load_checkpoint
    from distill.config import TrainConfig
    from distill.engine import Callback, fit
    from distill.methods.ce import CrossEntropy
    from distill.models import create_model

    class KillAt(Callback):
        def on_log_step(self, epoch, step, tracker):
            if step == 7:
                raise KeyboardInterrupt

    data, _ = load_file_splits("imagefolder", str(make_tree(tmp_path / "t", per_class=12)),
                               FileOptions(stream=True, num_workers=1))
    c = TrainConfig.model_validate({"epochs": 2, "batch_size": 6, "log_every": 1, "checkpoint_every_steps": 3,
                                    "channels_last": False, "optimizer": {"name": "adamw", "lr": 0.01}})

    def run(out, **kw):
        torch.manual_seed(0)
        model = create_model("cnn", 3, data.in_shape, channels=(4, 8))
        return fit(model, CrossEntropy(), data, c, out_dir=tmp_path / out, seed=3, progress=None,
                   batches=data.stream.batches(6, CPU, 3), **kw)

    straight = run("a")
    with pytest.raises(KeyboardInterrupt):  # 29 images, 4 steps per epoch: killed at step 7, written at step 6
        run("b", callbacks=[KillAt()])
    assert load_checkpoint(tmp_path / "b" / "last.pt")["batch"] == 2
    resumed = run("b", resume=True)
    assert resumed.steps == straight.steps == 8
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def _same_batches(a, b) -> None:
    for (x, y, i), (x2, y2, i2) in zip(a, b, strict=True):
        assert torch.equal(i, i2) and torch.equal(y, y2) and torch.equal(x, x2)


def _folder_batches(tree: Path) -> list[tuple[torch.Tensor, ...]]:
    data, _ = load_file_splits("imagefolder", str(tree), FileOptions(stream=True, num_workers=0), val_size=0)
    return batches_of(data.stream.batches(5, CPU, seed=2), 0)


def test_webdataset_shards_give_the_folder_s_batches(tree, tmp_path):
    import io
    import tarfile

    files = scan_splits("imagefolder", tree).train
    for shard, rows in enumerate((range(0, 13), range(13, len(files)))):
        with tarfile.open(tmp_path / f"shard-{shard}.tar", "w") as tar:
            for i in rows:
                for suffix, payload in ((".png", Path(files.paths[i]).read_bytes()),
                                        (".cls", str(int(files.labels[i])).encode())):
                    info = tarfile.TarInfo(f"{i:05d}{suffix}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    assert file_kind("digits", str(tmp_path)) == "webdataset"
    data, _ = load_file_splits("webdataset", str(tmp_path), FileOptions(stream=True, num_workers=1), val_size=0)
    assert data.class_names == ("0", "1", "2") and len(data.train) == 30
    _same_batches(batches_of(data.stream.batches(5, CPU, seed=2), 0), _folder_batches(tree))


def test_hugging_face_datasets_on_disk_and_parquet_give_the_folder_s_batches(tree, tmp_path):
    datasets = pytest.importorskip("datasets")
    files = scan_splits("imagefolder", tree).train
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["c0", "c1", "c2"])})
    ds = datasets.Dataset.from_dict({"image": [Image.open(p) for p in files.paths],
                                     "label": files.labels.tolist()}, features=features)
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "data.parquet"))
    want = _folder_batches(tree)
    for where in ("saved", "data.parquet"):
        assert file_kind("digits", str(tmp_path / where)) == "hf"
        data, _ = load_file_splits("hf", str(tmp_path / where), FileOptions(stream=True, num_workers=1), val_size=0)
        assert data.class_names == ("c0", "c1", "c2")  # the ClassLabel's names, kept in the Parquet schema too
        _same_batches(batches_of(data.stream.batches(5, CPU, seed=2), 0), want)


@pytest.mark.slow
def test_torchrun_on_a_streamed_folder_matches_one_process(tree, tmp_path):
    """``torchrun --nproc_per_node=2 -m distill run`` on a streamed folder: each rank decodes its half of every
    global batch; the trained weights are one process's (an MLP: no batch norm, no dropout)."""
    import os
    import socket
    import subprocess
    import sys

    import torch.distributed as dist
    import yaml

    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("this torch build has no torch.distributed with gloo")
    cfg = {"name": "s", "recipe": "baseline", "device": "cpu", "seed": 1,
           "data": {"path": str(tree), "stream": True, "num_workers": 0},
           "student": {"model": {"name": "mlp", "hidden": [16]},
                       "train": {"epochs": 2, "batch_size": 8, "log_every": 1000, "channels_last": False}},
           "report": {"latency": False}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_WAIT_POLICY": "PASSIVE", "GLOO_SOCKET_IFNAME": "lo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={port}", "-m", "distill", "run", "cfg.yaml", "--output-dir", "ddp", "--quiet"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert main(["run", str(tmp_path / "cfg.yaml"), "--output-dir", str(tmp_path / "one"), "--quiet"]) == 0
    a = torch.load(tmp_path / "ddp" / "s" / "baseline" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "one" / "s" / "baseline" / "last.pt", weights_only=True)["model"]
    for k, v in b.items():  # float32 sums in another order
        torch.testing.assert_close(a[k], v, rtol=1e-4, atol=1e-5)
