import argparse
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from cosettle import load_backend
from cosettle.errors import WeightsUnavailable


def _clip():
    return (np.random.default_rng(3).random((1, 42, 56, 3)) * 255).astype(np.uint8)


def test_timm_layout_safetensors_loads(tmp_path):
    src = load_backend("dinov2_vits14", weights="random", seed=1, precision="fp32")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(path))
    other = load_backend("dinov2_vits14", weights="random", seed=2, precision="fp32")
    loaded = load_backend("dinov2_vits14", weights=str(path), precision="fp32")
    torch.testing.assert_close(loaded(_clip()).features, src(_clip()).features)
    assert not torch.allclose(other(_clip()).features, src(_clip()).features)


def test_official_dinov2_layout_with_registers(tmp_path):
    """The official dinov2_vit*14_reg4_pretrain.pth layout: register_tokens, CLS in pos_embed, mask_token."""
    src = load_backend("dinov2_vits14_reg", weights="random", seed=1, precision="fp32")
    sd = {k: v.clone() for k, v in src.model.state_dict().items()}
    p0 = torch.randn(1, 1, sd["cls_token"].shape[-1])
    official = {k: v for k, v in sd.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    official["register_tokens"] = sd["reg_token"]
    official["pos_embed"] = torch.cat([p0, sd["pos_embed"]], dim=1)  # 1 + 37*37 entries
    official["cls_token"] = sd["cls_token"] - p0  # timm folds the CLS position into the token
    official["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(official, path)
    loaded = load_backend("dinov2_vits14_reg", weights=str(path), precision="fp32")
    torch.testing.assert_close(loaded(_clip()).features, src(_clip()).features)


def test_pickled_checkpoint_needs_opt_in(tmp_path):
    src = load_backend("dinov2_vits14", weights="random", seed=1, precision="fp32")
    path = tmp_path / "ckpt.pth"
    torch.save({"model": src.model.state_dict(), "args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(WeightsUnavailable, match="trust-checkpoint"):
        load_backend("dinov2_vits14", weights=str(path))
    ok = load_backend("dinov2_vits14", weights=str(path), allow_pickle=True, precision="fp32")
    torch.testing.assert_close(ok(_clip()).features, src(_clip()).features)


def test_missing_and_mismatched_files(tmp_path):
    with pytest.raises(WeightsUnavailable, match="not found"):
        load_backend("dinov2_vits14", weights=str(tmp_path / "nope.pth"))
    small = load_backend("timm:vit_tiny_patch16_224", weights="random")
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in small.model.state_dict().items()}, str(path))
    with pytest.raises(WeightsUnavailable, match="does not match"):
        load_backend("dinov2_vits14", weights=str(path))
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailable, match="cannot read"):
        load_backend("dinov2_vits14", weights=str(bad))


def test_offline_pretrained_fails_fast_and_names_the_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-cache")
    t0 = time.time()
    with pytest.raises(WeightsUnavailable) as err:
        load_backend("dinov2_vits14")  # default weights: timm's hub
    assert time.time() - t0 < 15
    msg = str(err.value)
    assert "vit_small_patch14_dinov2.lvd142m" in msg and "weights=PATH" in msg
    assert "\n" not in msg


def test_hub_probe_is_bounded(monkeypatch):
    """Without the offline env, reachability is one socket connect with a short timeout."""
    import socket

    from cosettle.backends import weights

    seen = {}

    def fake_connect(addr, timeout):
        seen["timeout"] = timeout
        raise OSError("network unreachable")

    monkeypatch.delenv("COSETTLE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", fake_connect)
    assert weights.hub_reachable() is False
    assert seen["timeout"] <= 5
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seen.clear()
    assert weights.hub_reachable() is False and not seen  # offline flag: no probe at all


def test_hub_weights_load_from_a_local_hf_cache(tmp_path, monkeypatch):
    """timm's real pretrained=True path, fed from a Hugging Face cache our test builds."""
    src = load_backend("dinov2_vits14", weights="random", seed=4, precision="fp32")
    repo_dir = tmp_path / "models--timm--vit_small_patch14_dinov2.lvd142m"
    snap = repo_dir / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(snap / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path), raising=False)
    hub = load_backend("dinov2_vits14", precision="fp32")  # weights default: the hub
    assert hub.weights == "hub"
    torch.testing.assert_close(hub(_clip()).features, src(_clip()).features)
