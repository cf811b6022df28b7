"""DeltaDINO (residual CNN on RGB) and the TrackerHead (cost volume -> refiner -> soft-argmax).

Re-implemented from dino_tracker.md §3; no reference code is used. BlurPool is written here from its
definition (the ``antialiased_cnns`` package is CC BY-NC-SA).

Alignment to the backend grid is derived, never assumed: each BlurPool maps its output index k to the
input position 2k + 0.5 (filter taps at 2k-1..2k+2, pixel-centre convention), so after three of them
CNN index u sits at input pixel 8u + 3.5, i.e. u = (x - 3.5) / 8. Cell centres x come from
``geometry.grid_to_input``. **Difference from the reference:** it samples the CNN output at
u = (p - 0.5)/8 with p = 7 + 7k, i.e. at input position 8u + 0.5 = p; under our pixel-centre convention
that cell's centre is x = 6.5 + 7k, and the reference's sample lies 3.5 px (the three BlurPools' 0.5 +
1 + 2 px offset) away from it. Ours samples where the CNN output actually sits (u = (x - 3.5)/8), which
is the geometrically aligned grid and works for any patch/stride/offset; the 3.5 px shift is not
reproduced.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cosettle.geometry import Geometry

from .sampling import cost_volumes


class BlurPool2d(nn.Module):
    """Anti-aliased stride-2 down-sampling: depthwise [1,3,3,1]^T[1,3,3,1]/64, reflect pad (1,2,1,2).

    Output size ceil(n/2); output index k is centred on input position 2k + 0.5.
    """

    STRIDE = 2
    OFFSET = 0.5  # input position of output index 0

    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor([1.0, 3.0, 3.0, 1.0])
        k = (a[:, None] * a[None, :]) / 64.0
        self.register_buffer("kernel", k.expand(channels, 1, 4, 4).clone(), persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reflect needs size > pad; fall back to replicate for 1-2 px maps (tiny test inputs)
        mode = "reflect" if min(x.shape[-2:]) > 2 else "replicate"
        x = F.pad(x, (1, 2, 1, 2), mode=mode)
        return F.conv2d(x, self.kernel, stride=2, groups=self.channels)


def _conv(cin: int, cout: int, k: int = 5, d: int = 1) -> nn.Conv2d:
    pad = (k + (k - 1) * (d - 1)) // 2
    return nn.Conv2d(cin, cout, k, padding=pad, dilation=d, padding_mode="reflect")


class DeltaDINO(nn.Module):
    """RGB in [0,1] (B,3,H,W) at the work resolution -> residual (B, C, grid_h, grid_w).

    Widths (w, 2w, 4w) with w = 64 in the reference (~7.6 M params for C = 1024). The last conv is
    zero-initialised and its BN has gamma = ``bn_gamma``, beta = 0, so the residual starts at exactly 0.
    """

    N_POOL = 3

    def __init__(self, out_channels: int, width: int = 64, bn_gamma: float = 0.05, last_kernel: int = 5):
        super().__init__()
        w = int(width)
        layers = []
        cin = 3
        for cout in (w, 2 * w, 4 * w):
            layers += [_conv(cin, cout), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), BlurPool2d(cout)]
            cin = cout
        self.body = nn.Sequential(*layers)
        # the last conv dominates the cost (C output channels); ``last_kernel`` 3 is the fast preset's
        self.last = _conv(cin, out_channels, k=last_kernel, d=2)
        self.last_bn = nn.BatchNorm2d(out_channels)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)
        nn.init.constant_(self.last_bn.weight, bn_gamma)
        nn.init.zeros_(self.last_bn.bias)
        self.out_channels = out_channels
        self._grid_cache: dict = {}

    @classmethod
    def cnn_stride_offset(cls) -> tuple[float, float]:
        """(stride, offset): CNN index u sits at input pixel ``offset + stride * u``."""
        stride, offset = 1.0, 0.0
        for _ in range(cls.N_POOL):  # compose x = 2k + 0.5 from the input side
            offset = offset + stride * BlurPool2d.OFFSET
            stride = stride * BlurPool2d.STRIDE
        return stride, offset  # (8, 3.5)

    def feature_map(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.last_bn(self.last(self.body(rgb)))

    def sample_grid(self, geometry: Geometry, cnn_hw: tuple[int, int], device) -> torch.Tensor:
        """(1, gh, gw, 2) grid_sample coordinates (align_corners=True) of the backend cell centres."""
        key = (geometry.grid_h, geometry.grid_w, geometry.stride, geometry.offset, cnn_hw, str(device))
        g = self._grid_cache.get(key)
        if g is None:
            stride, offset = self.cnn_stride_offset()
            xy = torch.as_tensor(geometry.cell_centers("input"), dtype=torch.float64)  # (gh,gw,2)
            u = (xy - offset) / stride
            h, w = cnn_hw
            den = torch.tensor([max(w - 1, 1), max(h - 1, 1)], dtype=torch.float64)
            g = (2 * u / den - 1).float().unsqueeze(0).to(device)
            self._grid_cache[key] = g
        return g

    def forward(self, rgb: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        fmap = self.feature_map(rgb)
        grid = self.sample_grid(geometry, tuple(fmap.shape[-2:]), fmap.device)
        grid = grid.expand(fmap.shape[0], -1, -1, -1)
        return F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=True)


class NormalizedConv2d(nn.Conv2d):
    """Conv whose kernel is divided by its spatial sum per (out, in) pair (|sum| < 1e-8 -> +-1e-8)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.weight.sum(dim=(2, 3), keepdim=True)
        sign = torch.where(s < 0, -torch.ones_like(s), torch.ones_like(s))
        s = torch.where(s.abs() < 1e-8, sign * 1e-8, s)
        return F.conv2d(x, self.weight / s, self.bias, self.stride, self.padding)


class TrackerHead(nn.Module):
    """ReLU'd cosine cost volume (B, h, w) -> refined heat map -> point (B, 2) in input pixels.

    NormalizedConv(1->16, 3x3) -> ReLU -> NormalizedConv(16->1, 3x3): 305 parameters at width 16.
    Softmax over all cells (temperature 1), then soft-argmax restricted to the cells within
    ``radius_cells`` of the argmax of the *unrefined* cost volume.
    """

    def __init__(self, width: int = 16, radius_cells: float = 5.0):
        super().__init__()
        self.conv1 = NormalizedConv2d(1, width, 3, padding=1)
        self.conv2 = NormalizedConv2d(width, 1, 3, padding=1)
        self.radius_cells = float(radius_cells)

    def refine(self, cost: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(cost.unsqueeze(1)))).squeeze(1)

    def forward(self, cost: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        return soft_argmax(self.refine(cost), cost, geometry, self.radius_cells)


def soft_argmax(logits: torch.Tensor, cost: torch.Tensor, geometry: Geometry,
                radius_cells: float) -> torch.Tensor:
    """Spatial softmax of ``logits`` (B,h,w), averaged over cells within ``radius_cells`` of the
    first maximum of ``cost`` (B,h,w). Returns (B, 2) (x, y) in input pixels."""
    b, h, w = logits.shape
    with torch.no_grad():
        idx = cost.reshape(b, -1).argmax(dim=1)  # first maximum, row-major
        ai, aj = idx // w, idx % w
        ii = torch.arange(h, device=cost.device).view(1, h, 1)
        jj = torch.arange(w, device=cost.device).view(1, 1, w)
        d2 = (ii - ai.view(b, 1, 1)) ** 2 + (jj - aj.view(b, 1, 1)) ** 2
        mask = (d2 <= radius_cells ** 2 + 1e-6).to(logits.dtype)
    prob = torch.softmax(logits.reshape(b, -1), dim=1).reshape(b, h, w)
    wts = prob * mask
    tot = wts.sum(dim=(1, 2), keepdim=True)
    wts = torch.where(tot < 1e-8, mask, wts)  # uniform over the mask if the mass vanished
    wts = wts / wts.sum(dim=(1, 2), keepdim=True)
    xs = geometry.offset + geometry.stride * torch.arange(w, device=cost.device, dtype=logits.dtype)
    ys = geometry.offset + geometry.stride * torch.arange(h, device=cost.device, dtype=logits.dtype)
    x = (wts.sum(dim=1) * xs).sum(dim=1)
    y = (wts.sum(dim=2) * ys).sum(dim=1)
    return torch.stack([x, y], dim=1)


class DinoTrackerModel(nn.Module):
    """DeltaDINO + TrackerHead over frozen features, with the shared forward pieces."""

    def __init__(self, feat_dim: int, cnn_width: int = 64, bn_gamma: float = 0.05,
                 head_width: int = 16, radius_cells: float = 5.0, last_kernel: int = 5):
        super().__init__()
        self.delta = DeltaDINO(feat_dim, cnn_width, bn_gamma, last_kernel)
        self.head = TrackerHead(head_width, radius_cells)

    def refine(self, rgb: torch.Tensor, raw: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        """refined = raw (frozen, already scaled) + DeltaDINO(rgb)."""
        return raw + self.delta(rgb, geometry)

    def predict(self, src: torch.Tensor, maps_n: torch.Tensor, tgt_idx: torch.Tensor,
                geometry: Geometry) -> torch.Tensor:
        """Source features (B,C) tracked into maps_n[tgt_idx] (normalised maps) -> (B,2) input px."""
        return self.head(cost_volumes(src, maps_n, tgt_idx), geometry)
