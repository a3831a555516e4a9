"""Batched augmentations: crop boxes, crop_resize, flips, mixup, cutmix (distill.data.augment)."""

import math

import pytest
import torch
import torch.nn.functional as F

from distill.data.augment import (
    Mix,
    center_boxes,
    center_crop,
    crop_resize,
    cutmix,
    cutmix_images,
    flip_flags,
    inception_boxes,
    inception_crop,
    mixup,
    mixup_images,
    pad_crop_boxes,
    random_crop,
    random_flip,
    random_shift,
    resize,
)


def images(n=6, c=3, h=12, w=20, dtype=torch.float32, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def full_boxes(n):
    return torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(n, 4)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- crop_resize: exact cases


@pytest.mark.parametrize("c,h,w", [(1, 28, 28), (3, 32, 32), (3, 12, 20)])
def test_full_box_at_input_size_is_identity(c, h, w):
    x = images(c=c, h=h, w=w)
    assert torch.equal(crop_resize(x, full_boxes(len(x)), (h, w)), x)
    assert torch.equal(crop_resize(x, full_boxes(len(x)), (h, w), padding_mode="replicate"), x)


@pytest.mark.parametrize("size", [(12, 20), (5, 7), (24, 33), (12, 9), (30, 8), 16])
@pytest.mark.parametrize("antialias", [True, False])
def test_resize_matches_interpolate(size, antialias):
    x = images(dtype=torch.float64)
    expected = F.interpolate(x, size, mode="bilinear", antialias=antialias, align_corners=False)
    torch.testing.assert_close(resize(x, size, antialias=antialias), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [(6, 10), (3, 5), (13, 17), (2, 2)])
def test_top_left_quarter_equals_slice_then_resize(size):
    x = images(dtype=torch.float64)  # 12 x 20: the quarter is 6 x 10
    quarter = torch.tensor([0.0, 0.0, 0.5, 0.5]).expand(len(x), 4)
    expected = F.interpolate(x[..., :6, :10], size, mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(crop_resize(x, quarter, size), expected, rtol=0, atol=1e-12)
    if size == (6, 10):
        assert torch.equal(crop_resize(x, quarter, size), x[..., :6, :10])


def test_integer_boxes_differ_per_sample_and_are_slices():
    x = images(n=3, h=28, w=28, dtype=torch.float64)
    # pixel boxes (x0, y0, x1, y1): k / 28 is not exact in floating point, the result still is
    pixel_boxes = [(3, 5, 20, 17), (0, 0, 7, 28), (11, 2, 28, 9)]
    boxes = torch.tensor(pixel_boxes, dtype=torch.float32) / 28
    out = crop_resize(x, boxes, (10, 10))
    for i, (x0, y0, x1, y1) in enumerate(pixel_boxes):
        expected = F.interpolate(x[i : i + 1, :, y0:y1, x0:x1], (10, 10), mode="bilinear", antialias=True)
        torch.testing.assert_close(out[i : i + 1], expected, rtol=0, atol=1e-12)


def test_flip_is_exact_reversal_of_width():
    x = images()
    flips = torch.tensor([True, False, True, True, False, False])
    out = crop_resize(x, full_boxes(len(x)), x.shape[-2:], flips)
    assert torch.equal(out[flips], x[flips].flip(-1))
    assert torch.equal(out[~flips], x[~flips])
    assert torch.equal(random_flip(x, p=1.0), x.flip(-1))
    assert torch.equal(random_flip(x, p=0.0), x)


def test_flip_mirrors_the_crop_not_the_image():
    x = images(dtype=torch.float64)
    boxes = torch.tensor([0.1, 0.2, 0.6, 0.9], dtype=torch.float64).expand(len(x), 4)
    flips = torch.ones(len(x), dtype=torch.bool)
    mirrored = crop_resize(x, boxes, (7, 9), flips)
    torch.testing.assert_close(mirrored, crop_resize(x, boxes, (7, 9)).flip(-1), rtol=0, atol=1e-12)


def test_padded_box_zeros_and_replicate():
    x = images(n=1, c=1, h=6, w=8, dtype=torch.float64)
    shifted = torch.tensor([[-2 / 8, 1 / 6, 6 / 8, 7 / 6]])  # 2 px left of the image, 1 px below it
    zeros = crop_resize(x, shifted, (6, 8))
    expected = F.pad(x, (2, 0, 0, 1))[..., 1:, :8]  # zero-pad, then take the window
    assert torch.equal(zeros, expected)
    replicate = crop_resize(x, shifted, (6, 8), padding_mode="replicate")
    assert torch.equal(replicate, F.pad(x, (2, 0, 0, 1), mode="replicate")[..., 1:, :8])


def test_box_outside_image_is_zero_or_edge():
    x = images(n=2, c=1, h=5, w=5)
    outside = torch.tensor([[1.5, 0.0, 2.5, 1.0], [-3.0, -3.0, -2.0, -2.0]])
    assert torch.equal(crop_resize(x, outside, (5, 5)), torch.zeros(2, 1, 5, 5))
    edge = crop_resize(x, outside, (5, 5), padding_mode="replicate")
    torch.testing.assert_close(edge[0], x[0, :, :, -1:].expand(1, 5, 5))
    torch.testing.assert_close(edge[1], x[1, :, :1, :1].expand(1, 5, 5))


# ---------------------------------------------------------------- crop_resize: ranges, consistency, formats


@pytest.mark.parametrize("padding_mode", ["zeros", "replicate"])
def test_crops_stay_within_input_range(padding_mode):
    x = torch.rand(16, 3, 32, 32, generator=gen()) * 4 + 1  # values in [1, 5]: zero padding is outside
    boxes = inception_boxes(16, (32, 32), generator=gen(1))
    for size in [(8, 8), (32, 32), (57, 41)]:
        out = crop_resize(x, boxes, size, padding_mode=padding_mode)
        assert out.min() >= x.min() - 1e-6 and out.max() <= x.max() + 1e-6
    padded = random_crop(x, 4, generator=gen(2), padding_mode=padding_mode)
    lowest = 0.0 if padding_mode == "zeros" else x.min()
    assert padded.min() >= lowest and padded.max() <= x.max()


def test_same_boxes_at_two_sizes_are_consistent():
    # a smooth image, so that resampling it twice or once gives nearly the same pixels
    h, w = 48, 64
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    x = torch.stack([torch.sin(3 * xx + 2 * yy), torch.cos(2 * xx - 3 * yy), xx * yy])[None].repeat(8, 1, 1, 1)
    boxes = inception_boxes(8, (h, w), scale=(0.3, 1.0), generator=gen())
    flips = flip_flags(8, generator=gen(1))
    large, small = crop_resize(x, boxes, 32, flips), crop_resize(x, boxes, 16, flips)
    assert (resize(large, 16) - small).abs().max() < 0.02
    assert (resize(large, 16) - small.flip(-1)).abs().max() > 0.1  # the check can fail


def test_float64_and_half_precision_keep_dtype():
    for dtype in [torch.float64, torch.bfloat16, torch.float16]:
        x = images(dtype=dtype)
        g = gen()
        assert inception_crop(x, 9, generator=g).dtype == dtype
        assert random_crop(x, 2, generator=g).dtype == dtype
        assert center_crop(x, 8).dtype == dtype
        assert random_flip(x, generator=g).dtype == dtype
        assert mixup(x, 1.0, generator=g).images.dtype == dtype
        assert cutmix(x, 1.0, generator=g).images.dtype == dtype
        assert torch.equal(resize(x, x.shape[-2:]), x)
    assert mixup(images(dtype=torch.float64), 1.0).lam.dtype == torch.float64


def test_channels_last_input_gives_same_values_and_format():
    x = images(c=3, h=16, w=16)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    boxes = inception_boxes(len(x), (16, 16), generator=gen())
    out, out_cl = crop_resize(x, boxes, (9, 11)), crop_resize(x_cl, boxes, (9, 11))
    torch.testing.assert_close(out_cl, out, rtol=0, atol=1e-6)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(mixup(x_cl, 1.0, generator=gen()).images, mixup(x, 1.0, generator=gen()).images)
    assert torch.equal(random_crop(x_cl, 3, generator=gen()), random_crop(x, 3, generator=gen()))


def test_empty_batch():
    x = torch.zeros(0, 3, 8, 8)
    assert inception_crop(x, 4).shape == (0, 3, 4, 4)
    assert mixup(x, 1.0).images.shape == (0, 3, 8, 8)
    assert cutmix(x, 1.0).images.shape == (0, 3, 8, 8)


# ---------------------------------------------------------------- sampled boxes


@pytest.mark.parametrize("h,w", [(32, 32), (28, 40), (40, 28)])
def test_inception_boxes_follow_scale_and_ratio(h, w):
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    boxes = inception_boxes(4000, (h, w), scale, ratio, generator=gen()).double()
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 1).all() and (bw > 0).all() and (bh > 0).all()
    area, aspect = bw * bh, (bw * w) / (bh * h)
    eps = 1e-5
    assert (area >= scale[0] - eps).all() and (area <= scale[1] + eps).all()
    assert (aspect >= ratio[0] - eps).all() and (aspect <= ratio[1] + eps).all()
    # crops are placed all over the image; on a square image the log-aspect is symmetric about 0
    # (on others, rejecting the boxes that do not fit favours the image's own orientation)
    if h == w:
        assert abs(aspect.log().mean().item()) < 0.01
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert (centres.mean(0) - 0.5).abs().max() < 0.02 and centres.min() < 0.15 and centres.max() > 0.85


def test_inception_identity_at_neutral_parameters():
    x = images(h=16, w=16)
    assert torch.equal(inception_crop(x, 16, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=gen()), x)


def test_inception_fallback_when_nothing_fits():
    # a 8 x 64 strip: no box with aspect <= 4/3 and area >= half the image fits in it
    boxes = inception_boxes(5, (8, 64), scale=(0.5, 1.0), generator=gen()).double()
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    torch.testing.assert_close(bh, torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(bw * 64 / 8, torch.full((5,), 4 / 3, dtype=torch.float64))
    torch.testing.assert_close((boxes[:, 0] + boxes[:, 2]) / 2, torch.full((5,), 0.5, dtype=torch.float64))


def test_pad_crop_boxes_are_integer_shifts_in_range():
    boxes = pad_crop_boxes(2000, (28, 30), 4, generator=gen()).double()
    dx, dy = (boxes[:, 0] * 30).round(), (boxes[:, 1] * 28).round()
    torch.testing.assert_close(boxes[:, 0] * 30, dx)
    assert set(dx.long().tolist()) == set(range(-4, 5)) == set(dy.long().tolist())
    torch.testing.assert_close(boxes[:, 2:] - boxes[:, :2], torch.ones(2000, 2, dtype=torch.float64))


def test_random_crop_is_pad_then_crop():
    x = images(n=8, h=10, w=12)
    g = gen(5)
    out = random_crop(x, 3, generator=g)
    boxes = pad_crop_boxes(8, (10, 12), 3, generator=gen(5))
    padded = F.pad(x, (3, 3, 3, 3))
    for i in range(8):  # the independent computation may loop
        left, top = round(boxes[i, 0].item() * 12) + 3, round(boxes[i, 1].item() * 10) + 3
        assert torch.equal(out[i], padded[i, :, top : top + 10, left : left + 12])
    assert torch.equal(random_crop(x, 0, generator=g), x)


def _random_shift_by_four_indices(x, max_shift, generator):
    """random_shift as it was: one 4-d advanced index into the padded batch."""
    n, c, h, w = x.shape
    s = max_shift
    padded = torch.nn.functional.pad(x, (s, s, s, s), mode="replicate")
    dy = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    rows = (torch.arange(h)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


@pytest.mark.parametrize("shape,shift", [((16, 1, 28, 28), 2), ((8, 3, 32, 32), 4), ((5, 3, 12, 20), 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_random_shift_by_two_gathers_equals_the_four_index_version(shape, shift, channels_last):
    x = torch.randn(*shape, generator=gen(shift))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(random_shift(x, shift, gen(7)), _random_shift_by_four_indices(x, shift, gen(7)))


def test_random_crop_replicate_is_random_shift():
    x = images(n=16, c=1, h=28, w=28)
    assert torch.equal(random_crop(x, 2, generator=gen(3), padding_mode="replicate"), random_shift(x, 2, gen(3)))


def test_center_boxes_and_crop():
    box = center_boxes(2, (375, 500), crop_fraction=0.875)[0].double()
    # a square of 0.875 x 375 px in the middle: "resize the short side to 256, crop 224"
    torch.testing.assert_close((box[2] - box[0]) * 500, torch.tensor(0.875 * 375, dtype=torch.float64))
    torch.testing.assert_close((box[3] - box[1]) * 375, torch.tensor(0.875 * 375, dtype=torch.float64))
    torch.testing.assert_close((box[:2] + box[2:]) / 2, torch.full((2,), 0.5, dtype=torch.float64))
    x = images(h=16, w=16)
    assert torch.equal(center_crop(x, 16, crop_fraction=1.0), x)
    assert torch.equal(center_crop(x, 8, crop_fraction=0.5), x[..., 4:12, 4:12])
    assert center_crop(images(h=12, w=20), (6, 9)).shape == (6, 3, 6, 9)


# ---------------------------------------------------------------- randomness


def test_seeded_generator_reproduces_and_different_seeds_differ():
    x = images(n=32, h=16, w=16)

    def pipeline(seed: int) -> torch.Tensor:
        g = gen(seed)
        y = random_flip(inception_crop(x, 12, generator=g), generator=g)
        y = random_crop(y, 2, generator=g)
        return cutmix(mixup(y, 0.4, generator=g).images, 1.0, generator=g).images

    assert torch.equal(pipeline(0), pipeline(0))
    assert not torch.allclose(pipeline(0), pipeline(1))
    torch.manual_seed(7)
    a = inception_crop(x, 12)
    torch.manual_seed(7)
    assert torch.equal(inception_crop(x, 12), a)


def test_parameters_differ_within_a_batch():
    n = 64
    boxes = inception_boxes(n, (32, 32), generator=gen())
    assert len(torch.unique(boxes, dim=0)) == n
    assert 0 < flip_flags(n, generator=gen()).sum() < n
    assert len(torch.unique(pad_crop_boxes(n, (32, 32), 4, generator=gen()), dim=0)) > 20
    mix = mixup(images(n=n), 1.0, generator=gen())
    assert len(torch.unique(mix.lam)) == n
    assert sorted(mix.permutation.tolist()) == list(range(n))
    assert len(torch.unique(cutmix(images(n=n), 1.0, generator=gen()).boxes, dim=0)) == n


# ---------------------------------------------------------------- mixup and cutmix


def test_mixup_is_a_convex_combination():
    x = images(n=16, dtype=torch.float64)
    mix = mixup(x, 0.4, generator=gen())
    assert isinstance(mix, Mix) and mix.lam.shape == (16,) and mix.boxes is None
    assert ((mix.lam >= 0) & (mix.lam <= 1)).all()
    lam = mix.lam[:, None, None, None]
    other = x[mix.permutation]
    torch.testing.assert_close(mix.images, lam * x + (1 - lam) * other, rtol=0, atol=1e-12)
    assert (mix.images >= torch.minimum(x, other) - 1e-12).all()
    assert (mix.images <= torch.maximum(x, other) + 1e-12).all()


def test_mixup_images_at_lambda_one_and_zero_and_per_batch():
    x = images()
    permutation = torch.randperm(len(x), generator=gen())
    assert torch.equal(mixup_images(x, torch.ones(len(x)), permutation), x)
    assert torch.equal(mixup_images(x, 0.0, permutation), x[permutation])
    torch.testing.assert_close(mixup_images(x, 0.3, permutation), 0.3 * x + 0.7 * x[permutation])


def test_mixup_lambda_follows_beta():
    for alpha in [0.2, 1.0, 4.0]:
        lam = mixup(torch.zeros(20000, 1, 1, 1), alpha, generator=gen()).lam.double()
        assert abs(lam.mean().item() - 0.5) < 0.01
        assert abs(lam.var().item() - 1 / (4 * (2 * alpha + 1))) < 0.01
    lam = mixup(torch.zeros(20000, 1, 1, 1), 1.0, generator=gen()).lam  # Beta(1, 1) is uniform
    histogram = torch.histc(lam, bins=10, min=0, max=1) / 20000
    assert (histogram - 0.1).abs().max() < 0.015


def test_mix_targets_mixes_labels():
    x = images(n=8)
    y = torch.arange(8) % 3
    one_hot = F.one_hot(y, 3).float()
    for mix in [mixup(x, 1.0, generator=gen()), cutmix(x, 1.0, generator=gen())]:
        soft = mix.mix_targets(one_hot)
        torch.testing.assert_close(soft.sum(-1), torch.ones(8))
        expected = mix.lam[:, None] * one_hot + (1 - mix.lam[:, None]) * one_hot[mix.permutation]
        torch.testing.assert_close(soft, expected)
    with pytest.raises(ValueError, match="one-hot"):
        mix.mix_targets(y)


def test_cutmix_pastes_a_box_and_reports_the_kept_fraction():
    x = images(n=32, h=16, w=24, dtype=torch.float64)
    mix = cutmix(x, 1.0, generator=gen())
    pasted = mix.images != x
    other = x[mix.permutation]
    assert torch.equal(mix.images[pasted], other[pasted])
    fixed_points = mix.permutation == torch.arange(32)
    kept = 1 - pasted[~fixed_points].all(dim=1).flatten(1).double().mean(1)
    torch.testing.assert_close(mix.lam[~fixed_points], kept)
    assert ((mix.lam > 0) & (mix.lam <= 1)).all()
    boxes = mix.boxes.double()
    assert (boxes >= 0).all() and (boxes <= 1).all()
    # the pasted region is the box: pixel centres inside it, as a rectangle
    for i in torch.nonzero(~fixed_points).flatten().tolist()[:5]:
        rows = ((torch.arange(16) + 0.5) / 16 >= boxes[i, 1]) & ((torch.arange(16) + 0.5) / 16 < boxes[i, 3])
        cols = ((torch.arange(24) + 0.5) / 24 >= boxes[i, 0]) & ((torch.arange(24) + 0.5) / 24 < boxes[i, 2])
        assert torch.equal(pasted[i].all(0), rows[:, None] & cols[None, :])


def test_cutmix_same_boxes_at_another_resolution():
    x = images(n=8, h=32, w=32)
    mix = cutmix(x, 1.0, generator=gen())
    small = resize(x, 16)
    small_mixed, small_lam = cutmix_images(small, mix.boxes, mix.permutation)
    assert small_mixed.shape == (8, 3, 16, 16)
    assert (small_lam - mix.lam).abs().max() < 0.15  # the same boxes, measured on a coarser grid
    assert torch.equal(cutmix_images(x, mix.boxes, mix.permutation)[0], mix.images)


# ---------------------------------------------------------------- errors


def test_errors_name_the_argument_and_shape():
    x = images()
    with pytest.raises(ValueError, match=r"inception_crop: x must be a batch of images \(N, C, H, W\), got shape"):
        inception_crop(x[0], 8)
    with pytest.raises(TypeError, match="floating point, got torch.uint8"):
        random_flip(torch.zeros(2, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"boxes must be a float tensor \(N, 4\) = \(6, 4\).*got shape \(6, 3\)"):
        crop_resize(x, torch.zeros(6, 3), 8)
    with pytest.raises(ValueError, match=r"flip must be a bool tensor \(N,\)"):
        crop_resize(x, full_boxes(6), 8, flip=torch.zeros(6))
    with pytest.raises(ValueError, match="padding_mode"):
        crop_resize(x, full_boxes(6), 8, padding_mode="reflect")
    with pytest.raises(ValueError, match="size must be a positive int"):
        resize(x, (0, 4))
    with pytest.raises(ValueError, match=r"scale must be \(low, high\) with 0 < low <= high <= 1"):
        inception_crop(x, 8, scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="ratio"):
        inception_boxes(4, (8, 8), ratio=(2.0, 1.0))
    with pytest.raises(ValueError, match="padding must be a whole number"):
        random_crop(x, -1)
    with pytest.raises(ValueError, match="crop_fraction"):
        center_crop(x, 8, crop_fraction=0.0)
    with pytest.raises(ValueError, match=r"p must be a probability"):
        random_flip(x, p=1.5)
    with pytest.raises(ValueError, match="mixup: alpha"):
        mixup(x, 0.0)
    with pytest.raises(ValueError, match=r"lam must be a scalar or \(N,\)"):
        mixup_images(x, torch.ones(3), torch.arange(6))
    with pytest.raises(ValueError, match=r"permutation must be an integer tensor \(N,\) = \(6,\)"):
        cutmix_images(x, full_boxes(6), torch.arange(5))


def test_beta_helper_handles_tiny_alpha():
    lam = mixup(torch.zeros(5000, 1, 1, 1), 0.01, generator=gen()).lam
    assert torch.isfinite(lam).all()
    assert math.isclose(lam.mean().item(), 0.5, abs_tol=0.05)
