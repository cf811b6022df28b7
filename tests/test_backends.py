import numpy as np
import pytest
import torch

from cosettle import Features, FeatureBackend, ProjectedBackend, UserError, list_backends, load_backend
from cosettle.io.video import Video


def test_registry_lists_the_documented_backends():
    names = set(list_backends())
    for n in ["dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14", "dinov2_vits14_reg",
              "dino_vits8", "dino_vitb16", "mae_vitb16", "clip_vitb16", "dsift"]:
        assert n in names
    with pytest.raises(UserError, match="unknown backend"):
        load_backend("nope")


def test_dsift_shapes_determinism_and_layouts(small_clip):
    b = load_backend("dsift")
    f, g = b(small_clip)
    assert f.shape == (6, b.feat_dim, g.grid_h, g.grid_w)
    assert (g.patch_size, g.stride, g.offset) == (16, 8, 7.5)
    assert torch.isfinite(f).all()
    # the same video as float (T,3,H,W) in [0,1], as a torch tensor and as a lazy sequence
    f2 = b(torch.from_numpy(small_clip).permute(0, 3, 1, 2).float() / 255).features
    f3 = b(Video.from_array(small_clip)).features
    torch.testing.assert_close(f, f2, atol=1e-5, rtol=0)
    torch.testing.assert_close(f, f3)
    torch.testing.assert_close(f, b(small_clip).features)


def test_dsift_is_translation_equivariant():
    # shifting the image by one stride (8 px) shifts the feature map by exactly one cell
    rng = np.random.default_rng(1)
    big = (rng.random((64, 120, 3)) * 255).astype(np.uint8)
    a, bshift = big[None, :, 8:104], big[None, :, 0:96]
    be = load_backend("dsift")
    fa, fb = be(a).features[0], be(bshift).features[0]
    # fb column j+1 sees the same pixels as fa column j (interior cells: away from reflect padding)
    torch.testing.assert_close(fa[:, 2:-2, 2:-3], fb[:, 2:-2, 3:-2], atol=1e-4, rtol=0)


def test_dsift_features_match_across_real_frames(davis_dir):
    """Meaningful, not just shaped: nearest neighbours between consecutive real frames stay local."""
    import imageio.v3 as iio

    frames = np.stack([iio.imread(davis_dir / "JPEGImages" / f"{i:05d}.jpg") for i in (0, 1)])
    b = load_backend("dsift", resolution=240)
    f, g = b(frames)
    a = torch.nn.functional.normalize(f[0].flatten(1), dim=0)
    c = torch.nn.functional.normalize(f[1].flatten(1), dim=0)
    nn = (a.T @ c).argmax(1)
    src = torch.arange(nn.numel())
    dist = ((nn // g.grid_w - src // g.grid_w) ** 2 + (nn % g.grid_w - src % g.grid_w) ** 2).float().sqrt()
    assert (dist <= 2).float().mean() > 0.6  # consecutive frames barely move: most matches stay put


@pytest.mark.parametrize("name,stride,patch,dim", [
    ("dinov2_vits14", 7, 14, 384), ("dinov2_vits14", 14, 14, 384), ("dinov2_vits14_reg", 14, 14, 384),
    ("dino_vits16", 8, 16, 384), ("timm:vit_tiny_patch16_224", 16, 16, 192)])
def test_random_init_timm_backends(name, stride, patch, dim, small_clip):
    b = load_backend(name, weights="random", stride=stride)
    f, g = b(small_clip[:2])
    assert (b.patch_size, b.stride, b.feat_dim) == (patch, stride, dim)
    assert f.shape == (2, dim, g.grid_h, g.grid_w)
    assert g.grid_h == 1 + (g.input_h - patch) // stride
    assert torch.isfinite(f).all()


def test_backbone_means_come_from_timm_configs():
    clip = load_backend("clip_vitb16", weights="random")
    assert clip.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    dino = load_backend("dinov2_vits14", weights="random")
    assert dino.mean == pytest.approx((0.485, 0.456, 0.406))
    assert dino.layer == 7  # 12 blocks -> DINO-Tracker's relative depth (block 15 of 24)
    assert load_backend("dinov2_vits14", weights="random", layer=-1).layer == 11


def test_tokens_match_timm_forward_features():
    """Our truncated block loop equals timm's own forward_features (last block, final norm)."""
    b = load_backend("dinov2_vits14_reg", weights="random", layer=-1, precision="fp32")
    b.norm = True
    x = torch.randn(1, 3, 56, 70)
    with torch.inference_mode():
        ours, (gh, gw) = b.forward_tokens(x)
        ref = b.model.forward_features(x)[:, b.model.num_prefix_tokens:]
    assert (gh, gw) == (4, 5)
    torch.testing.assert_close(ours, ref)


def test_only_the_chosen_block_runs():
    b = load_backend("dinov2_vits14", weights="random", layer=3)
    calls = []
    hooks = [blk.register_forward_hook(lambda m, i, o, k=k: calls.append(k)) for k, blk in enumerate(b.model.blocks)]
    b(np.zeros((1, 28, 28, 3), np.uint8))
    for h in hooks:
        h.remove()
    assert calls == [0, 1, 2, 3]


def test_stride7_position_embedding_grows_with_grid():
    b = load_backend("dinov2_vits14", weights="random", stride=7, precision="fp32")
    x = torch.randn(1, 3, 476 // 4 + 0, 854 // 4 + 1)  # arbitrary valid size
    g = b.geometry(x.shape[-2], x.shape[-1])
    with torch.inference_mode():
        tok, (gh, gw) = b.forward_tokens(b.preprocess(x.clamp(0, 1), g))
    assert (gh, gw) == (g.grid_h, g.grid_w)
    assert tok.shape[1] == gh * gw


def test_too_small_input_is_a_user_error():
    b = load_backend("dsift")
    with pytest.raises(UserError, match="too small"):
        b(np.zeros((1, 10, 40, 3), np.uint8))


def test_projected_backend_keeps_geometry(small_clip):
    base = load_backend("dsift")
    lin = torch.nn.Linear(base.feat_dim, 32)
    proj = ProjectedBackend(base, lin)
    fb, gb = base(small_clip)
    fp, gp = proj(small_clip)
    assert gp == gb and fp.shape == (6, 32, gb.grid_h, gb.grid_w)
    expect = lin(fb.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(fp, expect.detach(), atol=1e-5, rtol=1e-5)
    assert proj.cache_key() != base.cache_key()
    with torch.no_grad():
        lin.weight.add_(1.0)
    assert ProjectedBackend(base, lin).cache_key() != proj.cache_key()


def test_custom_backend_through_the_contract(small_clip):
    class Mean(FeatureBackend):
        name, feat_dim, patch_size, stride = "mean4", 3, 4, 4
        mean, std = (0, 0, 0), (1, 1, 1)

        def forward_batch(self, x):
            return torch.nn.functional.avg_pool2d(x, 4)

    f, g = Mean()(small_clip)
    assert isinstance(Mean()(small_clip), Features)
    assert f.shape == (6, 3, 12, 16)
    expect = small_clip[0, :4, :4].reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(f[0, :, 0, 0].numpy(), expect, atol=1e-6)


def test_random_vit_on_real_video_and_no_xformers_on_cpu(davis_dir):
    from cosettle.io.video import read_video

    video = read_video(davis_dir / "JPEGImages", max_frames=3)
    assert (len(video), video.height, video.width) == (3, 480, 854)
    b = load_backend("dinov2_vits14", weights="random", stride=7, resolution=112)
    f, g = b(video)
    # short side 112 -> 112 x round(854 * 112 / 480) = 199 -> snapped to 14 + 7k = 196
    assert (g.input_h, g.input_w, g.grid_h, g.grid_w) == (112, 196, 15, 27)
    assert f.shape == (3, 384, 15, 27) and torch.isfinite(f).all()
    assert b.xformers is False  # xformers only ever runs on CUDA


def test_released_architecture_names_build_through_the_registry():
    """timm:cosettle_vit_* names (written by the released-checkpoint importer) need no prior import."""
    b = load_backend("timm:cosettle_vit_p16_d64_l2_h4_m400_g14x14_r4_cls_ls_qkvb_nec", weights="random")
    f, g = b(np.zeros((1, 32, 48, 3), np.uint8))
    assert (b.patch_size, b.feat_dim) == (16, 64) and f.shape == (1, 64, 2, 3)


def test_precision_dtype_and_base_autocast():
    """One precision mapping for every timm family; FeatureBackend.autocast follows autocast_dtype."""
    from cosettle.backends.timm_vit import precision_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision_dtype("fp32", cpu) is None
    assert precision_dtype("bf16", cpu) is torch.bfloat16 and precision_dtype("fp16", cpu) is torch.float16
    assert precision_dtype("auto", cuda) is torch.float16
    b = load_backend("timm:resnet10t", weights="random", precision="bf16")
    with b.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    d = load_backend("dsift")
    with d.autocast():  # autocast_dtype None: plain float32
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
