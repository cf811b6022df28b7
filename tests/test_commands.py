"""The command-line surface: console entry points, script forms without path hacks, and the tracker registry
as every CLI shows it."""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tracker
from badja_eval.run import build_parser as eval_parser
from badja_eval.runner import Method, Runner
from cosettle.errors import UserError
from tracker.baselines import StaticTracker
from tracker.commands.track import build_parser as track_parser
from tracker.registry import _REGISTRY, build_tracker, register_tracker, tracker_entry, tracker_names

try:
    import tomllib  # Python >= 3.11
except ImportError:  # 3.9 / 3.10, which requires-python allows: the scripts table is read by hand below
    tomllib = None
REPO = Path(__file__).resolve().parents[1]


def project_scripts(text: str) -> dict:
    """pyproject.toml's ``[project.scripts]`` table, read without tomllib: ``name = "module:func"`` lines up to
    the next table header (the only TOML this table uses)."""
    m = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", text, re.S | re.M)
    assert m, "pyproject.toml has no [project.scripts] table"
    return dict(re.findall(r'^([A-Za-z0-9_.-]+)\s*=\s*"([^"]+)"\s*$', m.group(1), re.M))


SCRIPTS = project_scripts((REPO / "pyproject.toml").read_text())
HELP_CLIS = {"cosettle-track": "scripts/track.py", "cosettle-eval": "badja_eval/run.py"}


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.skipif(tomllib is None, reason="tomllib is Python >= 3.11: the cross-check of the hand reader")
def test_the_hand_reader_of_the_scripts_table_agrees_with_tomllib():
    text = (REPO / "pyproject.toml").read_text()
    assert project_scripts(text) == tomllib.loads(text)["project"]["scripts"]


def test_every_console_command_names_a_main_function():
    assert set(SCRIPTS) == {"cosettle-track", "cosettle-eval", "cosettle-train", "cosettle-features"}
    for name, target in SCRIPTS.items():
        module, _, func = target.partition(":")
        assert callable(getattr(importlib.import_module(module), func)), name


def test_the_registry_lists_the_project_trackers_default_first():
    assert tracker_names() == ["dino-flow", "dino", "flow", "features", "static"]
    assert tracker.tracker_names is tracker_names
    assert [n for n in tracker_names() if tracker_entry(n).needs_backend] == ["dino-flow", "dino", "features"]
    assert [n for n in tracker_names() if tracker_entry(n).dino_config] == ["dino-flow", "dino"]
    with pytest.raises(UserError, match="unknown tracker 'nope'.*dino-flow, dino, flow, features, static"):
        build_tracker("nope")
    with pytest.raises(UserError, match="needs a backend"):
        build_tracker("features")


@pytest.fixture
def extra_tracker():
    """A tracker registered by a user: it must show up everywhere the project's own do."""

    @register_tracker("still-test", summary="a user's tracker for this test", rank=90)
    def _build(backend, config, progress, **kwargs):
        return StaticTracker()

    try:
        yield "still-test"
    finally:
        _REGISTRY.pop("still-test")


def test_every_cli_help_lists_every_registered_tracker(extra_tracker):
    helps = {"track": track_parser().format_help(), "eval": eval_parser().format_help()}
    for cli, text in helps.items():
        for name in tracker_names():
            assert f"{name}:" in _flat(text), (cli, name)
    assert "a user's tracker for this test" in _flat(helps["track"])
    # the track CLI accepts it as a choice, the evaluator as a method without a backend
    assert track_parser().parse_args(["--tracker", extra_tracker]).tracker == extra_tracker
    runner = Runner(Path("unused"))
    assert runner.tracker_config(Method(extra_tracker)) is None
    with pytest.raises(UserError, match="takes no settings"):
        Runner(Path("unused"), tracker_overrides={extra_tracker: {"x": 1}}).tracker_config(Method(extra_tracker))


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_tracker("flow", summary="again")(lambda *a, **k: None)


@pytest.mark.parametrize("command", sorted(HELP_CLIS))
def test_installed_console_commands_list_the_trackers(command):
    exe = Path(sys.executable).parent / command
    if not exe.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{exe} missing: pip install -e . must install the console commands")
        pytest.skip(f"{command} not installed in this interpreter's environment (pip install -e .)")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in tracker_names():
        assert f"{name}:" in _flat(out.stdout), name


@pytest.mark.parametrize("script", sorted(HELP_CLIS.values()) + ["scripts/train_projector.py",
                                                                  "scripts/extract_features.py"])
def test_script_forms_run_without_path_hacks(script):
    """From the checkout, as a user types them: the installed packages are found, no sys.path.insert."""
    out = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "sys.path" not in (REPO / script).read_text() + (REPO / "scripts" / "_entry.py").read_text()


def test_a_checkout_without_the_packages_gets_one_error_line():
    """``python -S`` hides site-packages (so the editable install): the wrapper names the fix, no traceback."""
    out = subprocess.run([sys.executable, "-S", "scripts/track.py", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert out.returncode == 2
    assert out.stderr.strip() == ("error: cannot import tracker -- install the project first: pip install -e . "
                                  "(in the checkout)")


def test_no_script_or_package_module_edits_sys_path():
    offenders = [str(p.relative_to(REPO)) for d in ("scripts", "cosettle", "tracker", "badja_eval")
                 for p in (REPO / d).rglob("*.py") if "sys.path.insert" in p.read_text()]
    assert not offenders
