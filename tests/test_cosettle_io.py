"""Projector files, NAME+cosettle loading, and import of the authors' released checkpoint.pth."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cosettle import load_backend
from cosettle.backends.projected import ProjectedBackend
from cosettle.errors import UserError
from cosettle.projector import Projector
from cosettle.projector_io import import_released, load_projector, read_metadata, save_projector

REPO = Path(__file__).resolve().parents[1]


def _tiny_projector_file(path: Path) -> tuple[Path, Projector]:
    proj = Projector(192, seed=4)
    with torch.no_grad():
        proj.net.norm.weight.uniform_(0.5, 1.5)  # non-trivial LN affine so a lost weight would show
    meta = {"base_backend": "timm:vit_tiny_patch16_224", "weights": "random", "layer": 5, "norm": False,
            "training": {"epochs": 1}}
    return save_projector(path, proj, meta), proj


def test_save_load_roundtrip_and_metadata(tmp_path):
    p, proj = _tiny_projector_file(tmp_path / "proj.safetensors")
    loaded, meta = load_projector(p)
    for k, v in proj.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert meta["variant"] == "linear" and meta["in_dim"] == 192 and meta["layer"] == 5
    assert meta["num_parameters"] == 192 * 192 + 3 * 192
    assert "git_sha" in meta and (tmp_path / "proj.json").is_file()
    assert read_metadata(tmp_path / "proj.safetensors")["base_backend"] == "timm:vit_tiny_patch16_224"


def test_projected_backend_geometry_and_values(tmp_path, small_clip):
    p, proj = _tiny_projector_file(tmp_path / "proj.safetensors")
    pb = load_backend("timm:vit_tiny_patch16_224+cosettle", projector=str(p), precision="fp32")
    assert isinstance(pb, ProjectedBackend)
    assert pb.base.layer == 5 and pb.base.norm is False  # from the metadata
    base = load_backend("timm:vit_tiny_patch16_224", weights="random", layer=5, precision="fp32")
    fb, fp = base.extract(small_clip), pb.extract(small_clip)
    assert fp.geometry == fb.geometry
    assert fp.features.shape == fb.features.shape == (6, 192, 3, 4)
    expect = proj(fb.features.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert torch.allclose(fp.features, expect, atol=1e-4)
    # an override that contradicts the metadata is refused unless forced; other spellings load the same thing
    with pytest.raises(UserError, match="force-layer"):
        load_backend("timm:vit_tiny_patch16_224+cosettle", projector=str(p), layer=2)
    assert load_backend("timm:vit_tiny_patch16_224+cosettle", projector=str(p), layer=2,
                        force_layer=True).base.layer == 2
    assert load_backend(f"timm:vit_tiny_patch16_224+cosettle:{p}").base.layer == 5
    save_projector(tmp_path / "run", proj, read_metadata(p))  # a folder -> run/projector.safetensors
    assert load_backend("+cosettle", projector=str(tmp_path / "run")).feat_dim == 192
    s8 = load_backend("+cosettle", projector=str(p), stride=8)
    assert s8.geometry(48, 64) == s8.base.geometry(48, 64) and s8.geometry(48, 64).grid_w == 7


def test_unreadable_or_mismatched_projector(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot read projector"):
        load_backend("timm:vit_tiny_patch16_224+cosettle", projector=str(bad))
    with pytest.raises(UserError, match="not found"):
        load_backend("timm:vit_tiny_patch16_224+cosettle", projector=str(tmp_path / "missing.safetensors"))
    p, _ = _tiny_projector_file(tmp_path / "proj.safetensors")
    with pytest.raises(UserError, match="expects 192-d"):
        load_backend("timm:vit_small_patch16_224+cosettle", projector=str(p), weights="random")


# -- released checkpoints ----------------------------------------------------------------------
def _dinov2_b16_reg4(depth: int = 1):
    """A random DINOv2-style ViT-B/16 with 4 registers (the authors' encoder), shortened to ``depth``."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=depth, num_heads=12,
                             init_values=1e-5, reg_tokens=4, no_embed_class=True, num_classes=0,
                             dynamic_img_size=True).eval()


def _to_official_dinov2(model) -> dict[str, torch.Tensor]:
    """timm layout -> the official DINOv2 layout (register_tokens, mask_token, CLS position in pos_embed)."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    cls_pe = torch.randn(1, 1, 768) * 0.02
    sd["pos_embed"] = torch.cat([cls_pe, sd["pos_embed"]], dim=1)  # (1, 197, 768)
    sd["cls_token"] = sd["cls_token"] - cls_pe                      # timm adds it back
    sd["register_tokens"] = sd.pop("reg_token")
    sd["mask_token"] = torch.zeros(1, 768)
    return sd


def _released_file(path: Path, with_encoder: bool = True, prefix: str = "") -> tuple[Path, dict, object]:
    g = torch.Generator().manual_seed(1)
    adapter = {
        "adapter.adapter.adapter_linear.weight": torch.randn(768, 768, generator=g) * 0.02,
        "adapter.adapter.adapter_linear.bias": torch.randn(768, generator=g) * 0.01,
        "adapter.adapter.adapter_layer_norm1.weight": 1 + 0.1 * torch.randn(768, generator=g),
        "adapter.adapter.adapter_layer_norm1.bias": 0.1 * torch.randn(768, generator=g),
    }
    model = _dinov2_b16_reg4() if with_encoder else None
    sd = _to_official_dinov2(model) if with_encoder else {}
    sd.update({prefix + k: v for k, v in adapter.items()})
    args = argparse.Namespace(model="dinov2_vitb16", temp=0.03, lambda_reg=3.0, asy_pos_ratio=10.0,
                              fusion_net="linear", blr=1e-4, epochs=5, input_size=224, clip_gap=0.15)
    torch.save({"model": sd, "optimizer": {}, "epoch": 4, "scaler": {}, "args": args}, path)
    return path, adapter, model


def test_released_import_needs_opt_in_then_roundtrips(tmp_path):
    ckpt, adapter, model = _released_file(tmp_path / "checkpoint.pth")
    with pytest.raises(UserError, match="trust-checkpoint"):
        import_released(ckpt, tmp_path / "out")
    path, meta = import_released(ckpt, tmp_path / "out", allow_pickle=True)
    assert meta["training"]["asy_pos_ratio"] == 10.0 and meta["released_args"]["fusion_net"] == "linear"
    assert meta["base_backend"].startswith("timm:cosettle_vit_p16_d768_l1_h12") and "_r4" in meta["base_backend"]
    proj, _ = load_projector(path)
    assert proj.num_parameters() == 592_128
    assert torch.equal(proj.net.fc1.weight, adapter["adapter.adapter.adapter_linear.weight"])
    assert torch.equal(proj.net.norm.bias, adapter["adapter.adapter.adapter_layer_norm1.bias"])

    # the encoder in the file reproduces the source model; the projected backend = g(final normed tokens)
    pb = load_backend("+cosettle", projector=str(path), precision="fp32")
    x = torch.randn(2, 3, 64, 80)
    with torch.inference_mode():
        ours, grid = pb.base.forward_tokens(x)
        ref = model.forward_features(x)[:, model.num_prefix_tokens:]  # final norm applied, CLS+regs dropped
    assert grid == (4, 5) and torch.allclose(ours, ref, atol=1e-4)
    lin = adapter["adapter.adapter.adapter_linear.weight"]
    h = torch.tanh(ref @ lin.T + adapter["adapter.adapter.adapter_linear.bias"])
    expect = torch.nn.functional.layer_norm(h, (768,), adapter["adapter.adapter.adapter_layer_norm1.weight"],
                                            adapter["adapter.adapter.adapter_layer_norm1.bias"], eps=1e-5)
    with torch.inference_mode():
        feats = pb.forward_batch(x)  # (B, C, h, w)
    assert feats.shape == (2, 768, 4, 5)
    assert torch.allclose(feats.flatten(2).transpose(1, 2), expect, atol=1e-3)
    assert pb.mean == (0.485, 0.456, 0.406)  # ImageNet stats for every encoder, as the authors


def test_released_projector_only_with_clip_prefix(tmp_path):
    ckpt, adapter, _ = _released_file(tmp_path / "checkpoint.pth", with_encoder=False, prefix="visual.")
    with pytest.raises(UserError, match="--base"):
        import_released(ckpt, tmp_path / "o1", allow_pickle=True, with_encoder=False)
    path, meta = import_released(ckpt, tmp_path / "o2", allow_pickle=True, with_encoder=False, base="clip_vitb16")
    proj, _ = load_projector(path)
    assert meta["adapter_prefix"] == "visual." and meta["base_backend"] == "clip_vitb16"
    assert torch.equal(proj.net.fc1.bias, adapter["adapter.adapter.adapter_linear.bias"])


def test_import_cli_exit_codes(tmp_path):
    ckpt, _, _ = _released_file(tmp_path / "checkpoint.pth", with_encoder=False)
    script = str(REPO / "scripts" / "import_released.py")
    r = subprocess.run([sys.executable, script, str(ckpt), "--out", str(tmp_path / "o"), "--no-encoder",
                        "--base", "dino_vitb16"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "--trust-checkpoint" in r.stderr
    r = subprocess.run([sys.executable, script, str(ckpt), "--out", str(tmp_path / "o"), "--no-encoder",
                        "--base", "dino_vitb16", "--trust-checkpoint"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "projector.safetensors").is_file()


@pytest.mark.parametrize("layout", ["dino_module_prefix", "ijepa_no_cls", "dinov2_no_registers"])
def test_encoder_layouts_map_onto_timm(layout):
    """The encoder part of a released file, in other layouts, loads into the inferred timm ViT exactly."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    from cosettle.released import convert_encoder

    torch.manual_seed(0)
    kw = dict(img_size=64, patch_size=16, embed_dim=128, depth=2, num_heads=2, num_classes=0)
    if layout == "ijepa_no_cls":
        src = VisionTransformer(class_token=False, global_pool="avg", fc_norm=False, **kw)
    elif layout == "dinov2_no_registers":
        src = VisionTransformer(init_values=1e-5, **kw)
    else:
        src = VisionTransformer(**kw)
    src.eval()
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    if layout == "dino_module_prefix":
        sd = {"module." + k: v for k, v in sd.items()}
    if layout == "dinov2_no_registers":
        sd["mask_token"] = torch.zeros(1, 128)
    sd["adapter.adapter.adapter_linear.weight"] = torch.zeros(128, 128)
    name, state = convert_encoder(sd)
    model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    model.load_state_dict(state)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model.forward_features(x), src.forward_features(x), atol=1e-5)
    assert ("_cls" in name) == (layout != "ijepa_no_cls") and ("_ls" in name) == (layout == "dinov2_no_registers")


def test_recorded_normalisation_at_float32_keeps_the_base_key(tmp_path):
    """A projector stores mean/std at float32 precision: where they agree with the base's own, the projected
    backend's base keys the feature cache exactly as the plain backend (one extraction for base and
    +Co-Settle); a different normalisation is still applied."""
    base = load_backend("dinov2_vits14", weights="random", layer=5)  # ImageNet stats: not exact in float32
    as_f32 = [float(v) for v in torch.tensor(base.mean, dtype=torch.float32)]
    std_f32 = [float(v) for v in torch.tensor(base.std, dtype=torch.float32)]
    assert as_f32 != list(base.mean) or std_f32 != list(base.std)  # the float32 round trip does change them
    proj = Projector(384, seed=4)
    meta = {"base_backend": "dinov2_vits14", "weights": "random", "layer": 5, "norm": False}
    same = save_projector(tmp_path / "same.safetensors", proj, meta | {"mean": as_f32, "std": std_f32})
    pb = load_backend("+cosettle", projector=str(same))
    assert pb.base.cache_fields() == base.cache_fields()
    clip_mean, clip_std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    other = save_projector(tmp_path / "other.safetensors", proj, meta | {"mean": clip_mean, "std": clip_std})
    po = load_backend("+cosettle", projector=str(other))
    assert po.base.mean == tuple(clip_mean) and po.base.std == tuple(clip_std)
    assert po.base.cache_fields() != base.cache_fields()
