"""DINOv3 (rotary) and CNN backends with random weights; unsupported timm families; RoPE-PEA."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cosettle.backends import load_backend
from cosettle.errors import UserError
from cosettle.pea import PEA

TINY_V3 = dict(depth=3, embed_dim=64, num_heads=2)


def _v3(**kw):
    kw = {"weights": "random", "precision": "fp32", "model_kwargs": TINY_V3, **kw}
    return load_backend("timm:vit_small_patch16_dinov3", **kw)


def test_dinov3_names_and_the_reported_crash_is_fixed():
    from cosettle.backends import list_backends

    names = list_backends()
    for n in ("dinov3_vits16", "dinov3_vits16plus", "dinov3_vitb16", "dinov3_vitl16", "dinov3_vith16plus",
              "dinov3_vit7b16"):
        assert n in names
    # the exact call (full ViT-S/16 size): used to raise TypeError with a traceback
    b = load_backend("timm:vit_small_patch16_dinov3.lvd1689m", weights="random", precision="fp32")
    assert (b.feat_dim, b.patch_size, b.depth, b.position_encoding) == (384, 16, 12, "rotary")
    assert b.layer == 7  # DINO-Tracker's relative depth: round(12 * 16 / 24) - 1


def test_dinov3_tokens_match_timm_and_registers_are_dropped():
    b = _v3(layer=-1, norm=True)
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        tokens, grid = b.forward_tokens(x)
        ref = b.model.forward_features(x)
    assert b.model.num_prefix_tokens == 5  # CLS + 4 registers
    assert grid == (3, 4) and tokens.shape == (2, 12, 64)
    assert torch.allclose(tokens, ref[:, 5:], atol=1e-5)


def test_dinov3_rotary_coordinates_at_both_strides():
    b16, b8 = _v3(), _v3(stride=8)
    # stride 16: DINOv3's own 0.5-centred grid, (i + 0.5) / n -> [-1, 1]; 3 rows: -2/3, 0, 2/3
    c = b16.cell_coords(3, 4).reshape(3, 4, 2)
    assert torch.allclose(c[:, 0, 0], torch.tensor([-2 / 3, 0.0, 2 / 3]), atol=1e-6)
    assert torch.allclose(c[0, :, 1], torch.tensor([-0.75, -0.25, 0.25, 0.75]), atol=1e-6)
    assert torch.allclose(b16.rope_embed(3, 4), b16.model.rope.get_embed(shape=(3, 4)), atol=1e-5)
    # stride 8 on a 48-px axis: 5 cells centred at 8i + 8 px -> u = (8i + 8) / 48 -> 2u - 1
    c8 = b8.cell_coords(5, 7).reshape(5, 7, 2)
    assert torch.allclose(c8[:, 0, 0], torch.tensor([-2 / 3, -1 / 3, 0.0, 1 / 3, 2 / 3]), atol=1e-6)


@pytest.mark.parametrize("stride,grid", [(16, (3, 4)), (8, (5, 7))])
def test_dinov3_geometry_round_trip(stride, grid, small_clip):
    b = _v3(stride=stride)
    feats = b.extract(small_clip)
    g = feats.geometry
    assert feats.features.shape == (6, 64, *grid) and (g.grid_h, g.grid_w) == grid
    assert g.offset == 7.5 and g.stride == stride  # cell (0, 0) covers input pixels 0..15
    xy = np.array([[3.0, 5.0], [40.0, 30.0]])
    assert np.allclose(g.grid_to_pixel(g.pixel_to_grid(xy)), xy)
    assert np.allclose(g.grid_to_input(np.array([[1.0, 2.0]])), [[7.5 + stride, 7.5 + 2 * stride]])


def test_dinov3_only_the_chosen_block_runs():
    b = _v3(layer=1)
    ran = []
    for i, blk in enumerate(b.model.blocks):
        blk.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
    with torch.no_grad():
        b.forward_batch(torch.randn(1, 3, 32, 32))
    assert ran == [0, 1]


def _to_meta_layout(model) -> dict:
    """timm Eva state dict -> Meta's official DINOv3 key layout."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        out[k] = v.clone()
    out["mask_token"] = torch.zeros(1, model.embed_dim)
    out["rope_embed.periods"] = torch.ones(8)
    return out


def test_dinov3_loads_meta_official_layout_and_timm_safetensors(tmp_path):
    from safetensors.torch import save_file

    src = _v3(seed=3, layer=-1, norm=True)
    torch.save({"teacher": _to_meta_layout(src.model)}, tmp_path / "dinov3_meta.pth")
    save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        ref, _ = src.forward_tokens(x)
        for f in ("dinov3_meta.pth", "timm.safetensors"):
            b = _v3(weights=str(tmp_path / f), seed=99, layer=-1, norm=True)
            assert torch.allclose(b.forward_tokens(x)[0], ref, atol=1e-5), f


def _position_sensitive(b):
    """At timm's random init LayerScale is 1e-5 and attention near uniform, so positions barely
    reach the tokens: open the residual branches and sharpen the attention."""
    with torch.no_grad():
        for blk in b.model.blocks:
            blk.gamma_1.fill_(1.0)
            blk.gamma_2.fill_(1.0)
            blk.attn.qkv.weight.mul_(8.0)
    return b


def test_rope_pea_changes_only_the_position_of_that_pass():
    b = _position_sensitive(_v3(layer=-1))
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        plain, _ = b.forward_tokens(x)
        # r = 0: the scaled grid is the grid itself, the window offset 0 -> exactly the plain pass
        same, _ = b.forward_tokens(x, position_transform=PEA(0.0, seed=1))
        pea = PEA(10.0, seed=1)
        moved, _ = b.forward_tokens(x, position_transform=pea)
        after, _ = b.forward_tokens(x)
    assert torch.equal(same, plain) and torch.equal(after, plain)  # nothing sticks to later passes
    assert not torch.allclose(moved, plain, atol=1e-3)
    oh, ow = pea.last_offset
    # hand-computed coordinates of the window: U = int(11 * n); u -> (o + (i + 0.5)) / U
    want_y = torch.tensor([(oh + i + 0.5) / 33 for i in range(3)]) * 2 - 1
    want_x = torch.tensor([(ow + j + 0.5) / 44 for j in range(4)]) * 2 - 1
    coords = torch.stack(torch.meshgrid(want_y, want_x, indexing="ij"), -1).reshape(-1, 2)
    sin, cos = b.model.rope._get_pos_embed_from_coords(coords)
    table = torch.cat([sin, cos], -1)
    # the same pixels and weights, only the rotary table replaced -> the PEA pass
    b.rope_embed = lambda gh, gw, t=None: table
    with torch.no_grad():
        manual, _ = b.forward_tokens(x)
    assert torch.allclose(moved, manual, atol=1e-5)


# -- CNNs ------------------------------------------------------------------------------------------
def test_cnn_stage_stride_offset_and_truncation(small_clip):
    b = load_backend("timm:resnet10t", weights="random", precision="fp32")
    # default: the stride-8 stage; ResNet cells are centred on input pixel s*i (7x7/3x3 stems, padding k//2)
    assert (b.layer, b.stride, b.patch_size, b.feat_dim, b.offset) == (2, 8, 8, 128, 0.0)
    assert b.position_encoding is None
    assert [n for n, _ in b.model.named_children()][-1] == "layer2"  # later stages are not even built
    feats = b.extract(small_clip)  # 48 x 64 -> 6 x 8 cells
    assert feats.features.shape == (6, 128, 6, 8)
    g = feats.geometry
    assert np.allclose(g.grid_to_input(np.array([[0.0, 0.0], [2.0, 1.0]])), [[0.0, 0.0], [16.0, 8.0]])
    xy = np.array([[10.0, 7.0]])
    assert np.allclose(g.grid_to_pixel(g.pixel_to_grid(xy)), xy)
    last = load_backend("timm:resnet10t", weights="random", layer=-1)
    assert (last.stride, last.feat_dim) == (32, 512)
    with pytest.raises(UserError, match="stride"):
        load_backend("timm:resnet10t", weights="random", stride=4)


def test_convnext_offset_is_the_patchify_centre():
    # stem 4x4/s4: cell i covers 4i..4i+3 (centre 4i + 1.5); stage 1's 2x2/s2 -> 8i + 3.5
    s0 = load_backend("timm:convnext_atto", weights="random", layer=0)
    s1 = load_backend("timm:convnext_atto", weights="random", layer=1)
    assert (s0.stride, s0.offset, s1.stride, s1.offset) == (4, 1.5, 8, 3.5)


@pytest.mark.parametrize("name", ["timm:efficientnet_b0", "timm:regnety_016"])
def test_squeeze_excite_cnns_get_their_true_offset(name):
    """Symmetric padding (k // 2) on every conv: a stride-2 conv's cell i centres on input 2i, so every
    stage starts at pixel 0 (hand). Squeeze-excite gates (a global pool) must not widen the measured
    receptive field to the whole input (which fell back to (s - 1)/2 = 3.5 with a warning)."""
    for layer, stride in ((1, 4), (2, 8)):
        b = load_backend(name, weights="random", layer=layer)
        assert (b.stride, b.offset) == (stride, 0.0)


@pytest.mark.parametrize("name", ["timm:swin_tiny_patch4_window7_224", "timm:eva02_small_patch14_224"])
def test_unsupported_timm_families_are_one_line_errors(name):
    with pytest.raises(UserError) as e:
        load_backend(name, weights="random")
    text = e.value.one_line()
    assert "\n" not in text and "supported" in text and "DINOv3" in text and "CNN" in text
