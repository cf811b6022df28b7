"""Points (input pixels) -> features, and cosine cost volumes.

Points are mapped to the feature grid through the Geometry (``input_to_grid``), then to
``grid_sample(align_corners=True)`` coordinates, where -1/+1 are the first/last cell centres. Points
beyond the outer cell centres clamp to the border features (padding ``border``), as in the reference
(dino_tracker.md §3.3). The reference samples a 5-D (frames x grid) volume; we loop over the (<= a few)
distinct frames instead, which gives the same values without building the volume.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cosettle.geometry import Geometry


def input_to_normalized(xy: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """(..., 2) input pixels -> (..., 2) grid_sample coordinates on the feature grid."""
    s = 1.0 / geometry.stride
    gx = (xy[..., 0] - geometry.offset) * s
    gy = (xy[..., 1] - geometry.offset) * s
    u = 2 * gx / max(geometry.grid_w - 1, 1) - 1
    v = 2 * gy / max(geometry.grid_h - 1, 1) - 1
    return torch.stack([u, v], dim=-1)


def sample_points(fmap: torch.Tensor, xy: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """fmap (C, h, w), xy (B, 2) input px -> (B, C) bilinear features."""
    g = input_to_normalized(xy.to(fmap.dtype), geometry).view(1, 1, -1, 2)
    out = F.grid_sample(fmap.unsqueeze(0), g, mode="bilinear", padding_mode="border", align_corners=True)
    return out[0, :, 0].t()


def sample_frames(fmaps: torch.Tensor, frame_idx: torch.Tensor, xy: torch.Tensor,
                  geometry: Geometry) -> torch.Tensor:
    """fmaps (T', C, h, w), frame_idx (B,) into T', xy (B, 2) -> (B, C)."""
    out = fmaps.new_empty((xy.shape[0], fmaps.shape[1]))
    for f in torch.unique(frame_idx).tolist():
        sel = frame_idx == f
        out[sel] = sample_points(fmaps[f], xy[sel], geometry)
    return out


def cost_volumes(src: torch.Tensor, fmaps_n: torch.Tensor, frame_idx: torch.Tensor) -> torch.Tensor:
    """ReLU'd cosine of each source feature (B, C) against its target map.

    ``fmaps_n``: (T', C, h, w) already L2-normalised over C (a tensor, or a :class:`NormalisedMaps`);
    ``frame_idx`` (B,) selects the target.
    Returns (B, h, w).
    """
    _, c, h, w = fmaps_n.shape
    src_n = src / src.norm(dim=1, keepdim=True).clamp_min(1e-8)
    out = src.new_empty((src.shape[0], h * w))
    for f in torch.unique(frame_idx).tolist():  # ascending: a NormalisedMaps makes each block once
        sel = frame_idx == f
        out[sel] = src_n[sel] @ fmaps_n[f].reshape(c, h * w)
    return F.relu(out).reshape(-1, h, w)


def l2n(fmaps: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return fmaps / fmaps.norm(dim=dim, keepdim=True).clamp_min(1e-8)


class NormalisedMaps:
    """``l2n(features.float())`` of (T, C, h, w) features of any float dtype, made ``block`` frames at a
    time when a frame is indexed (the block in hand is kept): one float32 block in memory instead of a
    float32 copy of the whole clip. ``maps[f]`` equals ``l2n(features.float())[f]`` (the norm is per
    cell, so a block is normalised exactly as the whole clip is)."""

    def __init__(self, features: torch.Tensor, block: int = 32):
        self.features = features
        self.block = max(1, int(block))
        self.shape = features.shape
        self._start = None
        self._maps = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, f: int) -> torch.Tensor:
        start = (int(f) // self.block) * self.block
        if start != self._start:
            self._maps = None  # drop the old block before making the new one
            self._maps = l2n(self.features[start:start + self.block].float())
            self._start = start
        return self._maps[int(f) - start]
