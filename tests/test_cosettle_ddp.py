"""2-process gloo torchrun smoke run of the Co-Settle trainer, and its bad-input exits."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "scripts" / "train_projector.py")
TINY = ["--backend", "timm:vit_tiny_patch16_224", "--weights", "random", "--input-size", "48",
        "--batch-size", "1", "--num-workers", "0", "--progress", "false", "--pairs-per-clip", "1"]


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    """A folder of 4 generated mp4 clips (the 'folder of videos' data source)."""
    from cosettle.demo import render_demo
    from cosettle.io.video import write_video

    root = tmp_path_factory.mktemp("videos")
    for s in range(4):
        write_video(root / f"clip{s}.mp4", render_demo(num_frames=8, height=48, width=64, seed=s)[0], fps=8)
    return root


def test_torchrun_two_processes_gloo(video_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", SCRIPT,
           "--data", str(video_dir), "--out", str(out), "--epochs", "1", "--save-every", "1"] + TINY
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    # 4 clips / (2 processes x batch 1) = 2 steps; rank 0 alone writes the log and the projector
    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    ck = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert ck["world_size"] == 2 and ck["step"] == 2
    assert (out / "projector.safetensors").is_file()
    meta = json.loads((out / "projector.json").read_text())
    # no --layer: the backend's default block is recorded (issue 17): 2/3 of 12 blocks, round(12 * 16/24) - 1 = 7
    assert meta["base_backend"] == "timm:vit_tiny_patch16_224" and meta["layer"] == 7 and meta["norm"] is True


def _cli(args, capsys):
    from cosettle.commands import train_projector  # = scripts/train_projector.py = cosettle-train

    with pytest.raises(SystemExit) as exc:
        train_projector.main(args)
    err = capsys.readouterr().err.strip()
    return exc.value.code, err


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, video_dir):
    code, err = _cli(["--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")] + TINY, capsys)
    assert code == 2 and err.startswith("error: --data path not found") and "\n" not in err
    code, err = _cli(["--out", str(tmp_path / "o")] + TINY, capsys)
    assert code == 2 and "no training data" in err and "\n" not in err
    code, err = _cli(["--data", str(video_dir), "--out", str(tmp_path / "o"), "--backend", "nonexistent_net"], capsys)
    assert code == 2 and "unknown backend" in err and "\n" not in err
    # (plain dsift trains since 582568a -- without TINY that was a full default-size run, not a refusal)
    code, err = _cli(["--data", str(video_dir), "--out", str(tmp_path / "o"), "--backend", "dsift+cosettle"], capsys)
    assert code == 2 and "cannot train a projector" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n")
    code, err = _cli(["--data", str(empty), "--out", str(tmp_path / "o")] + TINY, capsys)
    assert code == 2 and "no clips found" in err


def test_data_sources_and_sampling(video_dir, tmp_path):
    import numpy as np

    from cosettle.data import ClipPairDataset, discover_clips, sample_pair

    clips = discover_clips(video_dir)
    assert len(clips) == 4 and all(c.kind == "video" for c in clips)
    ds = ClipPairDataset(clips, input_size=32, seed=3)
    a, b = ds[1], ds[1]
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)  # seeded per (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(ds[1], a)
    # the authors' rule: n = 20 -> gap 3, t1 in 1..16
    rng = np.random.default_rng(0)
    pairs = [sample_pair(20, rng) for _ in range(200)]
    assert all(t2 - t1 == 3 and 1 <= t1 <= 16 for t1, t2 in pairs)
    assert {t1 for t1, _ in pairs} == set(range(1, 17))
    # one crop and one flip shared by both frames: a static clip gives two identical frames
    from cosettle.io.video import write_frames

    frame = (np.random.default_rng(1).random((40, 56, 3)) * 255).astype(np.uint8)
    write_frames(tmp_path / "static", [frame] * 10)
    st = ClipPairDataset(discover_clips(tmp_path / "static"), input_size=32, seed=0)
    for i in range(4):
        st.set_epoch(i)
        x = st[0]
        assert torch.equal(x[0], x[1])
    # short clips: two random frames
    assert all(0 <= t < 4 for _ in range(20) for t in sample_pair(4, rng))


def test_davis_frame_folder_is_a_training_source(shared_dir):
    """Our own frame folders (DAVIS layout) work as --data: 50 frames -> gap int(0.15*50) = 7."""
    from cosettle.data import ClipPairDataset, discover_clips

    folder = shared_dir / "data" / "davis480" / "horsejump-high" / "JPEGImages"
    for src in (folder, folder.parent):  # the frame folder itself, or a folder of frame folders
        clips = discover_clips(src)
        assert [c.kind for c in clips] == ["frames"] and clips[0].path == str(folder)
    ds = ClipPairDataset(clips, input_size=56, seed=0)
    assert ds.reader.num_frames(clips[0]) == 50
    x = ds[0]
    assert x.shape == (2, 3, 56, 56) and torch.isfinite(x).all()
    # ImageNet-normalised: real frames span well beyond [0, 1]
    assert float(x.min()) < -1.0 and float(x.max()) > 1.0
