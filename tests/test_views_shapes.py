"""Teaching modes on inputs that are not ordinary images (issue 11, item 18): 1-D signals stored as one
row (N, C, 1, L) or one column (N, C, L, 1) get 1-D views (crops along the signal); shapes a mode
cannot handle are refused when the views are made, before anything trains."""

import numpy as np
import pytest
import torch

from distill.config import load_config
from distill.data.augment import crop_resize, mixup, pad_crop_segments, segment_boxes
from distill.recipes import run_recipe
from distill.views import MODES, Views, fixed_teacher_view, teacher_inputs

L = 64


def ramp(n: int = 16, length: int = L) -> torch.Tensor:
    """Signals whose sample j has the value j + 1 (0 is what a crop past the ends gives)."""
    return (torch.arange(length, dtype=torch.float32) + 1).expand(n, 2, 1, length).clone()


def g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_inception_mode_on_a_row_signal_crops_a_segment_of_the_length_it_draws():
    views = Views(mode="same/ic", image_size=(1, L), scale=(0.5, 1.0))
    student, teacher = views(ramp(), generator=g(3))
    assert student.shape == (16, 2, 1, L) and teacher is student
    # each view spans the segment it was cut from: at least half of the signal, never a sliver
    # (the 2-D inception box in a 1-pixel row was a central sliver of about 1 sample, stretched)
    spans = student.amax(dim=(1, 2, 3)) - student.amin(dim=(1, 2, 3))
    assert bool((spans >= 0.5 * L - 2).all())
    # exactly the segments of segment_boxes with the same draws, resampled to the whole length
    expected = crop_resize(ramp(), segment_boxes(16, (0.5, 1.0), generator=g(3)), (1, L))
    assert torch.equal(student, expected)


def test_segment_boxes_draw_a_length_then_a_place():
    boxes = segment_boxes(5, (0.25, 0.75), generator=g(1))
    draws = g(1)
    length = 0.25 + 0.5 * torch.rand(5, dtype=torch.float64, generator=draws)
    x0 = torch.rand(5, dtype=torch.float64, generator=draws) * (1 - length)
    assert torch.equal(boxes, torch.stack([x0, 0 * x0, x0 + length, 0 * x0 + 1], 1).float())


def test_mild_crop_on_a_row_signal_shifts_along_it_and_is_never_blank():
    x = ramp(200)
    student, _ = Views(mode="ind/rc", image_size=(1, L), padding=4)(x, generator=g(0))
    assert bool((student.abs().sum(dim=(1, 2, 3)) > 0).all())  # the 2-D crop blanked 8 of 9 rows
    shifts = torch.round(pad_crop_segments(200, L, 4, generator=g(0))[:, 0] * L).long()
    assert set(shifts.tolist()) == set(range(-4, 5))
    for view, d in zip(student, shifts.tolist()):
        expected = torch.zeros(L)
        lo, hi = max(0, -d), min(L, L - d)
        expected[lo:hi] = x[0, 0, 0, lo + d:hi + d]
        assert torch.equal(view[0, 0], expected)


def test_the_fixed_central_crop_of_a_signal_is_its_central_seven_eighths():
    views = Views(mode="fix/cc", image_size=(1, L), padding=2)
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return torch.zeros(x.shape[0], 3)

    fixed_teacher_view(views)(Spy())(ramp(2))
    box = torch.tensor([[1 / 16, 0.0, 15 / 16, 1.0]]).expand(2, 4)
    assert torch.equal(seen[0], crop_resize(ramp(2), box, (1, L)))
    assert float(seen[0].min()) > 4 and float(seen[0].max()) < L - 3  # samples 5..60 of 1..64


@pytest.mark.parametrize("mode", [m for m in MODES if m != "none"])
def test_a_column_signal_gets_the_views_of_the_same_signal_as_a_row(mode):
    row = ramp(8)
    column = row.transpose(-1, -2).contiguous()
    kw = dict(padding=3, scale=(0.3, 1.0), flip=True)
    as_row = Views(mode=mode, image_size=(1, L), **kw)(row, generator=g(5))
    as_column = Views(mode=mode, image_size=(L, 1), **kw)(column, generator=g(5))
    assert as_column[0].shape == (8, 2, L, 1)
    assert torch.equal(as_column[0], as_row[0].transpose(-1, -2))
    assert torch.equal(as_column[1], as_row[1].transpose(-1, -2))


# -- refused when the views are made ----------------------------------------------------------


def test_single_pixels_have_nothing_to_crop():
    with pytest.raises(ValueError, match=r"distill.views.mode=same/ic: the inputs are single pixels \(1x1\), which "
                                         r"have nothing to crop; the modes that apply are none, fix/rs and mixup"):
        Views(mode="same/ic", image_size=(1, 1))
    Views(mode="fix/rs", image_size=(1, 1))


def test_a_signal_keeps_its_length():
    with pytest.raises(ValueError, match=r"distill.views.student_size: the inputs are one row of 64 samples \(1x64: "
                                         r"1-D signals\), which the views crop along the signal and keep at its "
                                         r"length; unset distill.views.student_size"):
        Views(mode="same/rc", image_size=(1, L), student_size=(8, 8))


def test_a_padding_as_large_as_the_input_is_refused():
    with pytest.raises(ValueError, match=r"distill.views.padding=8: mode same/rc shifts the 8x8 images by up to 8 "
                                         r"pixels, so some views would be entirely blank; use a padding below 8"):
        Views(mode="same/rc", image_size=(8, 8), padding=8)
    with pytest.raises(ValueError, match=r"distill.views.padding=64: mode fix/cc shifts the 64-sample signals"):
        Views(mode="fix/cc", image_size=(L, 1), padding=64)
    Views(mode="same/ic", image_size=(8, 8), padding=8)  # the padding of the mild crop only


def test_inception_crops_that_cannot_fit_the_images_aspect_are_refused():
    with pytest.raises(ValueError, match=r"distill.views.mode=funmatch: no inception crop with distill.views.ratio="
                                         r"\[0.75, 1.3333333333333333\] and scale=\[0.08, 1.0\] fits in the 4x200 "
                                         r"images \(aspect 50\), so every crop would be the same central sliver; "
                                         r"widen distill.views.ratio to include 50, or use a mode without inception "
                                         r"crops: none, fix/rs, fix/cc, ind/rc, same/rc"):
        Views(mode="funmatch", image_size=(4, 200))
    Views(mode="funmatch", image_size=(4, 200), ratio=(0.75, 60.0))
    Views(mode="same/ic", image_size=(4, 40))  # aspect 10: the smallest crops still fit


def _npz(tmp_path, shape):
    rng = np.random.default_rng(0)
    path = tmp_path / "signals.npz"
    np.savez(path, x_train=rng.random((60, *shape), dtype=np.float32), y_train=rng.integers(0, 3, 60),
             x_test=rng.random((30, *shape), dtype=np.float32), y_test=rng.integers(0, 3, 30))
    return str(path)


def _signal_run(tmp_path, shape, *overrides):
    return load_config(overrides=["recipe=compare", "data.name=npz", f"data.path={_npz(tmp_path, shape)}",
                                  "train.epochs=1", "train.batch_size=16", "teacher.model.name=mlp",
                                  "student.model.name=mlp", *overrides])


def test_vectors_have_no_views_and_the_run_stops_before_training(tmp_path):
    cfg = _signal_run(tmp_path, (12,), "distill.views.mode=same/ic")
    with pytest.raises(ValueError, match=r"distill.views.mode=same/ic: the views need images \(C, H, W\) or 1-D "
                                         r"signals \(C, 1, L\); npz's inputs have shape \(12,\); the modes that "
                                         r"apply are none and mixup"):
        run_recipe(cfg, run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "teacher").exists()
    cfg = _signal_run(tmp_path, (12,), "train.augment.flip=true")
    with pytest.raises(ValueError, match=r"train.augment.crop_padding and flip need images \(C, H, W\) or 1-D signals "
                                         r"\(C, 1, L\); npz's inputs have shape \(12,\); set them to 0 and false"):
        run_recipe(cfg, run_dir=tmp_path / "run2", progress=False)


def test_a_signal_run_refuses_a_student_resolution_before_training(tmp_path):
    cfg = _signal_run(tmp_path, (1, 40), "distill.views.mode=same/ic", "distill.views.student_size=8")
    with pytest.raises(ValueError, match=r"distill.views.student_size: the inputs are one row of 40 samples"):
        run_recipe(cfg, run_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "teacher").exists()


def test_a_crop_padding_as_large_as_the_signal_is_refused(tmp_path):
    cfg = _signal_run(tmp_path, (1, 6), "train.augment.crop_padding=6")
    with pytest.raises(ValueError, match=r"train.augment.crop_padding=6: the random crop shifts the inputs 1x6 by "
                                         r"up to that many pixels, so some would be entirely blank; use a padding "
                                         r"below 6"):
        run_recipe(cfg, run_dir=tmp_path / "run", progress=False)


@pytest.mark.slow
def test_a_row_signal_distils_through_every_live_mode(tmp_path):
    for mode in ("same/ic", "funmatch", "ind/rc"):
        cfg = _signal_run(tmp_path, (1, 40), f"distill.views.mode={mode}", "distill.views.padding=3")
        res = run_recipe(cfg, run_dir=tmp_path / mode.replace("/", "_"), progress=False)
        assert set(res["models"]) == {"teacher", "baseline", "distilled"}


def test_mixup_mixes_vectors_and_both_models_see_the_same_mixture():
    views = Views(mode="mixup", image_size=(1, 1))
    x = torch.arange(12.0).reshape(4, 3)
    student, teacher = views(x, generator=torch.Generator().manual_seed(0))
    assert student is teacher and student.shape == (4, 3)
    mix = mixup(x.reshape(4, 1, 1, 3), 1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(student, mix.images.reshape(4, 3))


def test_mixup_on_images_is_the_same_mixture_for_both_and_no_crop():
    views = Views(mode="mixup", image_size=(5, 5))
    x = torch.randn(6, 1, 5, 5, generator=torch.Generator().manual_seed(1))
    student, teacher = views(x, generator=torch.Generator().manual_seed(2))
    assert student is teacher
    mix = mixup(x, 1.0, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(student, mix.images)
    assert teacher_inputs(views) == {"mode": "mixup", "size": [5, 5], "mixup_alpha": 1.0}


def test_a_vector_run_distils_with_mixup_views(tmp_path):
    cfg = _signal_run(tmp_path, (12,), "distill.views.mode=mixup", "distill.alpha=1", "recipe=distill")
    run_recipe(cfg, run_dir=tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "distilled" / "best.pt").exists()
