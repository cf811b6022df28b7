"""``dsift``: a weight-free dense descriptor (multi-scale SIFT-like gradient histograms + colour).

Needs no download, so it is the offline default for the demo, CI and CPU users without weights. Each
cell describes the ``patch_size`` x ``patch_size`` patch starting at ``stride * (i, j)``:

* scale 1: 4x4 spatial bins of (patch/4) px, 8 soft orientation bins of gradient magnitude -> 128-d,
  L2-normalised, clipped at 0.2, re-normalised, RootSIFT;
* scale 2: the same over a patch twice as large centred on the same point (reflect-padded) -> 128-d;
* colour: mean CIE-Lab of the patch at both scales, scaled to ~unit range -> 6-d (weight ``color_weight``).

Geometry is exact by construction: cell (i, j) is centred at input pixel ``stride*j + (patch-1)/2``.
"""
from __future__ import annotations

import logging
import math

import kornia
import torch
import torch.nn.functional as F

from .base import FeatureBackend
from .registry import register_backend

log = logging.getLogger(__name__)


@register_backend("dsift", "weight-free multi-scale dense SIFT + colour (no download)")
class DenseSiftBackend(FeatureBackend):
    # weights / layer / norm / precision / seed / allow_pickle: taken so that one set of keyword arguments fits
    # every backend (the evaluator's --backend-args go to each backend); dsift has no weights, layers or
    # randomness, and a weights, layer or norm that was asked for is named in a warning, never dropped silently.
    # Any other unknown keyword is an error (load_backend: one line).
    def __init__(self, *, name: str = "dsift", stride: int | None = None, patch_size: int = 16,
                 resolution=None, color_weight: float = 0.5, device="cpu", chunk_size: int = 8,
                 weights: str | None = None, layer: int | None = None, norm: bool | None = None,
                 precision: str | None = None, seed: int | None = None, allow_pickle: bool = False):
        if patch_size % 4:
            raise ValueError("dsift patch_size must be a multiple of 4")
        for key, value in (("weights", weights), ("layer", layer), ("norm", norm)):
            if value is not None:
                log.warning("dsift ignores %s=%r: it is a weight-free descriptor without layers", key, value)
        self.name = name
        self.patch_size = int(patch_size)
        self.stride = int(stride or patch_size // 2)
        self.feat_dim = 128 + 128 + 6
        self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        self.resolution = resolution
        self.color_weight = float(color_weight)
        self.default_chunk_size = chunk_size
        self.output_norm = "l2-blocks"
        self.to(device)

    def forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().clamp(0, 1)
        gray = kornia.color.rgb_to_grayscale(x)
        p, s = self.patch_size, self.stride
        gh = 1 + (x.shape[-2] - p) // s
        gw = 1 + (x.shape[-1] - p) // s
        h1 = _orientation_hist(kornia.filters.gaussian_blur2d(gray, (5, 5), (1.0, 1.0)))
        h2 = _orientation_hist(kornia.filters.gaussian_blur2d(gray, (9, 9), (2.0, 2.0)))
        d1 = _sift(h1, p // 4, s, gh, gw, pad=0)
        d2 = _sift(h2, p // 2, s, gh, gw, pad=p // 2)
        lab = kornia.color.rgb_to_lab(x)
        lab = lab / torch.tensor([100.0, 128.0, 128.0], device=x.device).view(1, 3, 1, 1)
        c1 = F.avg_pool2d(lab, p, s)[..., :gh, :gw]
        c2 = F.avg_pool2d(F.pad(lab, (p // 2,) * 4, mode="replicate"), 2 * p, s)[..., :gh, :gw]
        return torch.cat([d1, d2, self.color_weight * c1, self.color_weight * c2], dim=1)

    def cache_fields(self):
        d = super().cache_fields()
        d.update({"resolution": self.resolution, "color_weight": self.color_weight, "version": 1})
        return d


def _orientation_hist(gray: torch.Tensor, nbins: int = 8) -> torch.Tensor:
    """(B,1,H,W) -> (B,nbins,H,W) gradient magnitude soft-binned by orientation."""
    g = kornia.filters.spatial_gradient(gray, mode="diff", order=1)  # (B,1,2,H,W)
    gx, gy = g[:, 0, 0], g[:, 0, 1]
    mag = torch.sqrt(gx * gx + gy * gy + 1e-12)
    o = (torch.atan2(gy, gx) % (2 * math.pi)) * (nbins / (2 * math.pi))
    b0 = torch.floor(o)
    w1 = o - b0
    b0 = b0.long() % nbins
    b1 = (b0 + 1) % nbins
    hist = torch.zeros(gray.shape[0], nbins, *gray.shape[-2:], device=gray.device)
    hist.scatter_add_(1, b0.unsqueeze(1), (mag * (1 - w1)).unsqueeze(1))
    hist.scatter_add_(1, b1.unsqueeze(1), (mag * w1).unsqueeze(1))
    return hist


def _sift(hist: torch.Tensor, cell: int, stride: int, gh: int, gw: int, pad: int) -> torch.Tensor:
    """4x4 cells of ``cell`` px starting at ``stride*(i,j) - pad`` -> (B, 16*nbins, gh, gw)."""
    if pad:
        hist = F.pad(hist, (pad, pad, pad, pad), mode="reflect" if pad < hist.shape[-1] else "replicate")
    # only windows starting at multiples of g = gcd(cell, stride) are ever read: pool at stride g
    # (the same window means as stride 1, 4-64x less work)
    g = math.gcd(cell, stride)
    box = F.avg_pool2d(hist, cell, stride=g)  # box[y, x] = mean over [g*y, g*y+cell) x [g*x, g*x+cell)
    step = stride // g
    parts = []
    for a in range(4):
        for b in range(4):
            y0, x0 = a * cell // g, b * cell // g
            parts.append(box[..., y0: y0 + step * (gh - 1) + 1: step, x0: x0 + step * (gw - 1) + 1: step])
    d = torch.cat(parts, dim=1)
    d = F.normalize(d, dim=1).clamp(max=0.2)
    d = F.normalize(d, dim=1)
    d = torch.sqrt(d / d.sum(dim=1, keepdim=True).clamp_min(1e-12))  # RootSIFT (unit L2 norm)
    return d
