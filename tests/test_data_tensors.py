import torch

from distill.data.augment import random_shift
from distill.data.sources import load_dataset
from distill.data.tensors import batch_indices, make_splits, stratified_split


def test_stratified_split_is_disjoint_proportional_and_seeded():
    y = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    tr, va = stratified_split(y, 20, seed=3)
    assert len(va) == 20 and len(tr) == 80
    assert set(tr.tolist()).isdisjoint(va.tolist()) and len(set(tr.tolist()) | set(va.tolist())) == 100
    assert torch.bincount(y[va]).tolist() == [12, 6, 2]
    assert torch.equal(stratified_split(y, 20, seed=3)[1], va)
    assert not torch.equal(stratified_split(y, 20, seed=4)[1], va)


def test_make_splits_normalizes_with_train_statistics_only():
    raw = load_dataset("digits")
    s = make_splits(raw, val_size=0.2, split_seed=0)
    n = raw.train_y.shape[0]
    assert len(s.train) + len(s.val) == n and len(s.test) == raw.test_y.shape[0]
    assert abs(float(s.train.x.mean())) < 1e-4  # one channel: train mean is exactly removed
    assert abs(float(s.train.x.std()) - 1) < 1e-3
    assert abs(float(s.test.x.mean())) > 1e-4  # test statistics were not used
    s2 = make_splits(raw, val_size=0.2, split_seed=0)
    assert torch.equal(s.val.y, s2.val.y) and torch.equal(s.val.x, s2.val.x)


def test_batch_indices_cover_an_epoch_and_depend_only_on_seed_and_epoch():
    batches = list(batch_indices(103, 10, seed=1, epoch=2))
    assert len(batches) == 10 and all(len(b) == 10 for b in batches)  # drop_last
    flat = torch.cat(batches)
    assert len(set(flat.tolist())) == 100
    again = torch.cat(list(batch_indices(103, 10, seed=1, epoch=2)))
    assert torch.equal(flat, again)
    assert not torch.equal(flat, torch.cat(list(batch_indices(103, 10, seed=1, epoch=3))))
    every = torch.cat(list(batch_indices(103, 10, shuffle=False, drop_last=False)))
    assert torch.equal(every, torch.arange(103))


def test_random_shift_moves_each_image_by_its_own_offset():
    x = torch.zeros(64, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0  # one bright pixel in the centre
    torch.manual_seed(0)
    out = random_shift(x, 2)
    assert out.shape == x.shape
    pos = out.view(64, -1).argmax(1)
    rows, cols = pos // 9, pos % 9
    assert out.sum(dim=(1, 2, 3)).eq(1).all()  # the pixel moved, it was not blurred or lost
    assert rows.sub(4).abs().le(2).all() and cols.sub(4).abs().le(2).all()
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10  # per-sample offsets differ
    assert torch.equal(random_shift(x, 0), x)


def test_random_shift_border_replicates_background():
    x = torch.full((4, 3, 8, 8), -0.5)
    assert torch.equal(random_shift(x, 2), x)


def test_labels_outside_the_class_range_are_refused():
    import pytest

    from distill.data.sources import RawDataset

    x = torch.zeros(4, 1, 8, 8)
    ok = torch.tensor([0, 1, 2, 1])
    with pytest.raises(ValueError, match=r"train label 3 is outside the class range \[0, 3\)"):
        RawDataset("mine", x, torch.tensor([0, 1, 3, 1]), x, ok, 3, ("a", "b", "c"), "test")
    with pytest.raises(ValueError, match=r"test label -1 is outside"):
        RawDataset("mine", x, ok, x, torch.tensor([0, -1, 2, 1]), 3, ("a", "b", "c"), "test")


def test_values_that_overflow_float32_while_normalizing_are_refused():
    """Finite float32 inputs whose statistics overflow (issue 11 item 14) are refused, not trained on."""
    import pytest

    from distill.data.sources import RawDataset

    x = torch.zeros(4, 1, 2, 2)
    x[1, 0, 1, 1] = x[2, 0, 0, 0] = 3e38  # the sum for the mean is inf in float32
    y = torch.tensor([0, 1, 0, 1])
    raw = RawDataset("huge", x, y, x.clone(), y, 2, ("a", "b"), "test")
    with pytest.raises(ValueError, match=r"huge: normalizing the train split gave a non-finite value at index \(0, 0,"):
        make_splits(raw, val_size=0)
