"""The README's examples run, and every shipped config is valid."""

import re
from pathlib import Path

import pytest

from distill.config import load_config
from distill.config import registry as recipe_registry

ROOT = Path(__file__).resolve().parents[1]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(python_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_example_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write runs/ write them here
    monkeypatch.setattr(recipe_registry, "_RECIPES", dict(recipe_registry._RECIPES))  # an example's recipe stays there
    exec(compile(python_blocks()[index], f"README.md python block {index}", "exec"), {"__name__": "readme"})


SHIPPED_CONFIGS = sorted((ROOT / "configs").rglob("*.yaml")) + sorted((ROOT / "benchmarks").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    load_config(path)


def test_readme_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one():
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line for line in quick.splitlines() if line.startswith("python3 -m venv")]
    assert len(commands) == 2
    assert all("-c constraints.txt" in c for c in commands)
    assert commands[0].endswith("distill demo") and commands[1].endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and "pytest" in ci


def test_the_default_test_command_skips_the_slow_tests_and_ci_runs_them():
    """`python -m pytest` runs the quick tests (pyproject's addopts deselect `slow`); CI runs the slow ones too."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "\naddopts = \"-q -m 'not slow'\"\n" in pyproject and 'markers = ["slow: ' in pyproject
    ci = (ROOT / ".ci" / "run").read_text()
    slow_pass = ci.split('bash -c "set -euo pipefail; $test_command"', 1)[1].split("hidden=$(mktemp -d)")[0]
    assert "-m pytest -p no:cacheprovider -m slow\n" in slow_pass
    assert "python -m pytest -m slow" in (ROOT / "README.md").read_text()


def test_ci_runs_the_quick_tests_with_the_datasets_hidden():
    """Tests that need a dataset that is not shipped must skip without it: .ci/run checks it for real."""
    from distill.data import sources

    ci = (ROOT / ".ci" / "run").read_text()
    hidden_run = ci.split("hidden=$(mktemp -d)", 1)[1]
    for var in (sources.DATA_ENV, sources.SYSTEM_DATA_ENV, "HOME", "XDG_CACHE_HOME"):
        assert f'{var}="$hidden/' in hidden_run, var
    assert '-m pytest -p no:cacheprovider -m "not slow"' in hidden_run


def documented_commands() -> list[tuple[str, str]]:
    """Every `distill run` command in the README, the shipped configs' comments and the CLI help, with
    backslash continuations joined: (where, command)."""
    from distill.cli import EXAMPLES

    sources = [("README.md", (ROOT / "README.md").read_text()), ("distill --help", "\n".join(EXAMPLES.values()))]
    sources += [(str(p.relative_to(ROOT)), "\n".join(line.lstrip("# ") for line in p.read_text().splitlines()))
                for p in SHIPPED_CONFIGS]
    commands = []
    for where, text in sources:
        joined = re.sub(r"\\\n\s*", " ", text)
        commands += [(where, line.strip()) for line in joined.splitlines() if line.strip().startswith("distill run")]
    return commands


def test_documented_method_runs_report_the_baseline_they_are_compared_with():
    """A method run's table has the baseline row, as the plain KD run's does: `compare`, never `recipe=distill`."""
    method_runs = [(w, c) for w, c in documented_commands() if "distill.method" in c or "distill.stages" in c]
    assert len(method_runs) >= 10
    assert [(w, c) for w, c in method_runs if "recipe=distill" in c] == []


def help_texts() -> str:
    """The help of ``distill`` and of each subcommand, as ``--help`` prints them."""
    import argparse

    from distill.cli import _parser

    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return "\n".join([parser.format_help(), *(p.format_help() for p in sub.choices.values())])


def test_every_config_path_in_the_help_and_the_readme_exists():
    for source, text in (("cli help", help_texts()), ("README.md", (ROOT / "README.md").read_text())):
        paths = set(re.findall(r"(?<![\w/.-])(configs/[\w/.-]+?\.yaml)", text))
        assert paths, source
        missing = sorted(p for p in paths if not (ROOT / p).is_file())
        assert not missing, f"{source} cites {missing}, which do not exist"


def test_readme_demo_time_says_on_what_machine():
    """The demo's time depends on the machine's load (25 s idle, 50 to 70 s busy on 2 cores): the
    README states it with its conditions, not as one bare number. (Not timed here: a timed test
    would fail on a busy machine.)"""
    text = (ROOT / "README.md").read_text()
    intro = text.split("`distill demo` trains,", 1)[1].split("```", 1)[0]
    assert "on an idle 2-core machine" in intro and "busy" in intro
