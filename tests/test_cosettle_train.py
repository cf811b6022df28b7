"""Co-Settle trainer: gradients, the PEA pass, learning on generated clips, exact resume after kill -9."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cosettle.pea import apply_pea
from cosettle.train import TrainConfig, Trainer
from cosettle.train.dist import DistContext

REPO = Path(__file__).resolve().parents[1]
TINY = dict(backend="timm:vit_tiny_patch16_224", weights="random", input_size=64, batch_size=2,
            num_workers=0, progress=False, precision="fp32", pairs_per_clip=1)  # one pair per clip: 2 steps/epoch


@pytest.fixture(scope="module")
def clip_list(tmp_path_factory) -> Path:
    """4 generated clips (frame folders of jpgs) and a list file, the authors' Kinetics layout."""
    from cosettle.demo import render_demo
    from cosettle.io.video import write_frames

    root = tmp_path_factory.mktemp("clips")
    for s in range(4):
        frames, _, _ = render_demo(num_frames=8, height=64, width=80, seed=s)
        write_frames(root / "frames" / "train" / "demo" / f"clip{s}", frames, ext="jpg")
    lst = root / "list.txt"
    lst.write_text("".join(f"frames/train/demo/clip{s}\n" for s in range(4)))
    return lst


def _trainer(clip_list, out, **kw) -> Trainer:
    cfg = TrainConfig(data=[str(clip_list)], out=str(out), **{**TINY, **kw})
    return Trainer(cfg, DistContext())


def _batch(tr: Trainer) -> torch.Tensor:
    tr.dataset.set_epoch(0)
    return torch.stack([tr.dataset[0], tr.dataset[1]])


def test_gradients_reach_only_the_projector(clip_list, tmp_path):
    tr = _trainer(clip_list, tmp_path)
    loss, _ = tr.forward_loss(_batch(tr))
    loss.backward()
    enc_params = list(tr.encoder.model.parameters())
    assert all(not p.requires_grad and p.grad is None for p in enc_params)
    proj = list(tr.projector.named_parameters())
    assert len(proj) == 4 and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in proj)
    # only the projector is in the optimiser
    opt_params = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for _, p in proj}
    decay = {g["weight_decay"]: len(g["params"]) for g in tr.optimizer.param_groups}
    assert decay == {0.05: 1, 0.0: 3}  # only the Linear weight decays


def test_pea_only_on_the_return_copy_of_t1(clip_list, tmp_path):
    tr = _trainer(clip_list, tmp_path)
    x = _batch(tr)
    tr.pea.generator.manual_seed(123)
    z, grid = tr.encode(x)
    assert z.shape == (2, 3, 16, 192) and grid == (4, 4)  # 64 px / patch 16
    enc = tr.encoder
    with torch.inference_mode():
        t1, _ = enc.forward_tokens(x[:, 0])
        t2, _ = enc.forward_tokens(x[:, 1])
        oh, ow = tr.pea.last_offset
        t1b, _ = enc.forward_tokens(x[:, 0], pos_embed_transform=lambda pe: apply_pea(pe, 10.0, oh, ow))
    assert torch.allclose(z[:, 0], t1, atol=1e-5) and torch.allclose(z[:, 1], t2, atol=1e-5)
    assert torch.allclose(z[:, 2], t1b, atol=1e-5)
    assert not torch.allclose(z[:, 2], z[:, 0], atol=1e-3)
    # without PEA the return frame is the plain t1 pass
    tr.cfg.pea = False
    z2, _ = tr.encode(x)
    assert torch.equal(z2[:, 2], z2[:, 0])


def test_loss_decreases_on_generated_clips(clip_list, tmp_path):
    tr = _trainer(clip_list, tmp_path, lr=3e-3, warmup_epochs=0.0, epochs=12, batch_size=4, save_every=1000)
    x = _batch(tr)

    def held_out_loss() -> float:
        tr.pea.generator.manual_seed(0)
        with torch.no_grad():
            return float(tr.forward_loss(x)[0])

    before = held_out_loss()
    hist = tr.run()
    after = held_out_loss()
    assert len(hist) == 12
    assert after < 0.8 * before, (before, after)
    assert (tmp_path / "projector.safetensors").is_file()
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 12 and {"loss", "l_cyc", "l_reg", "acc", "lr", "step"} <= set(json.loads(lines[0]))


def test_kill_and_resume_gives_the_same_next_step_loss(clip_list, tmp_path):
    args = dict(epochs=3, save_every=1)  # 2 steps/epoch -> 6 steps; mid-epoch kill (fp32: bit-stable kernels)
    # 1) uninterrupted
    full = _trainer(clip_list, tmp_path / "full", **args).run()
    # 2) a separate process killed with SIGKILL right after step 3's checkpoint
    out = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "scripts" / "train_projector.py"), "--data", str(clip_list), "--out", str(out),
           "--kill-after-step", "3"] + [f"--{k.replace('_', '-')}={v}" for k, v in {**TINY, **args}.items()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ck = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert (ck["step"], ck["epoch"], ck["batch_in_epoch"]) == (3, 1, 1)
    # a log line written after the checkpoint (as if killed later) must not survive the resume
    with open(out / "log.jsonl", "a") as fh:
        fh.write('{"step": 4, "loss": 123.0}\n{"step": 5, "lo')
    # 3) resume in this process
    resumed = _trainer(clip_list, out, **args).run()
    assert [h["step"] for h in resumed] == [4, 5, 6]
    for r in resumed:
        f = full[r["step"] - 1]
        assert r["loss"] == pytest.approx(f["loss"], rel=1e-5, abs=1e-6), (r, f)
        assert r["lr"] == pytest.approx(f["lr"], rel=1e-9)
    # logs of the killed run end at step 3, the resumed one continues at 4
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_stride_reaches_the_encoder_and_the_projector_file(clip_list, tmp_path):
    """--stride trains on overlapping patches (vit_tiny: patch 16): 64 px -> (64-16)/8+1 = 7 cells a side."""
    from cosettle.train.trainer import build_encoder

    cfg = TrainConfig(data=[str(clip_list)], out=str(tmp_path / "o"), **{**TINY, "stride": 8})
    enc = build_encoder(cfg, torch.device("cpu"))
    assert enc.stride == 8
    tokens, grid = enc.forward_tokens(torch.zeros(1, 3, 64, 64))
    assert grid == (7, 7) and tokens.shape[1] == 49
    assert build_encoder(TrainConfig(data=[str(clip_list)], out=str(tmp_path / "p"), **TINY),
                         torch.device("cpu")).stride == 16  # default: the backend's own
