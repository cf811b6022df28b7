"""DeltaDINO / BlurPool / TrackerHead / sampling: shapes, alignment to the backend grid, soft-argmax."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cosettle.geometry import Geometry, snap_input_size
from tracker.dino.models import BlurPool2d, DeltaDINO, NormalizedConv2d, TrackerHead, soft_argmax
from tracker.dino.sampling import sample_points


def _geom(patch, stride, h, w):
    ih, iw = snap_input_size(h, w, patch, stride)
    return Geometry.for_input(patch, stride, ih, iw, h, w)


@pytest.mark.parametrize("n", [5, 6, 7, 33])
def test_blurpool_size_and_centre(n):
    x = torch.arange(n, dtype=torch.float32).view(1, 1, 1, n).expand(1, 1, 4, n).contiguous()
    y = BlurPool2d(1)(x)
    assert y.shape[-1] == math.ceil(n / 2)
    # a ramp is reproduced exactly away from the border: output k sits at input 2k + 0.5
    k = torch.arange(y.shape[-1], dtype=torch.float32)
    interior = slice(1, max(1, (n - 3) // 2))
    assert torch.allclose(y[0, 0, 0, interior], 2 * k[interior] + 0.5)


def test_three_blurpools_map_u_to_8u_plus_3_5():
    assert DeltaDINO.cnn_stride_offset() == (8.0, 3.5)
    n = 200
    x = torch.arange(n, dtype=torch.float32).view(1, 1, 1, n).expand(1, 1, 8, n).contiguous()
    for _ in range(3):
        x = BlurPool2d(1)(x)
    u = torch.arange(x.shape[-1], dtype=torch.float32)
    assert torch.allclose(x[0, 0, 0, 2:-2], 8 * u[2:-2] + 3.5)


@pytest.mark.parametrize("patch,stride,h,w", [(14, 7, 101, 157), (14, 14, 99, 131), (14, 7, 64, 96),
                                              (16, 8, 61, 83)])
def test_deltadino_output_on_backend_grid(patch, stride, h, w):
    """Output shape = the backend grid, and each output cell reads the CNN map at its cell centre."""
    geom = _geom(patch, stride, h, w)
    net = DeltaDINO(out_channels=5, width=4)
    rgb = torch.rand(2, 3, geom.input_h, geom.input_w)
    out = net(rgb, geom)
    assert out.shape == (2, 5, geom.grid_h, geom.grid_w)
    # swap the CNN for the pool chain on an x-ramp: the sampled value must be the cell-centre x
    pools = torch.nn.Sequential(BlurPool2d(1), BlurPool2d(1), BlurPool2d(1))
    net.feature_map = lambda x: pools(x[:, :1])
    ramp = torch.arange(geom.input_w, dtype=torch.float32).view(1, 1, 1, -1).expand(1, 3, geom.input_h, -1)
    vals = net(ramp.contiguous(), geom)[0, 0, 0]
    centres = geom.cell_centers("input")[0, :, 0]
    inner = (centres > 16) & (centres < geom.input_w - 24)  # away from the reflect-padded border
    assert inner.any()
    np.testing.assert_allclose(vals.numpy()[inner], centres[inner], atol=1e-3)


def test_deltadino_starts_at_zero():
    geom = _geom(14, 7, 70, 84)
    net = DeltaDINO(out_channels=7, width=4, bn_gamma=0.05)
    assert float(net.last_bn.weight[0].detach()) == pytest.approx(0.05)
    x = torch.rand(3, 3, geom.input_h, geom.input_w)
    assert torch.count_nonzero(net.train()(x, geom)) == 0
    assert torch.count_nonzero(net.eval()(x, geom)) == 0


def test_head_parameter_count():
    assert sum(p.numel() for p in TrackerHead(16).parameters()) == 305
    assert sum(p.numel() for p in TrackerHead(8).parameters()) == 8 * 9 + 8 + 8 * 9 + 1


def test_normalized_conv_preserves_constants():
    torch.manual_seed(0)
    conv = NormalizedConv2d(1, 4, 3, padding=1)
    y = conv(torch.full((1, 1, 6, 6), 2.5))
    expect = 2.5 + conv.bias.detach().view(1, 4, 1, 1)
    assert torch.allclose(y[..., 1:-1, 1:-1], expect.expand(1, 4, 4, 4), atol=1e-4)


def test_soft_argmax_recovers_peak():
    geom = Geometry.for_input(14, 7, 14 + 7 * 20, 14 + 7 * 30, 200, 300)
    h, w = geom.grid_h, geom.grid_w
    ii, jj = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    # exactly on cell (i=6, j=11): a symmetric bump gives its centre exactly
    logits = -((ii - 6) ** 2 + (jj - 11) ** 2) / 2.0
    xy = soft_argmax(logits[None], logits[None].relu() + 1 + logits[None], geom, 5.0)[0]
    assert xy.tolist() == pytest.approx([geom.offset + 7 * 11, geom.offset + 7 * 6], abs=1e-4)
    # sub-cell peak at grid (j=11.3, i=6.6): recovered to within a small fraction of a cell
    logits = -((ii - 6.6) ** 2 + (jj - 11.3) ** 2) / 2.0
    xy = soft_argmax(logits[None], logits[None] + 10, geom, 5.0)[0]
    assert xy.tolist() == pytest.approx([geom.offset + 7 * 11.3, geom.offset + 7 * 6.6], abs=0.05)
    # a stronger peak far away (beyond the radius of the cost argmax) is ignored
    cost = torch.zeros(h, w)
    cost[6, 11] = 1.0
    logits = torch.zeros(h, w)
    logits[6, 11] = 5.0
    logits[15, 25] = 50.0
    xy = soft_argmax(logits[None], cost[None], geom, 5.0)[0]
    assert abs(float(xy[0]) - (geom.offset + 77)) < 7 and abs(float(xy[1]) - (geom.offset + 42)) < 7


def test_sample_points_at_cell_centres_and_border():
    geom = _geom(14, 7, 64, 96)
    fmap = torch.randn(3, geom.grid_h, geom.grid_w)
    c = torch.as_tensor(geom.cell_centers("input"), dtype=torch.float32)
    got = sample_points(fmap, c[2, 5][None], geom)[0]
    assert torch.allclose(got, fmap[:, 2, 5], atol=1e-5)
    mid = (c[2, 5] + c[2, 6]) / 2
    assert torch.allclose(sample_points(fmap, mid[None], geom)[0], (fmap[:, 2, 5] + fmap[:, 2, 6]) / 2, atol=1e-5)
    far = torch.tensor([[-50.0, -50.0]])  # beyond the first cell centre: clamps to the border cell
    assert torch.allclose(sample_points(fmap, far, geom)[0], fmap[:, 0, 0], atol=1e-5)


def test_paper_deltadino_size_matches_reference():
    # dino_tracker.md §3.1: ~7.59 M parameters for C = 1024, width 64
    n = sum(p.numel() for p in DeltaDINO(1024, 64).parameters())
    assert 7.58e6 < n < 7.60e6
