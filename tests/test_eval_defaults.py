"""badja_eval/run.py defaults as a new user meets them: the project's default tracker among the default
trackers, every tracker in --help, a stdout line naming each annotated sequence that was not evaluated
and why, and a line saying what runs (and what trains) before the work starts."""
from __future__ import annotations

import json

import pytest

from tracker import tracker_names


@pytest.fixture
def data_root(shared_dir, tmp_path):
    """horsejump-high cut to 2 annotated frames (frames 0..2 linked), cows annotated without frames, and
    an annotation of a non-DAVIS BADJA clip (tiger)."""
    root = tmp_path / "data"
    src = shared_dir / "data"
    ann = root / "badja" / "joint_annotations"
    ann.mkdir(parents=True)
    raw = json.loads((src / "badja/joint_annotations/horsejump-high.json").read_text())
    (ann / "horsejump-high.json").write_text(json.dumps(raw[:2]))
    (ann / "cows.json").write_text((src / "badja/joint_annotations/cows.json").read_text())
    (ann / "tiger.json").write_text((src / "badja/joint_annotations/tiger.json").read_text())
    for sub, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
        d = root / "davis480" / "horsejump-high" / sub
        d.mkdir(parents=True)
        for i in range(3):
            (d / f"{i:05d}.{ext}").symlink_to(src / "davis480/horsejump-high" / sub / f"{i:05d}.{ext}")
    return root


def _main(argv, capsys):
    from badja_eval.run import main

    with pytest.raises(SystemExit) as ei:
        main([str(a) for a in argv])
    return ei.value.code, capsys.readouterr()


def test_default_trackers_include_the_project_default_and_help_lists_every_tracker(capsys):
    from badja_eval.run import EvalConfig, build_parser

    assert build_parser().parse_args([]).trackers == ["static", "flow", "dino-flow"]
    assert EvalConfig().trackers == ["static", "flow", "dino-flow"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in tracker_names():
        assert f"{name}:" in text, name
    assert "~8 min" in text  # the cost of the default's training is stated


def test_skipped_sequences_are_named_with_the_reason(data_root, tmp_path, capsys):
    code, cap = _main(["--data-root", data_root, "--trackers", "static", "--out", tmp_path / "o", "--quiet"], capsys)
    assert code == 0, cap.err
    lines = cap.out.splitlines()
    assert lines[0] == "BADJA: evaluating 1 of 3 annotated sequences; skipped 2:"
    cows = next(ln for ln in lines if ln.startswith("  skipped cows:"))
    assert "frames missing" in cows and str(data_root / "davis480" / "cows" / "JPEGImages") in cows
    assert any(ln.startswith("  skipped tiger: not a DAVIS clip") for ln in lines)
    assert "badja: trackers static on 1 video(s)" in cap.out
    assert "mean over 1 video(s)" in cap.out


def test_named_sequences_print_no_skip_line_and_trained_trackers_say_so(data_root, tmp_path, capsys):
    from badja_eval.run import EvalConfig, what_runs

    code, cap = _main(["--data-root", data_root, "--sequences", "horsejump-high", "--trackers", "static",
                       "--out", tmp_path / "o", "--quiet"], capsys)
    assert code == 0 and "skipped" not in cap.out
    line = what_runs(EvalConfig(trackers=["static", "flow", "dino-flow"], backends=["dsift", "dinov2_vits14"],
                                out="runs/x"), 2)
    assert "dino-flow trains once per video and backend (4 fit(s)" in line and "--trackers static,flow" in line
    assert "fit" not in what_runs(EvalConfig(trackers=["static", "flow"], out="runs/x"), 2)
