"""Issue 14 item 2: ``distill tune``, a search over method, temperature, alpha, learning rate, augmentation and
schedule length on the validation split, with Optuna (the tests that need it skip without it)."""

from __future__ import annotations

import json
import math
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from distill.checkpoint import load_checkpoint
from distill.cli import main
from distill.config import ConfigError, load_config
from distill.engine import Callback
import distill.recipes.tune as tune_module
from distill.recipes import run_recipe
from distill.recipes.tune import (
    ReportValidation,
    TuneOptions,
    apply_params,
    check_study,
    importances,
    open_storage,
    require_optuna,
    trial_seeded_tpe,
    run_study,
    shown_storage,
    suggest,
    write_outputs,
)

TINY = ["data.name=digits", "data.val_size=0.2", "train.epochs=2", "train.batch_size=128", "report.latency=false",
        "teacher.model={name: mlp, hidden: [32]}", "student.model={name: mlp, hidden: [16]}"]
SPACE = ["tune.epochs={low: 1, high: 2}", "tune.startup_trials=2", "tune.prune_startup_trials=1"]


def tiny(tmp_path: Path, *more: str) -> Any:
    return load_config(None, [*TINY, "recipe=distill", *SPACE, *more], settings={"output_dir": str(tmp_path),
                                                                                  "name": "tiny"})


def write_tiny(tmp_path: Path) -> Path:
    cfg = {"name": "tiny", "recipe": "distill", "output_dir": str(tmp_path / "studies"),
           "data": {"name": "digits", "val_size": 0.2}, "train": {"epochs": 2, "batch_size": 128},
           "report": {"latency": False}, "teacher": {"model": {"name": "mlp", "hidden": [32]}},
           "student": {"model": {"name": "mlp", "hidden": [16]}},
           "tune": {"epochs": {"low": 1, "high": 2}, "startup_trials": 2, "prune_startup_trials": 1}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def trial_rows(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as con:
        return con.execute("select number, state from trials order by number").fetchall()


# -- the callback hook (no optuna) -----------------------------------------------------------------


class Epochs(Callback):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        self.seen.append(epoch)


@pytest.mark.slow
def test_a_recipe_hands_its_callbacks_to_every_fit(tmp_path):
    cfg = load_config(None, [*TINY, "recipe=baseline"], settings={"output_dir": str(tmp_path)})
    listener = Epochs()
    results = run_recipe(cfg, run_dir=tmp_path / "run", progress=False, callbacks=[listener])
    assert listener.seen == [0, 1] and "baseline" in results["models"]


# -- the tune section: defaults, errors naming the key (no optuna) --------------------------------


def test_the_default_space_and_every_config_has_a_tune_section(tmp_path):
    opts = tiny(tmp_path).tune
    assert opts.methods == ["kd", "dkd", "dist", "mlkd", "ctkd", "wttm"]
    assert opts.lr.log and (opts.lr.low, opts.lr.high) == (1e-3, 0.3)
    assert (opts.temperature.low, opts.temperature.high, opts.temperature.log) == (1.0, 8.0, False)
    assert (opts.epochs.low, opts.epochs.high) == (1, 2) and opts.trials == 20 and opts.pruner == "median"
    assert (opts.standardize, opts.views, opts.mixup_alpha) == (False, None, None)  # not searched by default
    assert TuneOptions.model_validate({"lr": [0.01, 0.1]}).lr.log  # a learning rate's range: log scale by default


@pytest.mark.parametrize("override, fragment", [
    ("tune.methods=[kd, kdd]", "tune.methods: unknown method 'kdd'; choose among the registered methods"),
    ("tune.methods=[ce]", "tune.methods: method 'ce' uses no teacher"),
    ("tune.methods=[]", "tune.methods: no method to choose from"),
    ("tune.temperature={low: 8, high: 1}", "tune.temperature: a range needs low < high, got low=8.0, high=1.0"),
    ("tune.lr={low: 0, high: 0.1}", "tune.lr: a log-scale range needs low > 0"),
    ("tune.method_options={dkd: {nckd_wieght: [1, 8]}}", "tune.method_options: dkd.nckd_wieght: method 'dkd' has no "
     "option 'nckd_wieght'"),
    ("tune.method_options={at: {weight: [1, 8]}}", "tune.method_options: at: not among tune.methods"),
    ("tune.views=[none, mixups]", "tune.views.1: Input should be 'none', "),
    ("tune.views=[mixup, mixup]", "tune.views: list one or more distinct distill.views.mode values"),
    ("tune.mixup_alpha={low: 1, high: 0.5}", "tune.mixup_alpha: a range needs low < high"),
])
def test_a_bad_space_is_an_error_naming_the_key(tmp_path, override, fragment):
    with pytest.raises(ConfigError) as e:
        tiny(tmp_path, override)
    assert fragment in str(e.value)


def test_an_empty_space_is_an_error(tmp_path):
    empty = ["tune.methods=[kd]", *(f"tune.{k}=null" for k in ("temperature", "alpha", "lr", "shift", "epochs"))]
    with pytest.raises(ConfigError, match=r"tune: the search space is empty: tune.methods has one method and "
                                          r"tune.temperature, tune.alpha, tune.lr, tune.shift, tune.crop_padding, "
                                          r"tune.epochs are all null"):
        tiny(tmp_path, *empty)
    assert tiny(tmp_path, *empty[:-1]).tune.epochs is not None  # one range is a space


@pytest.mark.parametrize("override, fragment", [
    ("data.val_size=0", "tune: the objective is the validation accuracy, but data.val_size is 0"),
    ("distill.stages=[{method: kd}]", "tune: distill.stages is set"),
    ("student.train.augment.crop_padding=2", "tune.shift: student.train.augment.crop_padding=2 is set"),
    ("student.train.max_steps=5", "tune.epochs: student.train.max_steps=5 overrides the epochs"),
    ("tune.crop_padding=[0, 4]", "tune.crop_padding: tune.shift is searched too"),
    ("tune.mixup_alpha=[0.2, 1]", "tune.mixup_alpha: no trial's views mix: distill.views.mode is none; add mixup or "
     "funmatch to tune.views"),
])
def test_what_a_study_needs_of_the_config(tmp_path, override, fragment):
    with pytest.raises(ValueError, match="^" + fragment.replace(".", r"\.").replace("(", r"\(")):
        check_study(tiny(tmp_path, override))
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):  # recipe: tune checks it on loading
        tiny(tmp_path, override, "recipe=tune")


def test_apply_params_writes_the_trial_into_the_config(tmp_path):
    base = tiny(tmp_path, "distill.temperature=3", "distill.alpha=0.5", "student.train={augment: {shift: 1}}")
    cfg = apply_params(base, {"method": "kd", "temperature": 6.0, "lr": 0.02, "epochs": 7},
                       teacher_checkpoint="t.pt", name="x")
    assert (cfg.recipe, cfg.name, cfg.distill.method) == ("distill", "x", "kd")
    assert cfg.distill.options == {"temperature": 6.0, "alpha": 0.5}  # alpha not searched: distill.alpha kept
    train = cfg.student.train
    assert (train.optimizer.lr, train.epochs, train.augment.shift) == (0.02, 7, 1)
    assert cfg.teacher.checkpoint == "t.pt" and cfg.train.optimizer.lr == base.train.optimizer.lr  # the teacher's
    dkd = apply_params(base, {"method": "dkd", "temperature": 2.0, "dkd.nckd_weight": 2.5, "shift": 0})
    assert dkd.distill.options == {"temperature": 2.0, "nckd_weight": 2.5} and dkd.student.train.augment.shift == 0
    crop = apply_params(base, {"method": "dist", "shift": 0, "crop_padding": 4})
    assert (crop.student.train.augment.crop_padding, crop.distill.options) == (4, {})


def test_each_view_mode_of_the_study_is_checked_against_the_config_before_any_trial(tmp_path):
    with pytest.raises(ValueError, match=r"^tune\.views: distill\.views\.mode=fix/rs does not work with this config: "
                                         r"(?s:.*)method at reads the teacher's intermediate features"):
        check_study(tiny(tmp_path, "distill.method=at", "tune.methods=[at, kd]", "tune.views=[none, fix/rs]"))
    with pytest.raises(ValueError, match=r"^tune\.views: distill\.views\.mode=ind/rc does not work with this config: "
                                         r"distill\.views\.mode=ind/rc needs the live teacher"):
        check_study(tiny(tmp_path, "distill.cache.path=c.npz", "tune.views=[none, ind/rc]"))
    check_study(tiny(tmp_path, "tune.views=[none, fix/rs, mixup]"))


def test_apply_params_writes_the_new_logit_methods_the_switch_and_the_views(tmp_path):
    base = tiny(tmp_path, "tune.views=[none, mixup]", "tune.mixup_alpha=[0.1, 1]", "tune.standardize=true")
    check_study(base)
    wttm = apply_params(base, {"method": "wttm", "temperature": 4.0, "standardize": True, "views": "mixup",
                               "mixup_alpha": 0.3})
    assert (wttm.distill.method, wttm.distill.options) == ("wttm", {"temperature": 4.0, "standardize": True})
    assert (wttm.distill.views.mode, wttm.distill.views.mixup_alpha) == ("mixup", 0.3)
    plain = apply_params(base, {"method": "ctkd", "views": "none"})
    assert (plain.distill.options, plain.distill.views.mode, plain.distill.views.mixup_alpha) == ({}, "none", 1.0)
    one = tiny(tmp_path, "tune.views=[mixup]")  # one listed mode: set in every trial, not a parameter
    assert apply_params(one, {"method": "mlkd"}).distill.views.mode == "mixup"


# -- with optuna ---------------------------------------------------------------------------------


def test_without_optuna_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ValueError, match=r"distill tune needs the package 'optuna'.*install the tune extra: "
                                         r"pip install -c constraints.txt -e \"\.\[tune\]\""):
        require_optuna()


def test_a_bad_storage_url_is_an_error_naming_the_key():
    pytest.importorskip("optuna")
    with pytest.raises(ValueError, match=r"tune.storage \(--storage\) 'nosuchdb://x/y': cannot open the study "
                                         r"database: .*Give an SQLAlchemy URL"):
        open_storage("nosuchdb://x/y")


@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg2://tuner:s3cr%3At%40x@db.lan:5432/studies",
     "postgresql+psycopg2://tuner:***@db.lan:5432/studies"),
    ("postgresql://tuner:p@ss/w:rd@db.lan/studies?sslmode=require",  # unescaped @ and / in the password: hidden too
     "postgresql://tuner:***@db.lan/studies?sslmode=require"),
    ("mysql+pymysql://tuner:@db.lan/studies", "mysql+pymysql://tuner:***@db.lan/studies"),
    ("postgresql://tuner@db.lan/studies", "postgresql://tuner@db.lan/studies"),  # no password (PGPASSWORD)
    ("sqlite:////abs/runs/s@1/study.db", "sqlite:////abs/runs/s@1/study.db"),
    ("sqlite:///study.db", "sqlite:///study.db"),
])
def test_a_storage_url_is_shown_without_its_password(url, shown):
    assert shown_storage(url) == shown


def test_a_storage_error_hides_the_password():
    pytest.importorskip("optuna")
    with pytest.raises(ValueError) as e:
        open_storage("postgresql+nosuchdriver://tuner:hunter22@db.lan/studies")
    assert str(e.value).startswith("tune.storage (--storage) 'postgresql+nosuchdriver://tuner:***@db.lan/studies': "
                                   "cannot open the study database: NoSuchModuleError: ")
    assert "hunter22" not in str(e.value)


def test_opening_a_database_whose_tables_another_process_creates_is_retried(monkeypatch):
    """Two machines joining a new study on an empty PostgreSQL database race to create Optuna's tables; the loser's
    CREATE TABLE fails (seen here: UniqueViolation on alembic_version) and opening again finds the tables."""
    optuna = pytest.importorskip("optuna")
    from sqlalchemy.exc import IntegrityError, ProgrammingError


    calls: list[str] = []
    races = [IntegrityError("CREATE TABLE alembic_version", {}, Exception("duplicate key")),
             ProgrammingError("CREATE TABLE studies", {}, Exception("relation already exists"))]

    def storage(url: str, **kwargs: Any) -> str:
        calls.append(url)
        if races:
            raise races.pop(0)
        return "opened"

    monkeypatch.setattr(optuna.storages, "RDBStorage", storage)
    monkeypatch.setattr(tune_module.time, "sleep", lambda s: None)
    assert open_storage("postgresql://u:pw@h/db") == "opened" and len(calls) == 3
    races[:] = [IntegrityError("INSERT", {}, Exception("still there"))] * tune_module.STORAGE_ATTEMPTS
    calls.clear()
    with pytest.raises(ValueError, match=r"^tune.storage \(--storage\) 'postgresql://u:\*\*\*@h/db': cannot open the "
                                         r"study database: IntegrityError: "):
        open_storage("postgresql://u:pw@h/db")
    assert len(calls) == tune_module.STORAGE_ATTEMPTS


def _draw(studies: list[Any]) -> list[float]:
    """One trial per study in turn (studies sharing a storage: machines), each told a score of its lr."""
    drawn = []
    for study in studies:
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        study.tell(trial, -abs(math.log10(lr) + 2))  # best at lr = 0.01
        drawn.append(lr)
    return drawn


def test_machines_that_start_a_study_together_draw_different_trials_and_a_study_replays_trial_by_trial():
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def machines(sampler: Any) -> list[Any]:
        storage = optuna.storages.InMemoryStorage()
        optuna.create_study(study_name="s", storage=storage, direction="maximize")
        return [optuna.load_study(study_name="s", storage=storage, sampler=sampler()) for _ in range(2)]

    # one seed per process (the former scheme): two machines starting at once repeat each other's trials
    a, b = machines(lambda: optuna.samplers.TPESampler(seed=0, n_startup_trials=3))
    repeated = _draw([a, b] * 4)
    assert repeated[0] == repeated[1]
    a, b = machines(lambda: trial_seeded_tpe(0, 3))
    drawn = _draw([a, b] * 4)  # 3 random trials, then 5 of TPE
    assert len(set(drawn)) == 8
    # the same history gives the same trials, whichever process draws them
    alone = optuna.create_study(direction="maximize", sampler=trial_seeded_tpe(0, 3))
    assert _draw([alone] * 8) == drawn
    other_seed = optuna.create_study(direction="maximize", sampler=trial_seeded_tpe(1, 3))
    assert _draw([other_seed] * 8)[0] != drawn[0]


def test_suggest_draws_only_the_options_a_method_has(tmp_path):
    optuna = pytest.importorskip("optuna")
    opts = tiny(tmp_path, "tune.method_options={dkd: {nckd_weight: [1, 8]}}").tune
    kd = optuna.trial.FixedTrial({"method": "kd", "temperature": 2.0, "alpha": 0.3, "lr": 0.01, "shift": 1,
                                  "epochs": 2})
    assert suggest(kd, opts) == {"method": "kd", "temperature": 2.0, "alpha": 0.3, "lr": 0.01, "shift": 1,
                                 "epochs": 2}
    dist = optuna.trial.FixedTrial({"method": "dist", "temperature": 2.0, "lr": 0.01, "shift": 0, "epochs": 1})
    assert "alpha" not in suggest(dist, opts)  # DIST has no alpha
    dkd = optuna.trial.FixedTrial({"method": "dkd", "temperature": 2.0, "dkd.nckd_weight": 3.0, "lr": 0.01,
                                   "shift": 0, "epochs": 1})
    assert suggest(dkd, opts)["dkd.nckd_weight"] == 3.0


def test_suggest_draws_the_switch_and_the_views_only_where_they_apply(tmp_path):
    optuna = pytest.importorskip("optuna")
    opts = tiny(tmp_path, "tune.standardize=true", "tune.views=[none, mixup]", "tune.mixup_alpha=[0.1, 1]",
                "tune.shift=null", "tune.epochs=null", "tune.lr=null").tune
    fixed = {"method": "wttm", "temperature": 3.0, "standardize": True, "views": "mixup", "mixup_alpha": 0.5}
    assert suggest(optuna.trial.FixedTrial(fixed), opts) == fixed
    ctkd = {"method": "ctkd", "standardize": False, "views": "none"}  # no temperature option; no mixup, no alpha
    assert suggest(optuna.trial.FixedTrial(ctkd), opts) == ctkd
    only_mode = tiny(tmp_path, "tune.mixup_alpha=[0.1, 1]", "tune.methods=[mlkd]", "tune.shift=null",
                     "tune.epochs=null", "tune.lr=null", "distill.views.mode=mixup").tune
    assert suggest(optuna.trial.FixedTrial({"mixup_alpha": 0.2}), only_mode, "mixup") == {"mixup_alpha": 0.2}
    assert suggest(optuna.trial.FixedTrial({}), only_mode, "none") == {}


class FakeTrial:
    def __init__(self, prune_from: int) -> None:
        self.reported: list[tuple[float, int]] = []
        self.prune_from = prune_from

    def report(self, value: float, step: int) -> None:
        self.reported.append((value, step))

    def should_prune(self) -> bool:
        return len(self.reported) >= self.prune_from


def test_report_validation_reports_each_epoch_and_prunes():
    optuna = pytest.importorskip("optuna")
    trial = FakeTrial(prune_from=2)
    listener = ReportValidation(trial)  # type: ignore[arg-type]
    listener.on_epoch_end(0, {"val/acc": 0.5})
    listener.on_epoch_end(0, {"train/loss": 1.0})  # no validation: nothing reported
    with pytest.raises(optuna.TrialPruned, match="validation accuracy 60.00% after epoch 2 is below the median"):
        listener.on_epoch_end(1, {"val/acc": 0.6})
    assert trial.reported == [(0.5, 1), (0.6, 2)]
    last = ReportValidation(FakeTrial(prune_from=1), epochs=2)  # type: ignore[arg-type]
    with pytest.raises(optuna.TrialPruned):
        last.on_epoch_end(0, {"val/acc": 0.5})
    last.epochs = 1
    last.on_epoch_end(1, {"val/acc": 0.5})  # the last epoch: the trial is done, never pruned


def test_importances_say_why_not_with_too_few_trials():
    optuna = pytest.importorskip("optuna")
    study = optuna.create_study(direction="maximize")
    dist = {"lr": optuna.distributions.FloatDistribution(1e-3, 0.3, log=True)}
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.01}, distributions=dist, value=0.5))
    assert importances(study, optuna) == (None, "not estimated: 1 completed trial(s), at least 2 needed (10 or "
                                                "more to trust)")


@pytest.mark.parametrize("matplotlib", ["missing", "installed"])
def test_outputs_of_a_study_without_training(tmp_path, monkeypatch, matplotlib):
    optuna = pytest.importorskip("optuna")
    if matplotlib == "missing":
        monkeypatch.setitem(sys.modules, "matplotlib", None)
    else:
        pytest.importorskip("matplotlib")
    base = tiny(tmp_path)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="tiny", storage=url, direction="maximize")
    space = {"method": optuna.distributions.CategoricalDistribution(["kd", "dkd", "dist"]),
             "lr": optuna.distributions.FloatDistribution(1e-3, 0.3, log=True)}
    for i, (method, lr, value) in enumerate([("kd", 0.01, 0.8), ("dist", 0.1, 0.9), ("dkd", 0.05, 0.7)]):
        study.add_trial(optuna.trial.create_trial(params={"method": method, "lr": lr}, distributions=space,
                                                  value=value, user_attrs={"run_dir": f"trials/{i:04d}"}))
    study.add_trial(optuna.trial.create_trial(params={"method": "kd", "lr": 0.2}, distributions=space,
                                              state=optuna.trial.TrialState.PRUNED, intermediate_values={1: 0.1}))
    summary = write_outputs(base, tmp_path, "tiny", url, "teacher.pt", 1.0)
    assert (summary["best_trial"], summary["best_value"], summary["states"]["PRUNED"]) == (1, 0.9, 1)
    rows = (tmp_path / "trials.csv").read_text().splitlines()
    assert rows[0] == "number,state,value,method,lr,epochs_trained,duration_s,run_dir"
    assert rows[2].startswith("1,COMPLETE,0.9,dist,0.1,0,") and rows[4].startswith("3,PRUNED,,kd,0.2,1,")
    md = (tmp_path / "trials.md").read_text()
    assert "Best: trial 1, validation accuracy 90.00% (method=dist, lr=0.1)" in md
    assert "| 3 | pruned | - | kd | 0.2 | 1 |" in md and "## What mattered" in md
    best = load_config(tmp_path / "best.yaml")
    assert (best.distill.method, best.student.train.optimizer.lr, best.teacher.checkpoint) == ("dist", 0.1,
                                                                                             "teacher.pt")
    if matplotlib == "missing":
        assert "Plots: not drawn, matplotlib is not installed" in md and not (tmp_path / "history.png").exists()
    else:
        assert "Plots: ![history.png](history.png), ![importance.png](importance.png)" in md
        assert (tmp_path / "history.png").stat().st_size > 0 and (tmp_path / "importance.png").stat().st_size > 0


# -- real studies (slow) ---------------------------------------------------------------------------


def distilled_val_accs(run_dir: Path) -> list[float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["val/acc"] for r in lines if r["model"] == "distilled"]


@pytest.mark.slow
def test_a_tiny_study_end_to_end_resumes_and_runs_two_workers(tmp_path, capsys):
    optuna = pytest.importorskip("optuna")
    config = write_tiny(tmp_path)
    assert main(["tune", str(config), "--trials", "3", "--quiet"]) == 0
    study_dir = tmp_path / "studies" / "tiny"
    assert {"study.db", "study.yaml", "teacher", "trials", "best.yaml", "trials.csv", "trials.md"} <= {
        p.name for p in study_dir.iterdir()}
    assert "# Study tiny" in capsys.readouterr().out
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{study_dir / 'study.db'}")
    assert len(study.trials) == 3
    for t in study.trials:  # the objective is the selected checkpoint's validation accuracy, never the test's
        run_dir = Path(t.user_attrs["run_dir"])
        if t.state.name == "COMPLETE":
            assert t.value == max(distilled_val_accs(run_dir))  # selection: acc
            assert t.intermediate_values == {i + 1: v for i, v in enumerate(distilled_val_accs(run_dir))}
    teacher = study_dir / "teacher" / "teacher" / "best.pt"
    assert {yaml.safe_load((Path(t.user_attrs["run_dir"]) / "config.yaml").read_text())["teacher"]["checkpoint"]
            for t in study.trials} == {str(teacher.resolve())}  # trained once, read by every trial

    best = load_config(study_dir / "best.yaml")
    assert best.teacher.checkpoint == str(teacher.resolve()) and best.distill.method == study.best_params["method"]
    assert main(["run", str(study_dir / "best.yaml"), "--dry-run"]) == 0
    assert main(["run", str(study_dir / "best.yaml"), "--name", "again", "--quiet"]) == 0
    again = load_checkpoint(tmp_path / "studies" / "again" / "distilled" / "best.pt")
    assert again["best"]["val_acc"] == study.best_value  # the best config reproduces its validation score

    assert main(["tune", str(config), "--trials", "1", "--quiet"]) == 0  # the same command continues the study
    assert len(trial_rows(study_dir / "study.db")) == 4
    assert main(["tune", str(config), "--trials", "2", "--workers", "2", "--quiet"]) == 0
    rows = trial_rows(study_dir / "study.db")
    assert [n for n, _ in rows] == [0, 1, 2, 3, 4, 5] and {s for _, s in rows} <= {"COMPLETE", "PRUNED"}
    assert len((study_dir / "trials.csv").read_text().splitlines()) == 7

    config.write_text(config.read_text().replace("hidden: [16]", "hidden: [8]").replace("- 16", "- 8"))
    assert main(["tune", str(config), "--trials", "1", "--quiet"]) == 1  # other settings: refused, nothing run
    assert "was started with other settings (saved -> now):\n  student.model.hidden" in capsys.readouterr().err
    assert len(trial_rows(study_dir / "study.db")) == 6


@pytest.mark.slow
def test_a_storage_password_is_in_no_file_or_line_the_study_writes(tmp_path, monkeypatch, capsys):
    """tune.storage with a password (a server's database, as for many machines; here routed to SQLite): the study's
    lines, trials.md, study.yaml, the trials' config.yaml, best.yaml and the summary show it as ***; continuing with
    the same config is the same study."""
    pytest.importorskip("optuna")

    real = tune_module.open_storage
    db = f"sqlite:///{tmp_path / 'server.db'}"
    monkeypatch.setattr(tune_module, "open_storage", lambda url: real(db))
    url = "postgresql+psycopg2://tuner:hunter22@db.lan:5432/studies"
    cfg = tiny(tmp_path, f"tune.storage={url}", "tune.epochs=null")
    summary = run_study(cfg, tmp_path / "s", trials=1)
    summary = run_study(cfg, tmp_path / "s", trials=1)  # continued: the saved study.yaml matches
    assert summary["storage"] == "postgresql+psycopg2://tuner:***@db.lan:5432/studies" and summary["trials"] == 2
    written = [p for p in (tmp_path / "s").rglob("*") if p.is_file() and p.suffix in (".yaml", ".md", ".csv",
                                                                                      ".json", ".jsonl")]
    assert {"study.yaml", "best.yaml", "trials.md", "config.yaml", "results.json"} <= {p.name for p in written}
    assert not [p for p in written if "hunter22" in p.read_text()]
    out = capsys.readouterr()
    assert "hunter22" not in out.out + out.err + json.dumps(summary)
    assert "[tune] study 'tiny' in postgresql+psycopg2://tuner:***@db.lan:5432/studies: 1 trials" in out.err
    assert "tuner:***@db.lan" in (tmp_path / "s" / "study.yaml").read_text()


@pytest.mark.slow
def test_a_pruned_trial_stops_training_after_the_epoch(tmp_path):
    optuna = pytest.importorskip("optuna")

    class PruneAfterFirstEpoch(optuna.pruners.BasePruner):
        def prune(self, study: Any, trial: Any) -> bool:
            return trial.last_step is not None and trial.last_step >= 1

    cfg = tiny(tmp_path, "tune.epochs=null", "student.train.epochs=3")
    summary = run_study(cfg, tmp_path / "s", trials=1, progress=False, pruner=PruneAfterFirstEpoch())
    assert summary["states"]["PRUNED"] == 1 and "best_trial" not in summary
    assert not (tmp_path / "s" / "best.yaml").exists()
    assert len(distilled_val_accs(tmp_path / "s" / "trials" / "0000")) == 1  # 1 epoch of 3, then stopped
    assert "| 0 | pruned | - |" in (tmp_path / "s" / "trials.md").read_text()


def test_the_readme_tune_commands_parse_and_their_configs_can_be_tuned():
    import re
    import shlex

    from distill.cli import _parser

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    assert "### Tuning" in text
    commands = [c.split("#")[0] for c in re.findall(r"^distill tune .*$", text, flags=re.M)]
    assert len(commands) >= 2
    for command in commands:
        args = _parser().parse_args(shlex.split(command)[1:])
        assert args.command == "tune" and args.trials == 20
        check_study(load_config(root / args.config, list(args.overrides)))


@pytest.mark.slow
def test_distill_run_of_recipe_tune_runs_the_study_in_the_run_directory(tmp_path, capsys):
    pytest.importorskip("optuna")
    config = write_tiny(tmp_path)
    assert main(["run", str(config), "--set", "recipe=tune", "--set", "tune.trials=1", "--set", "tune.epochs=null",
                 "--name", "viarun", "--quiet"]) == 0
    run_dir = tmp_path / "studies" / "viarun"
    assert trial_rows(run_dir / "study.db") == [(0, "COMPLETE")] and (run_dir / "best.yaml").is_file()
    assert "# Study viarun" in capsys.readouterr().out


def test_a_study_without_budget_or_with_a_bad_name_is_refused_before_any_work(tmp_path):
    pytest.importorskip("optuna")
    with pytest.raises(ValueError, match=r"^tune: no budget: tune.trials and tune.minutes are both null"):
        run_study(tiny(tmp_path, "tune.trials=null"), progress=False)
    with pytest.raises(ValueError, match=r"^tune.study \(--study\) '\.\./x' is not a safe directory name"):
        run_study(tiny(tmp_path), study="../x", trials=1, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_diverging_trial_fails_and_the_study_goes_on(tmp_path, capsys):
    optuna = pytest.importorskip("optuna")
    cfg = tiny(tmp_path, "tune.lr=[1.0e+6, 1.0e+7]", "tune.methods=[kd]", "tune.epochs=null")
    summary = run_study(cfg, tmp_path / "s", trials=2, progress=True)
    assert summary["states"]["FAIL"] == 2 and not (tmp_path / "s" / "best.yaml").exists()
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    assert all("the loss became NaN or inf" in t.user_attrs["error"] for t in study.trials)
    assert "-> failed: [distilled] the loss became NaN or inf" in capsys.readouterr().err
    assert "2 trials (2 failed)" in (tmp_path / "s" / "trials.md").read_text()
