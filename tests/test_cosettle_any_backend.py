"""Co-Settle on any backend (DINOv3, CNN, dsift); the side-by-side fixes; the CLI error cases."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cosettle.backends import load_backend
from cosettle.errors import UserError
from cosettle.projector_io import load_projector
from cosettle.train import TrainConfig, Trainer
from cosettle.train.dist import DistContext

REPO = Path(__file__).resolve().parents[1]
COMMON = dict(weights="random", input_size=64, batch_size=2, num_workers=0, progress=False, precision="fp32",
              max_steps=2, pairs_per_clip=2, epochs=1)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    from cosettle.demo import render_demo
    from cosettle.io.video import write_frames

    root = tmp_path_factory.mktemp("clips")
    for s in range(2):
        frames, _, _ = render_demo(num_frames=8, height=64, width=80, seed=s)
        write_frames(root / f"clip{s}", frames, ext="jpg")
    return root


@pytest.mark.parametrize("backend,layer,pea,dim", [("timm:vit_small_patch16_dinov3", -1, True, 384),
                                                   ("timm:resnet10t", 2, False, 128), ("dsift", -1, False, 262)])
def test_training_steps_write_a_projector_the_projected_backend_loads(backend, layer, pea, dim, clip_dir, tmp_path,
                                                                      small_clip):
    cfg = TrainConfig(backend=backend, data=[str(clip_dir)], out=str(tmp_path / "run"), layer=layer, **COMMON)
    tr = Trainer(cfg, DistContext())
    assert tr.use_pea is pea  # PEA where the backend has position encodings (rotary), none on CNN/dsift
    hist = tr.run()
    assert len(hist) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    path = tmp_path / "run" / "projector.safetensors"
    proj, meta = load_projector(path)
    assert meta["base_backend"] == backend and meta["pea"] is pea and proj.in_dim == dim
    projected = load_backend(f"{backend}+cosettle:{path}", precision="fp32")
    if backend == "dsift":
        base = load_backend("dsift")
    else:  # the tokens the projector was trained on: the recorded layer (-1 -> last) and norm
        assert meta["layer"] == layer % meta["depth"] and meta["norm"] is (backend != "timm:resnet10t")
        base = load_backend(backend, weights="random", precision="fp32", layer=layer, norm=meta["norm"])
    g_p, g_b = projected.geometry(48, 64), base.geometry(48, 64)
    assert g_p == g_b
    feats = projected.extract(small_clip[:2])
    assert feats.features.shape == (2, dim, g_b.grid_h, g_b.grid_w)
    with torch.no_grad():
        expect = proj(base.extract(small_clip[:2]).features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert torch.allclose(feats.features, expect, atol=1e-4)


def test_dsift_trains_on_its_own_input_range(clip_dir, tmp_path):
    """dsift reads raw [0, 1] RGB: auto normalisation gives it mean 0 / std 1 (ViTs keep ImageNet)."""
    tr = Trainer(TrainConfig(backend="dsift", data=[str(clip_dir)], out=str(tmp_path), **COMMON), DistContext())
    x = tr.dataset[0]
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert tr.dataset.mean.flatten().tolist() == [0.0, 0.0, 0.0]


def test_rope_pea_only_on_the_return_copy(clip_dir, tmp_path):
    cfg = TrainConfig(backend="timm:vit_small_patch16_dinov3", data=[str(clip_dir)], out=str(tmp_path), **COMMON)
    tr = Trainer(cfg, DistContext())
    with torch.no_grad():  # open LayerScale (1e-5 at random init) so positions reach the tokens
        for blk in tr.encoder.model.blocks:
            blk.gamma_1.fill_(1.0)
            blk.gamma_2.fill_(1.0)
    tr.dataset.set_epoch(0)
    x = torch.stack([tr.dataset[0], tr.dataset[1]])
    z, grid = tr.encode(x)
    with torch.inference_mode():
        plain1, _ = tr.encoder.forward_tokens(x[:, 0])
        plain2, _ = tr.encoder.forward_tokens(x[:, 1])
    assert grid == (4, 4)
    assert torch.allclose(z[:, 0], plain1, atol=1e-5) and torch.allclose(z[:, 1], plain2, atol=1e-5)
    assert not torch.allclose(z[:, 2], plain1, atol=1e-3)


def test_small_collection_defaults_draw_several_pairs_per_clip(clip_dir, tmp_path):
    from cosettle.train.trainer import pairs_per_clip

    assert pairs_per_clip(TrainConfig(data=["x"]), 13) == 79  # ceil(1024 / 13): >= 1024 pairs an epoch
    assert pairs_per_clip(TrainConfig(data=["x"]), 240_000) == 1  # Kinetics: the authors' one pair
    assert pairs_per_clip(TrainConfig(data=["x"], pairs_per_clip=3), 13) == 3
    cfg = TrainConfig(backend="dsift", data=[str(clip_dir)], out=str(tmp_path), **{**COMMON, "pairs_per_clip": 5})
    tr = Trainer(cfg, DistContext())
    assert len(tr.dataset) == 10
    tr.dataset.set_epoch(0)
    assert not torch.equal(tr.dataset[0], tr.dataset[2])  # clip 0, pairs 0 and 1: different draws


# -- side-by-side fixes ----------------------------------------------------------------------------
def test_trunc_normal_init_is_the_authors_std():
    from cosettle.projector import Projector

    w = Projector(768, seed=0).net.fc1.weight.detach()
    # timm's trunc_normal_(std=.02) cuts at +-2 absolute = 100 sigma: a plain N(0, 0.02) (std 0.0200);
    # the old +-2 sigma cut gave 0.0176. 589,824 draws: the std's standard error is ~2e-5.
    assert abs(float(w.std()) - 0.0200) < 2e-4
    assert float(w.abs().max()) > 0.04  # values beyond 2 sigma exist


def test_orthogonal_init_is_a_scaled_isometry():
    import torch

    from cosettle.projector import Projector

    C = 262  # dsift's width
    w = Projector(C, init="orthogonal", seed=0).net.fc1.weight.detach().double()
    s = torch.linalg.svdvals(w)
    assert torch.allclose(s, torch.full_like(s, 0.02 * C ** 0.5), rtol=1e-5)  # every singular value
    # the same Frobenius norm as trunc_normal(0.02), whose singular values spread from ~0 to ~2x
    g = Projector(C, seed=0).net.fc1.weight.detach().double()
    assert abs(float(w.norm() / g.norm()) - 1) < 0.01
    sg = torch.linalg.svdvals(g)
    assert float(sg.min()) < 0.1 * float(s[0]) < float(s[0]) < 0.6 * float(sg.max())
    w2 = Projector(C, init="orthogonal", seed=0).net.fc1.weight.detach().double()
    assert torch.equal(w, w2)


def _ijepa_file(path: Path):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    # heads = width / 64, as in every released encoder (the import infers it that way)
    src = VisionTransformer(img_size=64, patch_size=16, embed_dim=128, depth=2, num_heads=2, num_classes=0,
                            class_token=False, global_pool="avg", fc_norm=False).eval()
    with torch.no_grad():
        src.norm.weight.mul_(3.0)  # a final norm that visibly changes the tokens
    g = torch.Generator().manual_seed(1)
    adapter = {"adapter.adapter.adapter_linear.weight": 0.1 * torch.randn(128, 128, generator=g),
               "adapter.adapter.adapter_linear.bias": torch.zeros(128),
               "adapter.adapter.adapter_layer_norm1.weight": torch.ones(128),
               "adapter.adapter.adapter_layer_norm1.bias": torch.zeros(128)}
    sd = {**{k: v.clone() for k, v in src.state_dict().items()}, **adapter}
    args = argparse.Namespace(model="ijepa_vit_base", temp=0.03, fusion_net="linear")
    torch.save({"model": sd, "args": args}, path)
    return src, adapter


def test_ijepa_import_reads_unnormed_tokens(tmp_path):
    from cosettle.projector_io import import_released

    src, adapter = _ijepa_file(tmp_path / "ijepa.pth")
    path, meta = import_released(tmp_path / "ijepa.pth", tmp_path / "out", allow_pickle=True)
    assert meta["norm"] is False
    pb = load_backend("+cosettle", projector=str(path), precision="fp32")
    assert pb.base.norm is False
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        t = src.patch_embed(x)
        t = src._pos_embed(t)
        for blk in src.blocks:
            t = blk(t)  # the authors' eval path: last block output, no final norm
        tokens, _ = pb.base.forward_tokens(x)
        h = torch.tanh(t @ adapter["adapter.adapter.adapter_linear.weight"].T)
        expect = torch.nn.functional.layer_norm(h, (128,))
        got = pb.forward_batch(x).flatten(2).transpose(1, 2)
    assert torch.allclose(tokens, t, atol=1e-4)  # un-normed block output
    assert not torch.allclose(tokens, src.norm(t), atol=0.1)  # (the normed tokens are far from it)
    assert torch.allclose(got, expect, atol=1e-4)
    # --norm true on the CLI overrides the auto choice
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "import_released.py"), str(tmp_path / "ijepa.pth"),
                        "--out", str(tmp_path / "o2"), "--trust-checkpoint", "--norm", "true"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["norm"] is True


def test_explicit_layer_or_norm_against_the_file_is_an_error_unless_forced(tmp_path, clip_dir, caplog):
    cfg = TrainConfig(backend="timm:vit_tiny_patch16_224", data=[str(clip_dir)], out=str(tmp_path), layer=-1,
                      **COMMON)
    Trainer(cfg, DistContext()).run()  # layer -1 of 12 -> recorded as 11, norm True
    p = str(tmp_path / "projector.safetensors")
    name = "timm:vit_tiny_patch16_224+cosettle"
    assert load_backend(name, projector=p, layer=-1).base.layer == 11  # the same layer spelled differently
    with pytest.raises(UserError, match="force-layer"):
        load_backend(name, projector=p, layer=7)
    with pytest.raises(UserError, match="norm"):
        load_backend(name, projector=p, norm=False)
    with caplog.at_level("WARNING"):
        pb = load_backend(name, projector=p, layer=7, force_layer=True)
    assert pb.base.layer == 7 and "forced" in caplog.text


# -- CLIs ------------------------------------------------------------------------------------------
def _run(script: str, *args: str):
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], capture_output=True,
                          text=True, timeout=180, env={"COSETTLE_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_train_projector_help_and_flags(tmp_path):
    r = _run("train_projector.py", "--help")
    assert r.returncode == 0
    assert "--kill-after-step" not in r.stdout and "OPTIONAL" not in r.stdout
    assert "--trust-checkpoint" in r.stdout and "--allow-pickle" not in r.stdout
    # refusing its input leaves nothing behind (no out/train.log, no out/)
    out = tmp_path / "out"
    r = _run("train_projector.py", "--backend", "dsift", "--data", str(tmp_path / "missing"), "--out", str(out))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert not out.exists()
    # the old flag name still parses (hidden alias)
    import cv2
    import numpy as np

    (tmp_path / "clip").mkdir()
    cv2.imwrite(str(tmp_path / "clip" / "00000.jpg"), np.zeros((32, 32, 3), np.uint8))
    r = _run("train_projector.py", "--backend", "timm:swin_tiny_patch4_window7_224", "--allow-pickle",
             "--data", str(tmp_path / "clip"), "--out", str(out))
    assert r.returncode == 2 and "not supported" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


class _Thing:  # pickled under a module that does not exist at load time
    pass


def test_import_released_errors_name_the_real_problem(tmp_path):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    r = _run("import_released.py", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "trust-checkpoint" not in r.stderr
    # a pickle with an unknown class: the restricted loader refuses it -> the opt-in is advised ...
    _Thing.__module__ = "no_such_module_xyz"
    sys.modules["no_such_module_xyz"] = sys.modules[__name__]
    try:
        torch.save({"model": {}, "args": _Thing()}, tmp_path / "odd.pth")
    finally:
        del sys.modules["no_such_module_xyz"]
        _Thing.__module__ = __name__
    r = _run("import_released.py", str(tmp_path / "odd.pth"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--trust-checkpoint" in r.stderr
    # ... and with it, the full unpickler is announced and its failure is one line too
    r = _run("import_released.py", str(tmp_path / "odd.pth"), "--out", str(tmp_path / "o"), "--trust-checkpoint")
    assert r.returncode == 2 and "only for files you trust" in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "even with full unpickling" in last and "Traceback" not in r.stderr


def test_feature_diagnostics_options_have_help():
    r = _run("feature_diagnostics.py", "--help")
    assert r.returncode == 0
    for phrase in ("frames per clip", "at most this many clips", "bf16", "held-out clips", "debug logging"):
        assert phrase in " ".join(r.stdout.split()), phrase


# -- the trainer's default layer is the backend's default (issue 17) ---------------------------------
@pytest.mark.parametrize("backend,expect_layer,expect_stride", [
    ("timm:vit_tiny_patch16_224", 7, 16),          # ViT: 12 blocks -> round(12*16/24) - 1 = 7, not the last (11)
    ("timm:vit_small_patch16_dinov3", 7, 16),      # DINOv3 (Eva, RoPE): the same rule
    ("timm:resnet10t", 2, 8),                      # CNN: stages at strides 2, 4, 8, 16, 32 -> the stride-8 one
])
def test_trainer_default_layer_is_the_backends_and_the_projected_backend_uses_the_recorded_one(
        backend, expect_layer, expect_stride, clip_dir, tmp_path):
    """No --layer: the trainer reads the tokens NAME gives without --layer (hand-computed index above),
    records that index, and NAME+cosettle without --layer rebuilds the same stage: the projected
    backend has the base's stride, where the old last-block default gave a CNN stride 32."""
    cfg = TrainConfig(backend=backend, data=[str(clip_dir)], out=str(tmp_path / "run"), **COMMON)
    assert cfg.layer is None
    Trainer(cfg, DistContext()).run()
    path = tmp_path / "run" / "projector.safetensors"
    _, meta = load_projector(path)
    base = load_backend(backend, weights="random")
    assert base.layer == expect_layer and base.stride == expect_stride
    assert meta["layer"] == expect_layer and meta["stride"] == expect_stride
    for proj_name in (f"{backend}+cosettle:{path}", f"{backend}+cosettle"):
        pb = load_backend(proj_name, projector=None if ":" in proj_name.split("+", 1)[1] else str(path),
                          layer=None)  # an unset CLI --layer arrives as None
        assert pb.base.layer == expect_layer and pb.stride == base.stride == expect_stride
        assert pb.geometry(64, 64) == base.geometry(64, 64)


def test_trainer_default_layer_on_dsift_has_no_layer(clip_dir, tmp_path):
    cfg = TrainConfig(backend="dsift", data=[str(clip_dir)], out=str(tmp_path / "run"), **COMMON)
    Trainer(cfg, DistContext()).run()
    _, meta = load_projector(tmp_path / "run" / "projector.safetensors")
    pb = load_backend(f"dsift+cosettle:{tmp_path / 'run' / 'projector.safetensors'}")
    assert meta["layer"] is None and pb.stride == load_backend("dsift").stride == 8
