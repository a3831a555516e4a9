"""Tests of distill.data.sources on small synthetic files (plus the real Debian Fashion-MNIST)."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import distill.data.sources as sources
from distill.data.sources import (
    CorruptDataError,
    DataNotFoundError,
    DownloadSource,
    RawDataset,
    available_datasets,
    canonical_name,
    dataset_search_paths,
    load_dataset,
    sha256sum,
)

IDX_NAMES = sources.IDX_FILES

# --------------------------------------------------------------------------------------------
# fixtures and writers


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Point every lookup location at empty temporary directories: no real files are seen."""
    env = {
        "home": tmp_path / "home",
        "cache": tmp_path / "xdg-cache",
        "debian": tmp_path / "debian",
    }
    for p in env.values():
        p.mkdir()
    monkeypatch.setenv("HOME", str(env["home"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(env["cache"]))
    monkeypatch.delenv("DISTILL_DATA", raising=False)
    monkeypatch.delenv("DISTILL_SYSTEM_DATA", raising=False)
    monkeypatch.setattr(sources.lookup, "DEBIAN_ROOT", env["debian"])
    return env


def write_idx(path: Path, arr: np.ndarray, magic: int, *, gz: bool) -> Path:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_idx_dataset(
    directory: Path,
    *,
    gz: bool,
    seed: int = 0,
    n_train: int = 30,
    n_test: int = 12,
    hw: tuple[int, int] = (5, 4),
) -> dict[str, np.ndarray]:
    """Four small IDX files (non-square images, so H and W cannot be swapped unnoticed)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_x": rng.integers(0, 256, size=(n_train, *hw), dtype=np.uint8),
        "train_y": np.arange(n_train, dtype=np.uint8) % 10,
        "test_x": rng.integers(0, 256, size=(n_test, *hw), dtype=np.uint8),
        "test_y": (np.arange(n_test, dtype=np.uint8) * 3) % 10,
    }
    arrays["train_x"][0, 0, 0], arrays["train_x"][0, 0, 1] = 0, 255  # the extremes
    write_idx(directory / IDX_NAMES[0], arrays["train_x"], 2051, gz=gz)
    write_idx(directory / IDX_NAMES[1], arrays["train_y"], 2049, gz=gz)
    write_idx(directory / IDX_NAMES[2], arrays["test_x"], 2051, gz=gz)
    write_idx(directory / IDX_NAMES[3], arrays["test_y"], 2049, gz=gz)
    return arrays


def assert_matches(ds: RawDataset, arrays: dict[str, np.ndarray]) -> None:
    for split in ("train", "test"):
        x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (arrays[f"{split}_x"].shape[0], 1, *arrays[f"{split}_x"].shape[1:])
        back = (x[:, 0] * 255).round().to(torch.uint8).numpy()
        np.testing.assert_array_equal(back, arrays[f"{split}_x"])
        np.testing.assert_array_equal(y.numpy(), arrays[f"{split}_y"])
    assert float(ds.train_x.min()) == 0.0 and float(ds.train_x.max()) == 1.0


def _py2_str(b: bytes) -> bytes:
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)


def _py2_int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _py2_value(v: object) -> bytes:
    """Pickle opcodes as Python 2's cPickle (protocol 2) writes them, for the types CIFAR uses."""
    if isinstance(v, np.ndarray):
        assert v.dtype == np.uint8 and v.ndim == 2
        dtype = (
            b"cnumpy\ndtype\n"
            + _py2_str(b"u1")
            + _py2_int(0)
            + _py2_int(1)
            + b"\x87R("
            + _py2_int(3)
            + _py2_str(b"|")
            + b"NNN"
            + _py2_int(-1)
            + _py2_int(-1)
            + _py2_int(0)
            + b"tb"
        )
        return (
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
            + _py2_int(0)
            + b"\x85"
            + _py2_str(b"b")
            + b"\x87R("
            + _py2_int(1)
            + _py2_int(v.shape[0])
            + _py2_int(v.shape[1])
            + b"\x86"
            + dtype
            + b"\x89"
            + _py2_str(v.tobytes())
            + b"tb"
        )
    if isinstance(v, bytes):
        return _py2_str(v)
    if isinstance(v, int):
        return _py2_int(v)
    if isinstance(v, list):
        return b"](" + b"".join(_py2_value(x) for x in v) + b"e"
    if isinstance(v, dict):
        return b"}(" + b"".join(_py2_value(k) + _py2_value(x) for k, x in v.items()) + b"u"
    raise TypeError(type(v))


PY2 = True  # which pickler make_cifar uses; see test_cifar10_dir


def official_pickle(obj: dict) -> bytes:
    """Pickle like the official CIFAR files (written by Python 2), or with Python 3 if not PY2."""
    if PY2:
        return b"\x80\x02" + _py2_value(obj) + b"."
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def make_cifar(root: Path, which: str, *, n: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny cifar-10-batches-py/ or cifar-100-python/ under ``root``; returns what it wrote."""
    rng = np.random.default_rng(seed)
    if which == "cifar10":
        d = root / "cifar-10-batches-py"
        d.mkdir(parents=True)
        xs, ys = [], []
        for i in range(1, 6):
            x = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
            y = [int(v) for v in rng.integers(0, 10, size=n)]
            (d / f"data_batch_{i}").write_bytes(
                official_pickle(
                    {
                        b"batch_label": b"training batch",
                        b"labels": y,
                        b"data": x,
                        b"filenames": [b"f.png"] * n,
                    }
                )
            )
            xs.append(x)
            ys.extend(y)
        tx = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        ty = [int(v) for v in rng.integers(0, 10, size=n)]
        (d / "test_batch").write_bytes(official_pickle({b"labels": ty, b"data": tx}))
        names = [
            b"airplane",
            b"automobile",
            b"bird",
            b"cat",
            b"deer",
            b"dog",
            b"frog",
            b"horse",
            b"ship",
            b"truck",
        ]
        (d / "batches.meta").write_bytes(
            official_pickle({b"label_names": names, b"num_cases_per_batch": n, b"num_vis": 3072})
        )
        return {
            "train_x": np.concatenate(xs),
            "train_y": np.array(ys),
            "test_x": tx,
            "test_y": np.array(ty),
            "names": np.array([s.decode() for s in names]),
        }
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    x = rng.integers(0, 256, size=(2 * n, 3072), dtype=np.uint8)
    y = [int(v) for v in rng.integers(0, 100, size=2 * n)]
    y[0] = 99
    (d / "train").write_bytes(
        official_pickle({b"fine_labels": y, b"coarse_labels": [0] * (2 * n), b"data": x})
    )
    tx = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    ty = [int(v) for v in rng.integers(0, 100, size=n)]
    (d / "test").write_bytes(
        official_pickle({b"fine_labels": ty, b"coarse_labels": [0] * n, b"data": tx})
    )
    names = [f"class{i}".encode() for i in range(100)]
    (d / "meta").write_bytes(
        official_pickle({b"fine_label_names": names, b"coarse_label_names": [b"c"] * 20})
    )
    return {
        "train_x": x,
        "train_y": np.array(y),
        "test_x": tx,
        "test_y": np.array(ty),
        "names": np.array([s.decode() for s in names]),
    }


def assert_cifar(ds: RawDataset, arrays: dict[str, np.ndarray]) -> None:
    for split in ("train", "test"):
        x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)
        raw = arrays[f"{split}_x"]
        # rows are 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32
        np.testing.assert_array_equal(
            (x * 255).round().to(torch.uint8).numpy(), raw.reshape(-1, 3, 32, 32)
        )
        np.testing.assert_array_equal(x[0, 1, 0, :5].mul(255).round().numpy(), raw[0, 1024:1029])
        np.testing.assert_array_equal(y.numpy(), arrays[f"{split}_y"])
    assert ds.class_names == tuple(arrays["names"])
    assert ds.num_classes == len(arrays["names"])


def make_tar(src_dir: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src_dir, arcname=src_dir.name)
    return archive


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------
# names


def test_available_and_aliases() -> None:
    assert set(available_datasets()) == {
        "digits",
        "mnist",
        "fashion-mnist",
        "kmnist",
        "cifar10",
        "cifar100",
        "npz",
        "imagefolder",
        "manifest",
        "hf",
        "webdataset",
    }
    for alias in ("fashion_mnist", "fmnist", "FashionMNIST", "Fashion-MNIST", " fashion mnist "):
        assert canonical_name(alias) == "fashion-mnist"
    assert canonical_name("CIFAR-10") == "cifar10"
    assert canonical_name("cifar_100") == "cifar100"
    assert canonical_name("KMNIST") == "kmnist"


def test_unknown_name_lists_datasets_and_close_matches() -> None:
    with pytest.raises(ValueError) as err:
        load_dataset("fashon-mnist")
    msg = str(err.value)
    assert "'fashion-mnist'" in msg and "Did you mean" in msg
    for name in available_datasets():
        assert name in msg


# --------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_range_fixed_stratified_split() -> None:
    a, b = load_dataset("digits"), load_dataset("Digits")
    assert a.train_x.shape == (1347, 1, 8, 8) and a.test_x.shape == (450, 1, 8, 8)
    assert a.in_shape == (1, 8, 8) and a.num_classes == 10 and a.source == "sklearn"
    assert a.train_x.dtype == torch.float32 and a.train_y.dtype == torch.int64
    assert float(a.train_x.min()) == 0.0 and float(a.train_x.max()) == 1.0
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    all_counts = torch.bincount(torch.cat([a.train_y, a.test_y]), minlength=10)
    test_counts = torch.bincount(a.test_y, minlength=10)
    assert int(all_counts.sum()) == 1797
    assert ((test_counts.double() - all_counts.double() / 4).abs() <= 1).all()


def test_digits_takes_no_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="takes no path"):
        load_dataset("digits", path=tmp_path)


# --------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_via_path(tmp_path: Path, gz: bool) -> None:
    arrays = make_idx_dataset(tmp_path / "mine", gz=gz)
    ds = load_dataset("mnist", path=tmp_path / "mine")
    assert ds.name == "mnist" and ds.source == str(tmp_path / "mine")
    assert ds.in_shape == (1, 5, 4) and ds.class_names == tuple("0123456789")
    assert_matches(ds, arrays)


def test_idx_via_distill_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = make_idx_dataset(tmp_path / "root2" / "kmnist", gz=True)
    (tmp_path / "root1").mkdir()
    monkeypatch.setenv("DISTILL_DATA", f"{tmp_path / 'root1'}{os.pathsep}{tmp_path / 'root2'}")
    ds = load_dataset("KMNIST")
    assert ds.source == str(tmp_path / "root2" / "kmnist")
    assert ds.class_names[:3] == ("o", "ki", "su")
    assert_matches(ds, arrays)


def test_idx_lookup_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: dict[str, Path]
) -> None:
    make_idx_dataset(isolated["cache"] / "distill" / "fashion-mnist", gz=True, seed=1)
    assert load_dataset("fashion-mnist").source == str(
        isolated["cache"] / "distill" / "fashion-mnist"
    )
    make_idx_dataset(isolated["debian"] / "fashion-mnist", gz=True, seed=2)
    assert load_dataset("fashion-mnist").source == str(isolated["debian"] / "fashion-mnist")
    make_idx_dataset(tmp_path / "env" / "fashion-mnist", gz=False, seed=3)
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "env"))
    assert load_dataset("fashion-mnist").source == str(tmp_path / "env" / "fashion-mnist")
    arrays = make_idx_dataset(tmp_path / "explicit", gz=False, seed=4)
    ds = load_dataset("fashion-mnist", path=tmp_path / "explicit")
    assert ds.source == str(tmp_path / "explicit")
    assert_matches(ds, arrays)
    assert dataset_search_paths("fashion-mnist", tmp_path / "explicit") == [tmp_path / "explicit"]
    assert dataset_search_paths("fashion-mnist") == [
        tmp_path / "env" / "fashion-mnist",
        isolated["debian"] / "fashion-mnist",
        isolated["cache"] / "distill" / "fashion-mnist",
    ]


def test_system_data_setting_replaces_the_debian_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: dict[str, Path]
) -> None:
    """$DISTILL_SYSTEM_DATA: system roots searched instead of /usr/share/datasets (empty: the default)."""
    make_idx_dataset(isolated["debian"] / "fashion-mnist", gz=True, seed=1)
    assert sources.find_dataset("fmnist") == isolated["debian"] / "fashion-mnist"
    empty, opt = tmp_path / "empty", tmp_path / "opt"
    empty.mkdir()
    monkeypatch.setenv("DISTILL_SYSTEM_DATA", str(empty))  # the installed copy is not seen
    assert sources.find_dataset("fashion-mnist") is None
    with pytest.raises(DataNotFoundError, match=f"{empty / 'fashion-mnist'}: does not exist"):
        load_dataset("fashion-mnist")
    make_idx_dataset(opt / "fashion-mnist", gz=False, seed=2)
    monkeypatch.setenv("DISTILL_SYSTEM_DATA", os.pathsep.join([str(empty), str(opt)]))
    assert dataset_search_paths("fashion-mnist") == [
        empty / "fashion-mnist", opt / "fashion-mnist", isolated["cache"] / "distill" / "fashion-mnist"]
    assert sources.find_dataset("fashion-mnist") == opt / "fashion-mnist"
    assert load_dataset("fashion-mnist").source == str(opt / "fashion-mnist")
    monkeypatch.setenv("DISTILL_SYSTEM_DATA", "")
    assert sources.find_dataset("fashion-mnist") == isolated["debian"] / "fashion-mnist"
    with pytest.raises(ValueError, match="'digits' is not looked for"):
        sources.find_dataset("digits")


def test_cache_falls_back_to_home(
    monkeypatch: pytest.MonkeyPatch, isolated: dict[str, Path]
) -> None:
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert dataset_search_paths("mnist")[-1] == isolated["home"] / ".cache" / "distill" / "mnist"


def test_idx_dotted_names(tmp_path: Path) -> None:
    arrays = make_idx_dataset(tmp_path / "d", gz=False)
    for base in IDX_NAMES:
        (tmp_path / "d" / base).rename(tmp_path / "d" / base.replace("-idx", ".idx"))
    assert_matches(load_dataset("mnist", path=tmp_path / "d"), arrays)


def _corrupt_bad_magic(d: Path) -> Path:
    # the label file where the image file should be
    (d / IDX_NAMES[0]).write_bytes((d / IDX_NAMES[1]).read_bytes())
    return d / IDX_NAMES[0]


def _corrupt_truncated(d: Path) -> Path:
    f = d / IDX_NAMES[2]
    f.write_bytes(f.read_bytes()[:-7])
    return f


def _corrupt_trailing(d: Path) -> Path:
    f = d / IDX_NAMES[1]
    f.write_bytes(f.read_bytes() + b"\x00")
    return f


def _corrupt_count(d: Path) -> Path:
    write_idx(d / IDX_NAMES[3], np.zeros(11, dtype=np.uint8), 2049, gz=False)
    return d / IDX_NAMES[3]


def _corrupt_label_range(d: Path) -> Path:
    y = np.zeros(30, dtype=np.uint8)
    y[17] = 10
    write_idx(d / IDX_NAMES[1], y, 2049, gz=False)
    return d / IDX_NAMES[1]


@pytest.mark.parametrize(
    "corrupt, words",
    [
        (_corrupt_bad_magic, ["bad magic number", "2049", "2051"]),
        (_corrupt_truncated, ["wrong length", "truncated"]),
        (_corrupt_trailing, ["wrong length", "trailing"]),
        (_corrupt_count, ["12 images", "11 labels"]),
        (_corrupt_label_range, ["label 10 at index 17", "[0, 9]"]),
    ],
)
def test_idx_corruption_names_the_file(tmp_path: Path, corrupt, words: list[str]) -> None:
    make_idx_dataset(tmp_path / "d", gz=False)
    bad_file = corrupt(tmp_path / "d")
    with pytest.raises(CorruptDataError) as err:
        load_dataset("mnist", path=tmp_path / "d")
    msg = str(err.value)
    assert str(bad_file) in msg
    for word in words:
        assert word in msg


def test_idx_truncated_gzip(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path / "d", gz=True)
    f = tmp_path / "d" / (IDX_NAMES[0] + ".gz")
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    with pytest.raises(CorruptDataError, match="truncated or corrupt gzip") as err:
        load_dataset("mnist", path=tmp_path / "d")
    assert str(f) in str(err.value)


# --------------------------------------------------------------------------------------------
# CIFAR


@pytest.mark.parametrize("py2", [True, False], ids=["python2-pickles", "python3-pickles"])
def test_cifar10_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, py2: bool) -> None:
    monkeypatch.setattr(sys.modules[__name__], "PY2", py2)
    arrays = make_cifar(tmp_path, "cifar10")
    for path in (tmp_path, tmp_path / "cifar-10-batches-py"):  # the parent or the directory itself
        ds = load_dataset("CIFAR-10", path=path)
        assert ds.name == "cifar10" and ds.in_shape == (3, 32, 32) and ds.train_x.shape[0] == 20
        assert ds.source == str(tmp_path / "cifar-10-batches-py")
        assert_cifar(ds, arrays)


def test_cifar100_dir_and_distill_data_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = make_cifar(tmp_path / "data", "cifar100")
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "data"))
    ds = load_dataset("cifar100")
    assert ds.num_classes == 100 and ds.class_names[99] == "class99"
    assert_cifar(ds, arrays)


@pytest.mark.parametrize("which", ["cifar10", "cifar100"])
def test_cifar_archive(tmp_path: Path, which: str) -> None:
    arrays = make_cifar(tmp_path / "src", which)
    spec = sources._SPECS[which]
    (tmp_path / "dl").mkdir()
    archive = make_tar(tmp_path / "src" / spec.subdir, tmp_path / "dl" / spec.archive)
    ds = load_dataset(which, path=archive)  # the archive itself
    assert ds.source == str(archive)
    assert_cifar(ds, arrays)
    assert_cifar(load_dataset(which, path=tmp_path / "dl"), arrays)  # a directory holding it
    assert not (tmp_path / "dl" / spec.subdir).exists()  # read in place, nothing extracted


def test_cifar_truncated_archive(tmp_path: Path) -> None:
    make_cifar(tmp_path / "src", "cifar10")
    archive = make_tar(
        tmp_path / "src" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz"
    )
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(CorruptDataError) as err:
        load_dataset("cifar10", path=archive)
    assert str(archive) in str(err.value)


def test_cifar_label_out_of_range(tmp_path: Path) -> None:
    make_cifar(tmp_path, "cifar10")
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    x = np.zeros((2, 3072), dtype=np.uint8)
    batch.write_bytes(official_pickle({b"labels": [3, 12], b"data": x}))
    with pytest.raises(CorruptDataError) as err:
        load_dataset("cifar10", path=tmp_path)
    assert str(batch) in str(err.value) and "label 12 at index 1" in str(err.value)


class _Evil:
    def __reduce__(self):  # noqa: D105 - runs os.system when unpickled by plain pickle
        return (os.system, ("touch pwned",))


def test_cifar_refuses_code_in_pickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_cifar(tmp_path, "cifar10")
    monkeypatch.chdir(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({b"labels": [1], b"data": _Evil()}, protocol=2))
    with pytest.raises(CorruptDataError, match="refusing to load") as err:
        load_dataset("cifar10", path=tmp_path)
    assert str(batch) in str(err.value)
    assert not (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------------------------
# npz


def test_npz_images_hw_uint8(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, size=(8, 6, 5), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(3, 6, 5), dtype=np.uint8)
    f = tmp_path / "mine.npz"
    np.savez(
        f,
        x_train=x_train,
        y_train=np.array([0, 1, 2, 0, 1, 2, 0, 1]),
        x_test=x_test,
        y_test=np.array([2, 1, 0]),
    )
    for ds in (load_dataset("npz", path=f), load_dataset(str(f))):
        assert ds.name == "npz" and ds.source == str(f)
        assert ds.train_x.shape == (8, 1, 6, 5) and ds.in_shape == (1, 6, 5)
        assert ds.num_classes == 3 and ds.class_names == ("0", "1", "2")
        torch.testing.assert_close(ds.train_x[:, 0], torch.from_numpy(x_train).float() / 255)
        assert ds.test_y.tolist() == [2, 1, 0] and ds.test_y.dtype == torch.int64


def test_npz_nchw_float_with_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x_train = rng.normal(size=(6, 3, 4, 4))  # float64 -> float32, values kept
    f = tmp_path / "f.npz"
    np.savez(
        f,
        x_train=x_train,
        y_train=np.arange(6) % 2,
        x_test=x_train[:2].astype(np.float32),
        y_test=np.array([[1], [0]]),
        class_names=np.array(["cat", "dog", "bird"]),
    )
    ds = load_dataset("npz", path=f)
    assert ds.train_x.dtype == torch.float32 and ds.in_shape == (3, 4, 4)
    torch.testing.assert_close(ds.train_x, torch.from_numpy(x_train).float())
    assert ds.num_classes == 3 and ds.class_names == ("cat", "dog", "bird")
    assert ds.test_y.tolist() == [1, 0]


def test_npz_vectors(tmp_path: Path) -> None:
    f = tmp_path / "v.npz"
    np.savez(
        f,
        x_train=np.ones((5, 7), np.float32),
        y_train=np.array([0, 1, 1, 0, 4]),
        x_test=np.zeros((2, 7), np.float32),
        y_test=np.array([3, 3]),
        num_classes=np.int64(6),
    )
    ds = load_dataset("npz", path=f)
    assert ds.in_shape == (7,) and ds.num_classes == 6 and len(ds.class_names) == 6


def test_npz_missing_key(tmp_path: Path) -> None:
    f = tmp_path / "m.npz"
    np.savez(
        f,
        x_train=np.ones((2, 3), np.float32),
        y_train=np.array([0, 1]),
        x_test=np.ones((1, 3), np.float32),
    )
    with pytest.raises(CorruptDataError) as err:
        load_dataset("npz", path=f)
    msg = str(err.value)
    assert str(f) in msg and "missing key y_test" in msg
    assert "x_train, y_train, x_test, y_test" in msg


@pytest.mark.parametrize(
    "y_train, extra, words",
    [
        (
            np.array([0, 5]),
            {"num_classes": np.int64(3)},
            ["y_train", "label 5 at index 1", "[0, 2]"],
        ),
        (np.array([0, -1]), {}, ["y_train", "label -1 at index 1"]),
        (np.array([0.0, 1.0]), {}, ["y_train", "must be integers"]),
    ],
)
def test_npz_bad_labels(tmp_path: Path, y_train: np.ndarray, extra: dict, words: list[str]) -> None:
    f = tmp_path / "bad.npz"
    np.savez(
        f,
        x_train=np.ones((2, 3), np.float32),
        y_train=y_train,
        x_test=np.ones((1, 3), np.float32),
        y_test=np.array([0]),
        **extra,
    )
    with pytest.raises(CorruptDataError) as err:
        load_dataset("npz", path=f)
    assert str(f) in str(err.value)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(
    "split, x, words",
    [  # issue 11 item 14: 1e300 in float64 is finite, but inf once cast to float32
        ("train", np.full((4, 2, 3), 0.5), ["x_train[(2, 1, 0)] = 1e+300", "beyond the float32 range",
                                            "2 such values"]),
        ("test", np.full((4, 5), 0.5, np.float32), ["x_test[(1, 3)] = nan", "not a finite number"]),
    ],
)
def test_npz_refuses_values_that_are_not_finite_as_float32(
    tmp_path: Path, split: str, x: np.ndarray, words: list[str]
) -> None:
    if split == "train":
        x[2, 1, 0], x[3, 0, 2] = 1e300, -1e39
    else:
        x[1, 3], x[2, 0] = np.nan, np.inf
    ok = np.full(x.shape, 0.5, np.float32)
    arrays = {"x_train": ok, "x_test": ok, f"x_{split}": x}
    f = tmp_path / "huge.npz"
    np.savez(f, y_train=np.arange(4) % 2, y_test=np.arange(4) % 2, **arrays)
    with pytest.raises(CorruptDataError) as err:
        load_dataset("npz", path=f)
    assert str(err.value).startswith(f"{f}: x_{split}[(")
    for word in words:
        assert word in str(err.value)


def test_npz_refuses_object_arrays_and_needs_a_path(tmp_path: Path) -> None:
    f = tmp_path / "obj.npz"
    obj = np.empty(2, dtype=object)
    obj[:] = [1, 2]
    np.savez(f, x_train=obj, y_train=np.array([0, 1]), x_test=np.ones((1, 3)), y_test=np.array([0]))
    with pytest.raises(CorruptDataError, match="object arrays"):
        load_dataset("npz", path=f)
    with pytest.raises(ValueError, match="needs a file"):
        load_dataset("npz")
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset(str(tmp_path / "nope.npz"))


# --------------------------------------------------------------------------------------------
# missing data


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist", "cifar10"])
def test_not_found_lists_every_path_and_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "data"))
    with pytest.raises(DataNotFoundError) as err:
        load_dataset(name)
    msg = str(err.value)
    searched = dataset_search_paths(name)
    assert len(searched) == (4 if name == "cifar10" else 3)
    for p in searched:
        assert str(p) in msg
    assert "download=True" in msg and "data.download=true" in msg and "DISTILL_DATA" in msg
    assert sources.DOWNLOADS[name].mirrors[0] in msg  # the official URL
    assert ("apt-get install dataset-fashion-mnist" in msg) == (name == "fashion-mnist")


def test_an_explicit_path_is_the_only_place_looked_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_idx_dataset(tmp_path / "data" / "mnist", gz=True)  # a good copy elsewhere on the path
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "data"))
    assert load_dataset("mnist").train_x.shape[0] > 0
    with pytest.raises(DataNotFoundError, match="not found at the given path .*wrong"):
        load_dataset("mnist", path=tmp_path / "wrong")
    assert dataset_search_paths("mnist", tmp_path / "wrong") == [tmp_path / "wrong"]


def test_not_found_reports_incomplete_directory(tmp_path: Path) -> None:
    make_idx_dataset(tmp_path / "d", gz=True)
    (tmp_path / "d" / (IDX_NAMES[3] + ".gz")).unlink()
    with pytest.raises(DataNotFoundError, match=r"missing t10k-labels-idx1-ubyte\[\.gz\]"):
        load_dataset("mnist", path=tmp_path / "d")


# --------------------------------------------------------------------------------------------
# downloads (from file:// URLs)


def _serve_idx(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray], dict[str, str]]:
    served = tmp_path / "server"
    arrays = make_idx_dataset(served, gz=True)
    files = {f"{b}.gz": "md5:" + md5(served / f"{b}.gz") for b in IDX_NAMES}
    return served, arrays, files


def test_download_verifies_caches_and_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: dict[str, Path]
) -> None:
    served, arrays, files = _serve_idx(tmp_path)
    missing_mirror = (tmp_path / "no-such-mirror").as_uri() + "/"
    monkeypatch.setitem(
        sources.DOWNLOADS,
        "mnist",
        DownloadSource(mirrors=(missing_mirror, served.as_uri() + "/"), files=files),
    )
    with pytest.raises(DataNotFoundError):
        load_dataset("mnist")  # download not asked for: nothing fetched
    cache = isolated["cache"] / "distill" / "mnist"
    assert not cache.exists()
    ds = load_dataset("mnist", download=True)
    assert ds.source == str(cache)
    assert_matches(ds, arrays)
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)  # no .part left over
    # cached: loads without the server
    for f in served.iterdir():
        f.unlink()
    assert_matches(load_dataset("mnist"), arrays)
    assert_matches(load_dataset("mnist", download=True), arrays)


def test_download_checksum_mismatch_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: dict[str, Path]
) -> None:
    served, _, files = _serve_idx(tmp_path)
    files = dict(files)
    files[f"{IDX_NAMES[0]}.gz"] = "sha256:" + "0" * 64
    monkeypatch.setitem(
        sources.DOWNLOADS, "mnist", DownloadSource(mirrors=(served.as_uri() + "/",), files=files)
    )
    with pytest.raises(CorruptDataError) as err:
        load_dataset("mnist", download=True)
    assert "checksum" in str(err.value) and IDX_NAMES[0] in str(err.value)
    cache_root = isolated["cache"] / "distill"
    assert not [p for p in cache_root.rglob("*") if p.is_file()]


def test_download_network_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = (tmp_path / "down").as_uri() + "/"
    monkeypatch.setitem(
        sources.DOWNLOADS,
        "kmnist",
        DownloadSource(mirrors=(mirror,), files={f"{b}.gz": "md5:" + "0" * 32 for b in IDX_NAMES}),
    )
    with pytest.raises(DataNotFoundError, match="Could not download"):
        load_dataset("kmnist", download=True)


def test_download_cifar_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: dict[str, Path]
) -> None:
    arrays = make_cifar(tmp_path / "src", "cifar10")
    (tmp_path / "server").mkdir()
    archive = make_tar(
        tmp_path / "src" / "cifar-10-batches-py", tmp_path / "server" / "cifar-10-python.tar.gz"
    )
    monkeypatch.setitem(
        sources.DOWNLOADS,
        "cifar10",
        DownloadSource(
            mirrors=((tmp_path / "server").as_uri() + "/",),
            files={"cifar-10-python.tar.gz": "sha256:" + sha256sum(archive)},
        ),
    )
    ds = load_dataset("cifar10", download=True)
    assert ds.source == str(isolated["cache"] / "distill" / "cifar10" / "cifar-10-python.tar.gz")
    assert_cifar(ds, arrays)


def test_raw_dataset_checks_itself() -> None:
    x, y = torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64)
    ds = RawDataset("t", x, y, x[:2], y[:2], 2, ("a", "b"), "here")
    assert ds.in_shape == (1, 2, 2) and "train=(4, 1, 2, 2)" in repr(ds)
    with pytest.raises(ValueError, match="same N"):
        RawDataset("t", x, y[:3], x, y, 2, ("a", "b"), "here")
    with pytest.raises(ValueError, match="int64"):
        RawDataset("t", x, y.int(), x, y, 2, ("a", "b"), "here")
    with pytest.raises(ValueError, match="class names"):
        RawDataset("t", x, y, x, y, 3, ("a", "b"), "here")


def test_sha256sum(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"distill" * 1000)
    assert sha256sum(f) == hashlib.sha256(b"distill" * 1000).hexdigest()


def test_published_checksums_are_well_formed() -> None:
    for name, source in sources.DOWNLOADS.items():
        assert name in available_datasets() and source.mirrors
        for checksum in source.files.values():
            algorithm, digest = checksum.split(":")
            assert len(digest) == {"md5": 32, "sha256": 64}[algorithm]
            int(digest, 16)


# --------------------------------------------------------------------------------------------
# the real Fashion-MNIST from the Debian package


REAL_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
NO_DEBIAN = (
    "Debian package dataset-fashion-mnist not installed: apt-get install dataset-fashion-mnist"
)


@pytest.mark.requires_data("fashion-mnist")
@pytest.mark.skipif(
    not REAL_DEBIAN.exists(),
    reason=NO_DEBIAN,
)
def test_fashion_mnist_from_debian(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources.lookup, "DEBIAN_ROOT", REAL_DEBIAN.parent)
    ds = load_dataset("fashion_mnist")
    assert ds.source == str(REAL_DEBIAN)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
    assert float(ds.train_x.min()) == 0.0 and float(ds.train_x.max()) == 1.0


# --------------------------------------------------------------------------------------------
# the registry: a new format is one DatasetSpec subclass that registers itself


def test_a_new_format_is_one_registered_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: dict[str, Path]
) -> None:
    """A format defined entirely here (one file of numbers per split) is searched, found, loaded,
    listed and named in errors through the registry alone."""
    from distill.data.sources.registry import _ALIASES, _SPECS, DatasetSpec, Located

    class TextSpec(DatasetSpec):
        def wanted(self) -> str:
            return "train.txt, test.txt"

        def locate(self, location: Path) -> tuple[Located | None, str]:
            if not (location / "train.txt").is_file():
                return None, "missing train.txt"

            def read() -> RawDataset:
                def split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
                    rows = np.loadtxt(location / name, ndmin=2)
                    return torch.tensor(rows[:, 1:], dtype=torch.float32), torch.tensor(rows[:, 0]).long()

                (trx, tr_y), (tex, te_y) = split("train.txt"), split("test.txt")
                return RawDataset("toy-text", trx, tr_y, tex, te_y, 2, ("a", "b"), str(location))

            return Located(location, read), ""

    sources.register(TextSpec("toy-text", "a toy text format"), aliases=("toy",))
    try:
        check_toy_text(tmp_path, monkeypatch)
    finally:
        del _SPECS["toy-text"], _ALIASES["toy"]
    assert "toy-text" not in available_datasets()


def check_toy_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert available_datasets()[-1] == "toy-text" and canonical_name("TOY") == "toy-text"
    with pytest.raises(DataNotFoundError, match=r"Looked for train.txt, test.txt in:(.|\n)*missing train.txt"):
        load_dataset("toy")
    root = tmp_path / "data"
    (root / "toy-text").mkdir(parents=True)
    (root / "toy-text" / "train.txt").write_text("0 1.5 2\n1 3 4\n")
    (root / "toy-text" / "test.txt").write_text("1 5 6\n")
    monkeypatch.setenv("DISTILL_DATA", str(root))
    assert sources.find_dataset("toy-text") == root / "toy-text"
    ds = load_dataset("toy-text")
    assert ds.train_x.tolist() == [[1.5, 2.0], [3.0, 4.0]] and ds.train_y.tolist() == [0, 1]
    assert ds.test_y.tolist() == [1] and ds.source == str(root / "toy-text")
