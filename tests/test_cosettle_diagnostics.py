"""Feature diagnostics: metric values on constructed features, and the CLI on tiny clips."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cosettle.diagnostics import (cycle_accuracy, effective_rank, inter_video_distance, intra_video_distance,
                                  prepare_frames)

REPO = Path(__file__).resolve().parents[1]


def test_cycle_accuracy_orthogonal_vs_constant_nodes():
    # 4x4 grid whose 2x2 blocks carry orthogonal (scaled) vectors, same in every frame -> acc 1
    nodes = 5 * torch.eye(4)
    frame = torch.stack([nodes[(y // 2) * 2 + x // 2] for y in range(4) for x in range(4)])
    clip = frame.expand(10, 16, 4).clone()
    assert cycle_accuracy(clip, (4, 4)) == 1.0
    # constant features: the walk is uniform and argmax picks node 0 for every row -> 1/4
    assert cycle_accuracy(torch.ones(10, 16, 4), (4, 4)) == pytest.approx(0.25)


def test_cycle_accuracy_unit_is_scale_free():
    g = torch.Generator().manual_seed(0)
    clip = torch.randn(10, 16, 8, generator=g) + 0.5 * torch.randn(1, 16, 8, generator=g)
    unit = torch.nn.functional.normalize(clip, dim=-1)
    raw = [cycle_accuracy(clip * s, (4, 4)) for s in (0.1, 1.0, 10.0)]
    assert len(set(raw)) > 1  # the authors' raw score moves with the feature scale on this clip
    for s in (0.1, 1.0, 10.0):  # the unit score does not: it is the raw score of unit tokens
        assert cycle_accuracy(clip * s, (4, 4), unit=True) == cycle_accuracy(unit, (4, 4))


def test_effective_rank_extremes():
    assert effective_rank(torch.eye(6, 10)) == pytest.approx(1.0)        # 6 equal singular values / 6
    rank1 = torch.ones(6, 1) @ torch.randn(1, 10)
    assert effective_rank(rank1) == pytest.approx(1 / 6, rel=1e-6)
    # two singular values 3:1 -> p = (3/4, 1/4) -> exp(H) / 2
    m = torch.diag(torch.tensor([3.0, 1.0]))
    H = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(m) == pytest.approx(math.exp(H) / 2, rel=1e-6)


def test_inter_and_intra_distances_by_hand():
    a = torch.zeros(9, 3)
    b = torch.zeros(9, 3)
    b[:, 0] = 2.0  # every patch of clip b sits 2 away from clip a's
    d = inter_video_distance([a, b])
    assert d["inter"] == pytest.approx(2.0)
    # all patches are at distance 1 from the global centroid -> diameter 2 -> normalised 1
    assert d["inter_norm100"] == pytest.approx(1.0)
    # 9 patches 2 apart (so a 0.5 shift never brings another patch closer than the patch itself)
    pts = torch.tensor([[2.0 * i, 2.0 * j, 0.0] for i in range(3) for j in range(3)])
    still = pts[None].expand(40, 9, 3).clone()
    assert intra_video_distance(still)["intra"] == pytest.approx(0.0, abs=1e-6)
    shifted = still.clone()
    shifted[1::2] += torch.tensor([0.0, 0.0, 0.5])  # every other frame moved by 0.5
    assert intra_video_distance(shifted)["intra"] == pytest.approx(0.5, abs=1e-5)


def test_prepare_frames_resize_and_center_crop():
    f = np.zeros((2, 100, 200, 3), np.uint8)
    f[:, :, 100:] = 255
    out = prepare_frames(f, size=64, resize=72)
    assert out.shape == (2, 64, 64, 3)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, -1, 0] == 255  # crop centred on the edge at x = 100


@pytest.fixture(scope="module")
def tiny_clips(tmp_path_factory) -> Path:
    from cosettle.demo import render_demo
    from cosettle.io.video import write_frames

    root = tmp_path_factory.mktemp("diag")
    for s in range(3):
        write_frames(root / f"clip{s}", render_demo(num_frames=10, height=48, width=64, seed=s)[0])
    return root


def _run(args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "feature_diagnostics.py")] + args,
                          capture_output=True, text=True, timeout=120)


def test_cli_base_and_projected_side_by_side(tiny_clips, tmp_path):
    from cosettle.projector import Projector
    from cosettle.projector_io import save_projector

    p = save_projector(tmp_path / "p.safetensors", Projector(192, seed=0),
                       {"base_backend": "timm:vit_tiny_patch16_224", "weights": "random", "layer": -1 % 12,
                        "norm": True})
    r = _run(["--backend", "timm:vit_tiny_patch16_224+cosettle", "--projector", str(p), "--videos", str(tiny_clips),
              "--size", "64", "--max-frames", "10", "--out", str(tmp_path / "d.json")])
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout)
    assert rep["clips"] == 3 and rep["frames_per_clip"] == [10, 10, 10]
    for side in ("base", "projected"):
        m = rep["results"][side]
        assert 0 <= m["cycle_acc"] <= 1 and 0 <= m["cycle_acc_unit"] <= 1 and 0 < m["effective_rank"] <= 1 and m["inter"] > 0
    assert "cycle_acc" in r.stderr  # the table
    assert json.loads((tmp_path / "d.json").read_text())["results"] == rep["results"]


def test_cli_bad_inputs_exit_2(tiny_clips, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_text("garbage")
    for args, msg in ((["--backend", "timm:vit_tiny_patch16_224", "--projector", str(bad)], "cannot read projector"),
                      (["--backend", "no_such_backend"], "unknown backend")):
        r = _run(args + ["--videos", str(tiny_clips), "--weights", "random"])
        assert r.returncode == 2 and msg in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    r = _run(["--backend", "dsift", "--videos", str(tmp_path / "nothing")])
    assert r.returncode == 2 and "not found" in r.stderr
