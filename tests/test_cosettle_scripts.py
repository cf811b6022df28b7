"""Smoke run of the position-shortcut script (the real numbers are in docs/cosettle.md)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _main_in_process(script: str, argv: list[str], capsys) -> tuple[int, str, str]:
    import importlib.util

    spec = importlib.util.spec_from_file_location(script.replace(".py", ""), REPO / "scripts" / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(SystemExit) as exc:
        mod.main(argv)
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


def test_position_shortcut_script_runs_both_arms(capsys):
    code, out, err = _main_in_process("position_shortcut.py", ["--size", "64", "--images", "16", "--batch-size", "4",
                                                              "--steps", "2"], capsys)
    assert code == 0, err[-2000:]
    d = json.loads(out)
    assert set(d["results"]) == {"without_pea", "with_pea"} and d["nodes"] == 4 and d["pe_scale"] == 30.0
    for arm in d["results"].values():
        assert set(arm["before"]) == {"eval_no_pea", "eval_pea"}
    # both arms start from the same seeded projector
    assert d["results"]["with_pea"]["before"] == d["results"]["without_pea"]["before"]
    code, out, err = _main_in_process("position_shortcut.py", ["--images", "4", "--batch-size", "4"], capsys)
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1


def test_position_shortcut_script_rotary_arm(capsys):
    code, out, err = _main_in_process("position_shortcut.py", ["--model", "vit_small_patch16_dinov3", "--depth", "1",
                                                              "--size", "64", "--images", "16", "--batch-size", "4",
                                                              "--steps", "2"], capsys)
    assert code == 0, err[-2000:]
    d = json.loads(out)
    assert "position_share_of_token_similarity" in d and d["nodes"] == 4
    assert set(d["results"]) == {"without_pea", "with_pea"}
    assert d["results"]["with_pea"]["before"] == d["results"]["without_pea"]["before"]
