"""Cached teachers: the file round trip, stale caches refused, and distillation from a cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.cache import (
    CachedTeacher,
    CacheError,
    build_cache,
    dataset_checksum,
    load_cache,
    save_cache,
    teacher_fingerprint,
)
from distill.checkpoint import build_model_from_checkpoint, load_checkpoint, save_checkpoint
from distill.cli import main
from distill.config import OptimizerConfig, TrainConfig, load_config
from distill.data import load_dataset, make_splits
from distill.engine import Callback, evaluate, fit, predict_logits
from distill.functional import kd_loss, topk_kd_loss
from distill.models import create_model
from distill.objectives import CrossEntropy, KnowledgeDistillation
from distill.recipes import run_recipe
from distill.teachers import FrozenTeacher
import distill.views as views_module
from distill.views import Views, fixed_teacher_view

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def teacher(digits_splits):
    torch.manual_seed(0)
    model = create_model("mlp", digits_splits.num_classes, digits_splits.in_shape, hidden=[64])
    fit(model, CrossEntropy(), digits_splits, TrainConfig(epochs=5, batch_size=64), progress=None)
    return model.eval()


def read_npz(path) -> tuple[dict, dict[str, np.ndarray]]:
    """The meta and the data arrays (not the meta's own sha256)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "meta_sha256"}
    return json.loads(str(arrays.pop("meta"))), arrays


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(f"{a.dtype.str}:{a.shape};".encode() + np.ascontiguousarray(a).tobytes()).hexdigest()


def write_npz(path, meta: dict, arrays: dict[str, np.ndarray], *, sign: bool = True,
              meta_sha256: str | None = None) -> None:
    """Write a cache file; ``sign``: with checksums that fit the (maybe altered) meta and arrays, as a
    consistent forgery would, so that the checks behind the checksums are reached."""
    if sign:
        meta = {**meta, "checksums": {name: sha256(a) for name, a in arrays.items()}}
    text = json.dumps(meta)
    digest = meta_sha256 or hashlib.sha256(text.encode()).hexdigest()
    with open(path, "wb") as f:
        np.savez(f, meta=np.array(text), meta_sha256=np.array(digest), **arrays)


# -- the file --------------------------------------------------------------------------------


def test_full_logit_round_trip_is_exact_in_float32_and_close_in_float16(teacher, digits_splits, tmp_path):
    want = predict_logits(teacher, digits_splits.train.x)
    path = save_cache(tmp_path / "full.npz", build_cache(teacher, digits_splits))
    cache = load_cache(path, data=digits_splits, teacher=teacher)
    assert cache.kind == "logits" and cache.dtype == "float32" and torch.equal(cache.logits, want)

    meta, arrays = read_npz(path)
    assert set(arrays) == {"logits", "test_predictions"} and arrays["test_predictions"].dtype == np.uint8
    assert meta["format"] == "distill.teacher_cache" and meta["version"] == 2
    assert meta["checksums"] == {name: sha256(arrays[name]) for name in ("logits", "test_predictions")}
    assert meta["views"] == {"mode": "none", "size": [8, 8]}
    assert meta["data"] == {"rows": 1212, "input_shape": [1, 8, 8], "name": "digits",
                            "mean": digits_splits.mean.tolist(), "std": digits_splits.std.tolist()}
    assert (meta["n"], meta["num_classes"], meta["k"], meta["temperature"]) == (1212, 10, None, None)
    assert meta["data_checksum"] == dataset_checksum(digits_splits.train)
    assert meta["teacher_fingerprint"] == teacher_fingerprint(teacher)
    test = evaluate(teacher, digits_splits.test)
    assert meta["test"]["errors"] == test.errors and meta["test"]["nll"] == pytest.approx(test.nll)
    assert torch.equal(cache.test_predictions, test.predictions)

    index = torch.tensor([5, 0, 1211, 7])
    targets = CachedTeacher(cache)(digits_splits.train.x[index], index)
    assert targets.logits.dtype == torch.float32 and torch.equal(targets.logits, want[index])

    half = load_cache(save_cache(tmp_path / "half.npz", build_cache(teacher, digits_splits, dtype="float16")))
    assert half.logits.dtype == torch.float16
    torch.testing.assert_close(half.logits.float(), want, rtol=1e-3, atol=1e-3)
    assert (tmp_path / "half.npz").stat().st_size < 0.6 * path.stat().st_size


def test_topk_round_trip_keeps_the_top_classes_and_the_tail_mass(teacher, digits_splits, tmp_path):
    T, k = 2.0, 3
    path = save_cache(tmp_path / "top3.npz", build_cache(teacher, digits_splits.train, topk=k, temperature=T))
    cache = load_cache(path, data=digits_splits.train)
    assert (cache.kind, cache.k, cache.temperature, cache.test) == ("topk", 3, 2.0, None)
    assert read_npz(path)[1]["indices"].dtype == np.uint8

    log_p = F.log_softmax(predict_logits(teacher, digits_splits.train.x) / T, dim=-1)
    ranked = log_p.sort(dim=-1, descending=True).values
    torch.testing.assert_close(cache.log_probs, ranked[:, :k])  # the k largest, most probable first
    torch.testing.assert_close(log_p.gather(-1, cache.indices), cache.log_probs)  # ... at the right classes
    tail = 1 - cache.log_probs.exp().sum(-1)
    torch.testing.assert_close(tail, ranked[:, k:].exp().sum(-1), rtol=0, atol=1e-6)
    assert torch.equal(cache.top1(), log_p.argmax(-1))

    index = torch.tensor([3, 1, 4])
    topk = CachedTeacher(cache)(digits_splits.train.x[index], index).topk
    assert (topk.num_classes, topk.temperature) == (10, 2.0)
    assert torch.equal(topk.indices, cache.indices[index]) and torch.equal(topk.log_probs, cache.log_probs[index])

    half = build_cache(teacher, digits_splits.train, topk=k, temperature=T, dtype="float16")
    torch.testing.assert_close(half.log_probs.float(), cache.log_probs, rtol=1e-3, atol=1e-3)


def test_checksum_and_fingerprint_see_every_change(digits_splits, teacher):
    train = digits_splits.train
    assert dataset_checksum(train) == dataset_checksum(type(train)(train.x.clone(), train.y.clone()))
    nudged = train.x.clone()
    nudged[7, 0, 3, 3] += 1e-6
    assert dataset_checksum(type(train)(nudged, train.y)) != dataset_checksum(train)
    assert dataset_checksum(type(train)(train.x.double(), train.y)) != dataset_checksum(train)
    other = create_model("mlp", 10, digits_splits.in_shape, hidden=[64])
    assert teacher_fingerprint(teacher) == teacher_fingerprint(teacher) != teacher_fingerprint(other)


def test_build_cache_refuses_bad_requests(teacher, digits_splits):
    with pytest.raises(ValueError, match="pass temperature="):
        build_cache(teacher, digits_splits.train, topk=3)
    with pytest.raises(ValueError, match="exceeds the teacher's 10 classes"):
        build_cache(teacher, digits_splits.train, topk=11, temperature=1.0)
    with pytest.raises(ValueError, match="float16"):
        build_cache(teacher, digits_splits.train, dtype="bfloat16")


# -- stale and damaged caches ------------------------------------------------------------------


@pytest.fixture
def saved(teacher, digits_splits, tmp_path):
    return save_cache(tmp_path / "cache.npz", build_cache(teacher, digits_splits))


@pytest.mark.parametrize("change", [{"split_seed": 1}, {"normalize": False}, {"val_size": 0.2}])
def test_a_cache_of_other_data_is_refused(saved, change):
    other = make_splits(load_dataset("digits"), **{"val_size": 0.1, **change})
    with pytest.raises(CacheError, match="different dataset/split/normalization") as e:
        load_cache(saved, data=other)
    assert str(saved) in str(e.value) and "recipe=cache" in str(e.value)


def test_a_cache_of_another_test_split_is_refused(saved, digits_splits):
    test = type(digits_splits.test)(digits_splits.test.x[:-1], digits_splits.test.y[:-1])
    splits = type(digits_splits)(**{**digits_splits.__dict__, "test": test})
    with pytest.raises(CacheError, match="its test set has 450 rows"):
        load_cache(saved, data=splits)


def test_a_cache_of_another_teacher_is_refused(saved, digits_splits):
    other = create_model("mlp", 10, digits_splits.in_shape, hidden=[64])
    with pytest.raises(CacheError, match="different teacher"):
        load_cache(saved, data=digits_splits, teacher=other)


def test_damaged_altered_or_foreign_files_are_refused(saved, tmp_path):
    raw = bytearray(saved.read_bytes())
    flipped, truncated, junk = tmp_path / "flipped.npz", tmp_path / "truncated.npz", tmp_path / "junk.npz"
    raw[len(raw) // 2] ^= 0xFF  # inside the logits
    flipped.write_bytes(raw)
    truncated.write_bytes(saved.read_bytes()[:-300])
    junk.write_text("not a cache")
    for path in (flipped, truncated, junk):
        with pytest.raises(CacheError, match="cannot be read"):
            load_cache(path)
    with pytest.raises(CacheError, match="does not exist"):
        load_cache(tmp_path / "missing.npz")

    meta, arrays = read_npz(saved)
    cases = {
        "format version 3": ({**meta, "version": 3}, arrays),
        "not a distill teacher cache": ({**meta, "format": "other"}, arrays),
        "records": ({**meta, "n": 1000}, arrays),
        "logits contain NaN": (meta, {**arrays, "logits": np.full_like(arrays["logits"], np.nan)}),
        "no 'logits' entry": (meta, {"test_predictions": arrays["test_predictions"]}),
    }
    for message, (m, a) in cases.items():
        write_npz(tmp_path / "altered.npz", m, a)
        with pytest.raises(CacheError, match=message):
            load_cache(tmp_path / "altered.npz")


def test_every_array_and_the_meta_are_checksummed(saved, tmp_path):
    """A cache whose bytes changed in a way the zip's CRC-32 does not see (an array rewritten, or the meta
    edited) is refused as corrupted, never read as other targets (issue 11 item 6)."""
    meta, arrays = read_npz(saved)
    altered = tmp_path / "altered.npz"
    logits = arrays["logits"].copy()
    logits[5, 3] += 1.0  # still finite, still a valid cache: only the checksum can tell
    cases = {
        "the sha256 of its 'logits' array": (meta, {**arrays, "logits": logits}),
        "the sha256 of its 'test_predictions' array": (meta, {**arrays, "test_predictions": arrays[
            "test_predictions"][::-1].copy()}),
        "records checksums for ['logits', 'test_predictions']": (meta, {**arrays, "extra": np.zeros(3)}),
        "its meta entry does not match the sha256": ({**meta, "teacher_fingerprint": "0" * 64}, arrays),
    }
    with np.load(saved) as z:
        digest = str(z["meta_sha256"]) if "meta_sha256" in z.files else None
    for message, (m, a) in cases.items():
        write_npz(altered, m, a, sign=False, meta_sha256=digest)  # the meta's sha256 as written
        with pytest.raises(CacheError, match="is corrupted") as e:
            load_cache(altered)
        assert message in str(e.value) and str(altered) in str(e.value) and "recipe=cache" in str(e.value)


def test_a_cache_made_by_an_older_distill_is_refused(saved, tmp_path):
    meta, arrays = read_npz(saved)
    old = {k: v for k, v in meta.items() if k not in ("checksums", "views", "data")}
    with open(tmp_path / "v1.npz", "wb") as f:  # version 1: no views, data record, checksums or meta_sha256
        np.savez(f, meta=np.array(json.dumps({**old, "version": 1})), **arrays)
    with pytest.raises(CacheError, match=r"was made by an older distill \(format version 1.*recipe=cache"):
        load_cache(tmp_path / "v1.npz")


def test_the_teacher_fingerprint_is_that_of_its_checkpoint(teacher, tmp_path):
    """A run can check a cache against teacher.checkpoint by hashing the file's tensors, without a model."""
    save_checkpoint(tmp_path / "t.pt", {"model": teacher.state_dict()})
    from_file = load_checkpoint(tmp_path / "t.pt")["model"]
    assert teacher_fingerprint(from_file) == teacher_fingerprint(teacher) == teacher_fingerprint(teacher.state_dict())
    reordered = dict(reversed(list(from_file.items())))
    assert teacher_fingerprint(reordered) == teacher_fingerprint(teacher)


def test_a_cache_of_another_teacher_architecture_is_refused(teacher, digits_splits, tmp_path):
    spec = {"name": "mlp", "kwargs": {"hidden": [64]}, "num_classes": 10, "in_shape": [1, 8, 8]}
    path = save_cache(tmp_path / "c.npz", build_cache(teacher, digits_splits, model_spec=spec))
    same = {**spec, "kwargs": {"hidden": (64,)}, "in_shape": (1, 8, 8), "extra": "ignored"}
    load_cache(path, data=digits_splits, teacher=teacher.state_dict(), model_spec=same)
    other = {**spec, "kwargs": {"hidden": [64], "dropout": 0.5}}  # the same weights fit it
    with pytest.raises(CacheError, match="does not match this run's teacher \\(a different teacher architecture") as e:
        load_cache(path, data=digits_splits, teacher=teacher, model_spec=other)
    assert "kwargs" in str(e.value) and "dropout=0.5" in str(e.value)
    with pytest.raises(CacheError, match="does not record its teacher's architecture"):
        load_cache(save_cache(tmp_path / "bare.npz", build_cache(teacher, digits_splits)), model_spec=spec)


def test_a_cache_of_other_views_is_refused(teacher, digits_splits, tmp_path):
    """A cache records what the teacher saw (here: the central crops of fix/cc, through the view wrapper)."""
    views = Views(mode="fix/cc", image_size=(8, 8))
    torch.manual_seed(0)
    cache = build_cache(fixed_teacher_view(views)(teacher), digits_splits)
    assert cache.views == {"mode": "fix/cc", "size": [8, 8]} == views_module.teacher_inputs(views)
    assert cache.teacher_fingerprint == teacher_fingerprint(teacher)  # the teacher itself, not its wrapper
    assert torch.equal(cache.test_predictions, evaluate(teacher, digits_splits.test).predictions)  # plain images
    path = save_cache(tmp_path / "cc.npz", cache)
    load_cache(path, data=digits_splits, teacher=teacher, views=views_module.teacher_inputs(views))
    plain = views_module.teacher_inputs(None, digits_splits.in_shape)
    rs = views_module.teacher_inputs(Views(mode="fix/rs", image_size=(8, 8)))
    assert plain == rs == {"mode": "none", "size": [8, 8]}
    with pytest.raises(CacheError, match="does not match this run's views") as e:
        load_cache(path, data=digits_splits, teacher=teacher, views=plain)
    assert "views fix/cc at 8x8" in str(e.value) and "the plain examples (8x8)" in str(e.value)
    ens = views_module.teacher_inputs(Views(mode="fix/ic_ens", image_size=(8, 8), scale=(0.5, 1.0)), crops=4)
    assert ens == {"mode": "fix/ic_ens", "size": [8, 8], "scale": [0.5, 1.0], "ratio": [0.75, 4 / 3],
                   "flip": False, "crops": 4}


def test_cached_teacher_errors(teacher, digits_splits):
    cached = CachedTeacher(build_cache(teacher, digits_splits.train))
    x = digits_splits.train.x[:3]
    with pytest.raises(ValueError, match="index=None"):
        cached(x)
    for bad in (torch.tensor([0, 1, 1212]), torch.tensor([-1, 0, 1])):
        with pytest.raises(CacheError, match="outside the teacher cache's 1212 rows"):
            cached(x, bad)
    for bad in (torch.tensor([0, 1]), torch.tensor([0.0, 1.0, 2.0])):
        with pytest.raises(ValueError, match="one integer position per input"):
            cached(x, bad)


def test_a_cached_teacher_gathers_rows_without_a_range_check_per_call(teacher, digits_splits, monkeypatch):
    """No host sync per step: an in-range call neither reduces nor reads its index (fit checks the cache's size
    once, before training); its rows are the stored ones, exactly."""
    cache = build_cache(teacher, digits_splits.train)
    topk = build_cache(teacher, digits_splits.train, topk=3, temperature=4.0, dtype="float16")
    index = torch.tensor([5, 0, 1211, 5], dtype=torch.int32)

    def no_sync(*args, **kwargs):
        raise AssertionError("a host sync in the call")

    monkeypatch.setattr(torch, "aminmax", no_sync)
    monkeypatch.setattr(torch.Tensor, "tolist", no_sync)
    monkeypatch.setattr(torch.Tensor, "item", no_sync)
    x = digits_splits.train.x[:4]
    assert torch.equal(CachedTeacher(cache)(x, index).logits, cache.logits[index.long()])
    got = CachedTeacher(topk)(x, index).topk
    assert torch.equal(got.indices, topk.indices[index.long()])
    assert torch.equal(got.log_probs, topk.log_probs[index.long()].float())


def test_fit_refuses_a_cache_smaller_than_the_training_set_before_training(teacher, digits_splits):
    part = type(digits_splits.train)(digits_splits.train.x[:100], digits_splits.train.y[:100])
    cached = CachedTeacher(build_cache(teacher, part))
    student = create_model("mlp", 10, digits_splits.in_shape, hidden=[16])
    with pytest.raises(CacheError, match="the training set has 1212 examples but the teacher cache only 100 rows"):
        fit(student, KnowledgeDistillation(4.0, 0.9), digits_splits, TrainConfig(epochs=1), teacher=cached,
            progress=None, callbacks=[_NoStep()])


class _NoStep(Callback):
    """Fails the test if a training step is logged (the refusal must come before training)."""

    def on_log_step(self, *args):
        raise AssertionError("trained")

    def on_epoch_end(self, *args):
        raise AssertionError("trained")


# -- distilling from a cache -------------------------------------------------------------------


def test_fit_from_a_full_logit_cache_equals_fit_from_the_live_teacher(teacher, digits_splits):
    cfg = TrainConfig(epochs=3, batch_size=64, optimizer=OptimizerConfig(lr=0.05), log_every=1000)

    def distil(source):
        torch.manual_seed(4)
        student = create_model("mlp", 10, digits_splits.in_shape, hidden=[16], dropout=0.1)
        fit(student, KnowledgeDistillation(4.0, 0.9), digits_splits, cfg, teacher=source, seed=3, progress=None)
        return student.state_dict()

    live = distil(FrozenTeacher(teacher))
    cached = distil(CachedTeacher(build_cache(teacher, digits_splits.train)))
    for name, value in live.items():
        torch.testing.assert_close(cached[name], value, rtol=0, atol=1e-6)


def test_a_student_learns_from_a_float16_top3_cache_alone(teacher, digits_splits):
    cache = build_cache(teacher, digits_splits, topk=3, temperature=4.0, dtype="float16")
    torch.manual_seed(0)
    student = create_model("mlp", 10, digits_splits.in_shape, hidden=[32])
    fit(student, KnowledgeDistillation(4.0, alpha=1.0), digits_splits, TrainConfig(epochs=8, batch_size=64),
        teacher=CachedTeacher(cache), progress=None)  # alpha=1: the labels are never used
    ev = evaluate(student, digits_splits.test)
    assert ev.accuracy > 0.85
    assert float((ev.predictions == cache.test_predictions).float().mean()) > 0.85


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_topk_kd_loss_matches_numpy_and_equals_kd_loss_at_k_equal_c():
    rng = np.random.default_rng(0)
    s, t, T, k = rng.normal(size=(6, 7)) * 3, rng.normal(size=(6, 7)) * 3, 2.5, 3
    log_p = np_log_softmax(t / T)
    idx = np.argsort(-log_p, axis=-1)[:, :k]
    log_p_k = np.take_along_axis(log_p, idx, -1)
    log_q = np_log_softmax(s / T)
    in_k = np.zeros_like(s, dtype=bool)
    np.put_along_axis(in_k, idx, True, -1)
    p_tail = 1 - np.exp(log_p_k).sum(-1)
    q_tail = np.where(in_k, 0, np.exp(log_q)).sum(-1)
    kl = (np.exp(log_p_k) * (log_p_k - np.take_along_axis(log_q, idx, -1))).sum(-1) + p_tail * np.log(p_tail / q_tail)
    want = T**2 * kl.mean()
    got = topk_kd_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(idx), torch.tensor(log_p_k,
                       dtype=torch.float32), T)
    assert float(got) == pytest.approx(want, rel=1e-5)
    s64 = torch.tensor(s, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: topk_kd_loss(z, torch.tensor(idx), torch.tensor(log_p_k), T), (s64,))

    student = torch.tensor(s, dtype=torch.float32, requires_grad=True)
    teacher_logits = torch.tensor(t, dtype=torch.float32)
    full_lp, full_idx = F.log_softmax(teacher_logits / T, -1).topk(7, dim=-1)
    a = topk_kd_loss(student, full_idx, full_lp, T)
    (grad_a,) = torch.autograd.grad(a, student)
    b = kd_loss(student, teacher_logits, T, alpha=1.0)
    (grad_b,) = torch.autograd.grad(b, student)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(grad_a, grad_b)


# -- the recipes and the command line ----------------------------------------------------------


def tiny_config(tmp_path, recipe: str, *, teacher: dict | None = None, data: dict | None = None,
                distill: dict | None = None, **cache):
    base = {"name": recipe, "recipe": recipe, "data": {"name": "digits", **(data or {})},
            "train": {"epochs": 2, "batch_size": 64},
            "teacher": teacher or {"model": {"name": "mlp", "hidden": [48]}},
            "student": {"model": {"name": "mlp", "hidden": [16]}},
            "distill": {"temperature": 4.0, "cache": {"path": str(tmp_path / "teacher.npz"), **cache},
                        **(distill or {})}}
    return load_config(base=base)


def no_teacher_may_be_built(monkeypatch):
    """Fail if the teacher is built for real (the run checks every model's config on the meta device)."""
    import distill.recipes.common as common
    import distill.recipes.hinton as hinton

    def refuse(*args, **kwargs):
        raise AssertionError("the teacher was built")

    real = common.create_model

    def student_only(name, num_classes, in_shape, **kwargs):
        model = real(name, num_classes, in_shape, **kwargs)
        if next(model.parameters()).device.type != "meta" and kwargs.get("hidden") != [16]:
            raise AssertionError(f"a model other than the student was built: {name} {kwargs}")
        return model

    monkeypatch.setattr(hinton, "_teacher_and_spec", refuse)
    monkeypatch.setattr(hinton, "_teacher_model", refuse)
    monkeypatch.setattr(common, "create_model", student_only)


def test_cache_recipe_then_distill_and_compare_without_the_teacher(tmp_path, monkeypatch):
    built = run_recipe(tiny_config(tmp_path, "cache", topk=4), run_dir=tmp_path / "cache", progress=False)
    info = built["teacher_cache"]
    assert set(built["models"]) == {"teacher"}
    assert (info["kind"], info["k"], info["dtype"], info["temperature"]) == ("topk", 4, "float32", 4.0)
    assert info["size_bytes"] == (tmp_path / "teacher.npz").stat().st_size
    assert info["train_top1_agreement"] == 1.0
    assert info["teacher_test"]["accuracy"] == built["models"]["teacher"]["test_acc"]

    no_teacher_may_be_built(monkeypatch)
    results = run_recipe(tiny_config(tmp_path, "distill", topk=4), run_dir=tmp_path / "distill", progress=False)
    assert list(results["models"]) == ["teacher", "distilled"] and not results["teacher_cache"]["built_by_this_run"]
    assert results["teacher_cache"]["teacher_test"] == info["teacher_test"]
    measured = built["models"]["teacher"]
    assert results["models"]["teacher"] == {  # what the cache recorded; the rest is unknown without the model
        "params": None, "test_acc": measured["test_acc"], "test_errors": measured["test_errors"],
        "test_nll": pytest.approx(measured["test_nll"], rel=1e-5), "test_ece": None, "agreement": 1.0,
        "latency_ms_per_1000": None, "latency_on": None, "size_bytes": None, "n_test": measured["n_test"], "from_cache": True}
    table = (tmp_path / "distill" / "report.md").read_text().splitlines()
    assert table[-2].replace(" ", "") == (f"|teacher|-|{100 * measured['test_acc']:.2f}%|{measured['test_errors']}/"
                                          f"{measured['n_test']}|100.00%|{measured['test_nll']:.4f}|-|-|-|")
    teacher, _ = build_model_from_checkpoint(tmp_path / "cache" / "teacher" / "best.pt")
    student, _ = build_model_from_checkpoint(tmp_path / "distill" / "distilled" / "best.pt")
    data = make_splits(load_dataset("digits"), val_size=0.1)
    agreement = (predict_logits(student, data.test.x).argmax(-1) == predict_logits(teacher, data.test.x).argmax(-1))
    assert results["models"]["distilled"]["agreement"] == pytest.approx(float(agreement.float().mean()))
    assert "train/kd" in (tmp_path / "distill" / "metrics.jsonl").read_text()

    cfg = tiny_config(tmp_path, "compare", topk=4).model_copy(update={"teacher": None})  # no teacher section at all
    results = run_recipe(cfg, run_dir=tmp_path / "compare", progress=False)
    assert list(results["models"]) == ["teacher", "baseline", "distilled"]
    assert results["models"]["teacher"]["test_errors"] == built["models"]["teacher"]["test_errors"]


def test_distill_builds_a_missing_cache_then_refuses_one_that_does_not_fit(tmp_path):
    results = run_recipe(tiny_config(tmp_path, "distill"), run_dir=tmp_path / "first", progress=False)
    assert set(results["models"]) == {"teacher", "distilled"} and results["teacher_cache"]["built_by_this_run"]
    assert results["models"]["teacher"]["agreement"] == 1.0 and (tmp_path / "teacher.npz").exists()
    for cfg, message in [
        (tiny_config(tmp_path, "distill", topk=3), "the config asks for top-3"),
        (tiny_config(tmp_path, "distill", dtype="float16"), "the config asks for full logits in float16"),
    ]:
        with pytest.raises(ValueError, match=message):
            run_recipe(cfg, run_dir=tmp_path / "refused", progress=False)
    run_recipe(tiny_config(tmp_path, "cache", topk=3), run_dir=tmp_path / "top3", progress=False)
    cfg = tiny_config(tmp_path, "distill", topk=3)
    with pytest.raises(ValueError, match="temperature 4.0 but distill.temperature is 2.0"):
        run_recipe(cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"temperature": 2.0})}),
                   run_dir=tmp_path / "refused", progress=False)


def test_distill_checks_a_cache_against_the_teachers_checkpoint_and_architecture(tmp_path, monkeypatch):
    """distill never loads the teacher a cache stands for, but it hashes teacher.checkpoint's tensors and
    compares the architecture the config names (issue 11 item 6)."""
    run_recipe(tiny_config(tmp_path, "cache"), run_dir=tmp_path / "cache", progress=False)
    ckpt = tmp_path / "cache" / "teacher" / "best.pt"
    no_teacher_may_be_built(monkeypatch)
    results = run_recipe(tiny_config(tmp_path, "distill", teacher={"checkpoint": str(ckpt)}),
                         run_dir=tmp_path / "same", progress=False)
    assert "distilled" in results["models"] and not results["teacher_cache"]["built_by_this_run"]

    other = load_checkpoint(ckpt)
    other["model"]["classifier.bias"] = other["model"]["classifier.bias"] + 0.1
    save_checkpoint(tmp_path / "other.pt", {k: v for k, v in other.items() if k != "format"})
    with pytest.raises(CacheError, match=r"does not match this run's teacher \(a different teacher: its weights") as e:
        run_recipe(tiny_config(tmp_path, "distill", teacher={"checkpoint": str(tmp_path / "other.pt")}),
                   run_dir=tmp_path / "other", progress=False)
    assert "recipe=cache" in str(e.value) and "teacher.checkpoint" in str(e.value)
    for teacher in ({"model": {"name": "mlp", "hidden": [48], "dropout": 0.5}, "checkpoint": str(ckpt)},
                    {"model": {"name": "mlp", "hidden": [32]}}):  # with or without a checkpoint
        with pytest.raises(CacheError, match="a different teacher architecture"):
            run_recipe(tiny_config(tmp_path, "distill", teacher=teacher), run_dir=tmp_path / "arch", progress=False)
    assert not (tmp_path / "other" / "distilled").exists()


def test_distill_refuses_a_cache_of_other_data_or_of_the_training_set_for_a_transfer_set(tmp_path):
    run_recipe(tiny_config(tmp_path, "cache"), run_dir=tmp_path / "cache", progress=False)
    with pytest.raises(CacheError, match="a different dataset/split/normalization") as e:
        run_recipe(tiny_config(tmp_path, "distill", data={"split_seed": 1}), run_dir=tmp_path / "seed", progress=False)
    assert "changed: " in str(e.value) and "split_seed 0 -> 1" in str(e.value)

    rng = np.random.default_rng(0)  # 300 other 8x8 images: the cache's first 300 rows would have been used for them
    np.savez(tmp_path / "other.npz", x_train=rng.integers(0, 256, (300, 8, 8), dtype=np.uint8),
             y_train=np.zeros(300, np.int64), x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.zeros(2, np.int64))
    transfer = {"alpha": 1.0, "transfer": {"name": "npz", "path": str(tmp_path / "other.npz")}}
    with pytest.raises(CacheError, match="does not match this run's data") as e:
        run_recipe(tiny_config(tmp_path, "distill", distill=transfer), run_dir=tmp_path / "transfer", progress=False)
    assert "rows 1212 -> 300" in str(e.value) and 'transfer null -> "npz"' in str(e.value)
    fresh = tiny_config(tmp_path, "distill", distill=transfer, path=str(tmp_path / "transfer.npz"))
    results = run_recipe(fresh, run_dir=tmp_path / "fresh", progress=False)  # built over the transfer set
    assert results["teacher_cache"]["rows"] == 300 and results["transfer"]["train_examples"] == 300


def test_a_fixed_mode_builds_and_reads_a_cache_of_its_views_and_refuses_one_of_others(tmp_path, monkeypatch):
    cc = {"views": {"mode": "fix/cc"}}
    results = run_recipe(tiny_config(tmp_path, "distill", distill=cc, path=str(tmp_path / "cc.npz")),
                         run_dir=tmp_path / "build", progress=False)
    assert results["teacher_cache"]["views"] == {"mode": "fix/cc", "size": [8, 8]}
    run_recipe(tiny_config(tmp_path, "cache"), run_dir=tmp_path / "cache", progress=False)  # the plain images
    no_teacher_may_be_built(monkeypatch)
    results = run_recipe(tiny_config(tmp_path, "distill", distill=cc, path=str(tmp_path / "cc.npz")),
                         run_dir=tmp_path / "read", progress=False)
    assert not results["teacher_cache"]["built_by_this_run"]
    for cfg, saw, needs in [
        (tiny_config(tmp_path, "distill", path=str(tmp_path / "cc.npz")), "views fix/cc at 8x8", "the plain examples"),
        (tiny_config(tmp_path, "distill", distill=cc), "the plain examples", "views fix/cc at 8x8"),
    ]:
        with pytest.raises(CacheError, match="does not match this run's views") as e:
            run_recipe(cfg, run_dir=tmp_path / "refused", progress=False)
        assert f"outputs on {saw}" in str(e.value) and f"must see {needs}" in str(e.value)


def test_the_shipped_config_through_the_command_line(tmp_path, monkeypatch, capsys):
    path = str(tmp_path / "digits_teacher.npz")
    args = ["run", "configs/cache_digits.yaml", "--output-dir", str(tmp_path), "--quiet", "--set",
            f"distill.cache.path={path}", "--set", "train.epochs=3", "--set", "student.train.epochs=3"]
    monkeypatch.chdir(ROOT)
    assert main(["run", "configs/cache_digits.yaml", "--output-dir", str(tmp_path), "--quiet", "--set",
                 f"distill.cache.path={tmp_path / 'missing.npz'}", "--set", "teacher=null", "--set",
                 "recipe=distill", "--name", "refused"]) == 1
    assert "does not exist and the config has no teacher" in capsys.readouterr().err

    assert main(args + ["--name", "cache"]) == 0
    assert load_cache(path).dtype == "float16"
    import distill.recipes.hinton as hinton

    monkeypatch.setattr(hinton, "_teacher_and_spec", lambda run: pytest.fail("the teacher was built"))
    assert main(args + ["--set", "recipe=distill", "--name", "from_cache"]) == 0
    results = json.loads((tmp_path / "from_cache" / "results.json").read_text())
    assert set(results["models"]) == {"teacher", "distilled"} and results["models"]["distilled"]["agreement"] > 0.8
    assert results["models"]["teacher"]["from_cache"] and results["models"]["teacher"]["params"] is None
    assert results["teacher_cache"]["teacher_model_spec"]["name"] == "cnn"
