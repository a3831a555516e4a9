"""Opening a checkpoint never imports code the file names (issue 11, item 1).

A checkpoint's ``model_spec`` names the builder of its model. Only registered models and the package's
own builders are built from a file; an import path ``package.module:factory`` is refused unless the
caller opts in (``allow_import=True``, ``--allow-model-import``), as Hugging Face's ``trust_remote_code``.
Each crafted builder here writes a marker file when its module is imported or called.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from distill.checkpoint import CheckpointError, build_model_from_checkpoint, load_checkpoint, save_checkpoint
from distill.cli import main
from distill.config import load_config
from distill.models import create_model
from distill.recipes.common import Run
from distill.recipes.stages import SIMKD_FACTORY, simkd_student

EVIL = '''
from pathlib import Path
MARKER = Path({marker!r})
MARKER.with_suffix(".imported").write_text("imported")

def build(num_classes, in_shape, **kw):
    MARKER.write_text("called")
    from distill.models import create_model
    return create_model("mlp", num_classes, in_shape, hidden=[8])
'''


@pytest.fixture
def evil(tmp_path, monkeypatch) -> Path:
    """A module ``evil_builder`` on sys.path whose import and builder each leave a marker; returns the marker."""
    marker = tmp_path / "marker"
    (tmp_path / "evil_builder.py").write_text(EVIL.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evil_builder", raising=False)
    return marker


def crafted_checkpoint(path: Path, name: str, kwargs: dict | None = None) -> Path:
    """A well-formed checkpoint of an MLP on digits whose model_spec names ``name`` as its builder."""
    model = create_model("mlp", 10, (1, 8, 8), hidden=[8])
    spec = {"name": name, "kwargs": kwargs or {}, "num_classes": 10, "in_shape": [1, 8, 8]}
    return save_checkpoint(path, {"model": model.state_dict(), "model_spec": spec,
                                  "data": {"name": "digits"}})


def nothing_ran(marker: Path) -> bool:
    return not marker.exists() and not marker.with_suffix(".imported").exists() and "evil_builder" not in sys.modules


def test_a_checkpoint_naming_an_import_path_is_refused(evil, tmp_path):
    ckpt = crafted_checkpoint(tmp_path / "evil.pt", "evil_builder:build")
    with pytest.raises(CheckpointError) as e:
        build_model_from_checkpoint(ckpt)
    message = str(e.value)
    assert f"checkpoint {ckpt}: model builder 'evil_builder:build' is an import path" in message
    assert "--allow-model-import" in message and "allow_import=True" in message
    assert nothing_ran(evil)


def test_the_opt_in_builds_it(evil, tmp_path):
    ckpt = crafted_checkpoint(tmp_path / "evil.pt", "evil_builder:build")
    model, _ = build_model_from_checkpoint(ckpt, allow_import=True)
    assert evil.read_text() == "called" and model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_a_builder_nested_in_a_spec_is_registry_only_too(evil, tmp_path):
    """SimKD's builder builds the student and teacher its kwargs name: those come from the file too."""
    kwargs = {"student": {"name": "evil_builder:build", "kwargs": {}}, "teacher": {"name": "mlp", "kwargs": {}}}
    ckpt = crafted_checkpoint(tmp_path / "nested.pt", SIMKD_FACTORY, kwargs)
    with pytest.raises(CheckpointError, match="model builder 'evil_builder:build' is an import path"):
        build_model_from_checkpoint(ckpt)
    assert nothing_ran(evil)
    from distill.models.registry import ImportNotAllowedError

    with pytest.raises(ImportNotAllowedError):  # the same in Python, and the flag is not sticky
        create_model(SIMKD_FACTORY, 10, (1, 8, 8), allow_import=False, **kwargs)
    assert nothing_ran(evil)
    assert create_model("evil_builder:build", 10, (1, 8, 8)) is not None  # a name the user writes: imported
    assert evil.read_text() == "called"


def test_an_in_package_path_is_not_imported_from_a_file(tmp_path):
    ckpt = crafted_checkpoint(tmp_path / "inpkg.pt", "distill.models.mlp:mlp")
    with pytest.raises(CheckpointError, match="model builder 'distill.models.mlp:mlp' is an import path"):
        build_model_from_checkpoint(ckpt)


def test_legacy_simkd_checkpoints_still_rebuild(tmp_path):
    """SimKD checkpoints written before recorded ``distill.recipes.stages:simkd_student``; the legacy table
    maps that name to today's builder (the table's entry, not the file's path, says what to run)."""
    from distill.models.registry import BUILTIN_BUILDERS, LEGACY_NAMES

    assert LEGACY_NAMES == {"distill.recipes.stages:simkd_student": "simkd_student"}
    assert BUILTIN_BUILDERS == {"simkd_student": "distill.methods.simkd:simkd_student"}
    assert SIMKD_FACTORY == "simkd_student"
    kwargs = {"student": {"name": "cnn", "kwargs": {"channels": [8, 16], "hidden": 0}},
              "teacher": {"name": "cnn", "kwargs": {"channels": [16, 32], "hidden": 0}, "in_shape": [1, 8, 8]}}
    torch.manual_seed(0)
    original = simkd_student(10, (1, 8, 8), **kwargs)
    spec = {"name": "distill.recipes.stages:simkd_student", "kwargs": kwargs, "num_classes": 10,
            "in_shape": [1, 8, 8]}
    path = save_checkpoint(tmp_path / "old_simkd.pt", {"model": original.state_dict(), "model_spec": spec})
    model, _ = build_model_from_checkpoint(path)
    assert type(model).__name__ == "SimKDStudent"
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(model.eval()(x), original.eval()(x))
    spec["name"] = "distill.recipes.stages:wrap_simkd"  # any other in-package path: refused
    path = save_checkpoint(tmp_path / "other.pt", {"model": original.state_dict(), "model_spec": spec})
    with pytest.raises(CheckpointError, match="'distill.recipes.stages:wrap_simkd' is an import path"):
        build_model_from_checkpoint(path)


def test_distill_eval_refuses_unless_the_flag_is_given(evil, tmp_path, capsys):
    ckpt = crafted_checkpoint(tmp_path / "evil.pt", "evil_builder:build")
    assert main(["eval", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert "model builder 'evil_builder:build' is an import path" in err and "--allow-model-import" in err
    assert nothing_ran(evil)
    assert main(["eval", str(ckpt), "--allow-model-import", "--json"]) == 0
    assert evil.read_text() == "called"


def teacher_config(tmp_path: Path, ckpt: Path, **teacher) -> Path:
    cfg = {"name": "t", "recipe": "distill", "device": "cpu", "output_dir": str(tmp_path / "runs"),
           "train": {"epochs": 1}, "teacher": {"checkpoint": str(ckpt), **teacher},
           "student": {"model": {"name": "mlp", "hidden": [8]}}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_distill_run_refuses_a_teacher_checkpoint_naming_an_import_path(evil, tmp_path, capsys):
    ckpt = crafted_checkpoint(tmp_path / "evil.pt", "evil_builder:build")
    assert main(["run", str(teacher_config(tmp_path, ckpt)), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"checkpoint {ckpt}: model builder 'evil_builder:build' is an import path" in err
    assert "--allow-model-import" in err and "name the model in the config" in err
    assert nothing_ran(evil)


@pytest.mark.parametrize("how", ["flag", "config"])
def test_distill_run_builds_it_when_the_user_says_so(evil, tmp_path, how):
    """With --allow-model-import, or with the teacher's model named in the config (the user's own choice),
    the run builds the teacher (here only as far as the models' check at the start of a run)."""
    ckpt = crafted_checkpoint(tmp_path / "evil.pt", "evil_builder:build")
    own = {"model": {"name": "evil_builder:build"}} if how == "config" else {}
    cfg = load_config(teacher_config(tmp_path, ckpt, **own))
    Run(cfg, run_dir=tmp_path / "run", progress=False, allow_import=how == "flag")
    assert evil.read_text() == "called"
    assert load_checkpoint(ckpt)["model_spec"]["name"] == "evil_builder:build"
