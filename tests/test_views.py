"""Teaching modes (Beyer et al. 2022): what student and teacher see, fixed teachers, resolutions, transfer sets."""

import json

import pytest
import torch
from torch import nn

from distill.config import TrainConfig, load_config
from distill.data.augment import crop_resize
from distill.engine import fit
from distill.objectives import KnowledgeDistillation
from distill.recipes import run_recipe
from distill.teachers import FrozenTeacher
from distill.views import FIXED_MODES, MODES, AveragedTeacher, Views, fixed_teacher_view


def _images(n=6, size=12):
    torch.manual_seed(0)
    return torch.rand(n, 1, size, size)


@pytest.mark.parametrize("mode", ["same/rc", "same/ic", "funmatch"])
def test_consistent_modes_show_both_models_the_same_view(mode):
    x = _images()
    torch.manual_seed(1)
    s, t = Views(mode, (12, 12), padding=2)(x)
    assert s.shape == t.shape == x.shape
    assert torch.equal(s, t)
    assert not torch.equal(s, x)  # something was cropped (or mixed)


@pytest.mark.parametrize("mode", ["ind/rc", "ind/ic"])
def test_independent_modes_draw_separate_crops(mode):
    x = _images()
    torch.manual_seed(1)
    s, t = Views(mode, (12, 12), padding=2)(x)
    assert s.shape == t.shape == x.shape
    assert not torch.equal(s, t)


def test_views_are_reproducible_under_the_global_seed_and_differ_per_sample():
    x = _images(8)
    v = Views("same/ic", (12, 12))
    torch.manual_seed(3)
    a, _ = v(x)
    torch.manual_seed(3)
    b, _ = v(x)
    assert torch.equal(a, b)
    boxes = v.boxes(8, "ic", torch.device("cpu"))
    assert len({tuple(b.tolist()) for b in boxes}) == 8


def test_same_crop_at_two_resolutions():
    x = _images(4, 16)
    v = Views("same/rc", (16, 16), student_size=(8, 8), padding=0)  # padding 0: the crop is the whole image
    s, t = v(x)
    assert s.shape == (4, 1, 8, 8) and t.shape == (4, 1, 16, 16)
    torch.testing.assert_close(s, crop_resize(t, torch.tensor([[0.0, 0, 1, 1]]).expand(4, 4), 8), atol=1e-6, rtol=0)
    torch.testing.assert_close(t, x)


def test_funmatch_mixes_the_shared_crop_and_keeps_it_shared_across_resolutions():
    x = _images(6, 16)
    torch.manual_seed(0)
    s, t = Views("funmatch", (16, 16), student_size=(8, 8), scale=(1.0, 1.0), ratio=(1.0, 1.0))(x)
    # with full-image crops, both views are the same mixture of the images at two resolutions
    torch.testing.assert_close(s, crop_resize(t, torch.tensor([[0.0, 0, 1, 1]]).expand(6, 4), 8), atol=1e-5, rtol=0)
    assert not torch.allclose(t, x)


def test_mode_none_applies_the_shift_and_fixed_modes_return_only_the_student_view():
    x = _images()
    torch.manual_seed(0)
    s, t = Views("none", (12, 12), shift=1)(x)
    assert torch.equal(s, t) and not torch.equal(s, x)
    for mode in FIXED_MODES:
        s, t = Views(mode, (12, 12), padding=2)(x)
        assert s is t
    s, _ = Views("fix/rs", (12, 12))(x)
    torch.testing.assert_close(s, x)  # resized to its own size: the image itself
    with pytest.raises(ValueError, match="distill.views.mode"):
        Views("same/xx", (12, 12))
    assert len(MODES) == 10


class Fixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(144, 5)

    def forward(self, x):
        return self.lin(x.flatten(1))


def test_fixed_teacher_views_resize_center_and_average():
    torch.manual_seed(0)
    teacher, x = Fixed().eval(), _images(5)
    with torch.no_grad():
        rs = fixed_teacher_view(Views("fix/rs", (12, 12)))(teacher)(x)
        torch.testing.assert_close(rs.softmax(-1), teacher(x).softmax(-1))
        cc = fixed_teacher_view(Views("fix/cc", (12, 12)))(teacher)(x)
        central = crop_resize(x, torch.tensor([[1 / 16, 1 / 16, 15 / 16, 15 / 16]]).expand(5, 4), 12)
        torch.testing.assert_close(cc.softmax(-1), teacher(central).softmax(-1), atol=1e-6, rtol=1e-5)
        # fix/ic_ens: the mean of the probabilities over the crops
        views = iter([x, x.flip(-1), x * 0.5])
        avg = AveragedTeacher(teacher, lambda _: next(views), crops=3)(x)
        ref = (teacher(x).softmax(-1) + teacher(x.flip(-1)).softmax(-1) + teacher(x * 0.5).softmax(-1)) / 3
        torch.testing.assert_close(avg.exp(), ref, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="fixed-teacher"):
        fixed_teacher_view(Views("same/ic", (12, 12)))


def test_engine_gives_the_teacher_its_view(digits_splits):
    seen = {}

    def views(x, index):
        return x, x * 0  # the teacher sees blank images

    class Spy:
        def __init__(self, model):
            self.inner = FrozenTeacher(model)

        def __call__(self, x, index=None):
            seen["teacher_abs"] = float(x.abs().sum())
            return self.inner(x, index)

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    fit(student, KnowledgeDistillation(2.0, 1.0), digits_splits, TrainConfig(epochs=1, batch_size=256),
        teacher=Spy(teacher), views=views, progress=None)
    assert seen["teacher_abs"] == 0.0


def _cfg(*extra):
    return load_config(overrides=["recipe=distill", "data.name=digits", "train.epochs=4", "train.batch_size=64",
                                  "teacher.model.name=cnn", "teacher.model.channels=[16,32]", "teacher.model.hidden=64",
                                  "student.model.name=mlp", "student.model.hidden=[32]", "distill.alpha=1",
                                  "distill.views.padding=1", "distill.views.scale=[0.5,1.0]", "distill.temperature=1",
                                  *extra])


@pytest.mark.parametrize("mode", ["fix/cc", "fix/ic_ens", "ind/rc", "funmatch"])
def test_every_kind_of_mode_runs_through_the_recipe(tmp_path, mode):
    res = run_recipe(_cfg(f"distill.views.mode={mode}", "distill.views.ensemble_crops=2"), run_dir=tmp_path,
                     progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if r["model"] == "distilled"]
    assert len(losses) == 4 and losses[-1] < losses[0], losses  # its objective is optimized (not a noisy accuracy bar)


def test_student_at_another_resolution(tmp_path):
    run_recipe(_cfg("distill.views.mode=same/rc", "distill.views.student_size=6"), run_dir=tmp_path,
               progress=False)
    saved = torch.load(tmp_path / "distilled" / "best.pt", weights_only=True)
    assert saved["model_spec"]["in_shape"] == [1, 6, 6]
    first_layer = [v for k, v in saved["model"].items() if k.endswith("weight")][0]
    assert first_layer.shape == (32, 36)  # the MLP reads the 6x6 views, not the 8x8 images
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if r["model"] == "distilled"]
    assert len(losses) == 4 and losses[-1] < losses[0], losses  # it learns the teacher's function on them


@pytest.mark.slow
@pytest.mark.requires_data("fashion-mnist")
def test_out_of_domain_transfer_set(tmp_path):
    """A digits teacher taught through Fashion-MNIST images resized to 8x8: no digit is ever shown."""
    res = run_recipe(_cfg("distill.transfer.name=fashion-mnist", "student.train.epochs=2", "distill.temperature=4"),
                     run_dir=tmp_path,
                     progress=False)
    assert res["transfer"]["name"] == "fashion-mnist" and res["transfer"]["resized_to"] == [1, 8, 8]
    assert res["transfer"]["train_examples"] > 50000
    # the student learns the teacher's function on the transfer images (its KD loss falls); its digits
    # accuracy after 2 epochs on Fashion-MNIST alone is not asserted: 10-35% depending on the seed
    kd = [json.loads(line)["train/kd"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
          if json.loads(line)["model"] == "distilled"]
    assert len(kd) == 2 and kd[1] < kd[0]


def test_a_transfer_set_without_labels_needs_alpha_1():
    """Checked when the config is read: no data is loaded."""
    with pytest.raises(Exception, match="distill.alpha=1"):
        load_config(overrides=["recipe=distill", "teacher.model.name=mlp", "student.model.name=mlp",
                               "distill.transfer.name=fashion-mnist", "distill.alpha=0.9"])


def test_a_cache_of_plain_images_cannot_serve_a_crop_mode(tmp_path):
    cfg = _cfg("distill.views.mode=same/ic", f"distill.cache.path={tmp_path / 'c.npz'}")
    with pytest.raises(ValueError, match="unset distill.cache.path"):
        run_recipe(cfg, run_dir=tmp_path / "run", progress=False)


def test_student_initialized_from_a_checkpoint_versus_from_scratch(tmp_path):
    """Beyer et al. also distil into a student that starts from trained weights: student.checkpoint."""
    base = run_recipe(load_config(overrides=["recipe=baseline", "data.name=digits", "train.epochs=6",
                                             "train.batch_size=64", "student.model.name=mlp",
                                             "student.model.hidden=[32]"]), run_dir=tmp_path / "b", progress=False)
    ckpt = tmp_path / "b" / "baseline" / "best.pt"
    runs = {}
    for name, extra in {"scratch": [], "warm": [f"student.checkpoint={ckpt}"]}.items():
        run_recipe(_cfg("distill.views.mode=same/rc", "train.epochs=1", *extra), run_dir=tmp_path / name,
                   progress=False)
        first = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        runs[name] = [json.loads(line) for line in first if json.loads(line)["model"] == "distilled"][0]["val/acc"]
    assert base["models"]["baseline"]["test_acc"] > 0.8
    assert runs["warm"] > runs["scratch"] + 0.2, runs  # after one epoch, the warm start keeps much of what it knew
