"""DINO-Tracker losses (dino_tracker.md §4.2), each a plain function of tensors.

Coordinates in the regression losses are normalised to [-1, 1] by the work resolution
(x_hat = 2x/(W-1) - 1), so the Huber delta 1/32 keeps the reference's meaning.
The InfoNCE terms use log-sum-exp (the reference exponentiates directly; equivalent, but stable).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..preprocess.best_buddies import mutual_nn as mutual_nn_sets


def huber(e: torch.Tensor, delta: float) -> torch.Tensor:
    a = e.abs()
    return torch.where(a < delta, 0.5 * e * e, delta * (a - 0.5 * delta))


def to_normalized(xy: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    h, w = hw
    scale = xy.new_tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
    return xy * scale - 1.0


def flow_loss(pred_xy: torch.Tensor, target_xy: torch.Tensor, hw: tuple[int, int],
              delta: float = 1.0 / 32) -> torch.Tensor:
    """Mean over points x 2 coordinates of Huber(pred - target), in normalised units."""
    e = to_normalized(pred_xy, hw) - to_normalized(target_xy, hw)
    return huber(e, delta).mean()


def cycle_loss(pred_fwd: torch.Tensor, label_fwd: torch.Tensor, pred_bwd: torch.Tensor,
               label_bwd: torch.Tensor, cycle_err_px: torch.Tensor, hw: tuple[int, int],
               delta: float = 1.0 / 32, gamma: float = 0.8) -> torch.Tensor:
    """0.5 [mean(w Huber(fwd - y_t)) + mean(w Huber(bwd - x_s))], w = gamma^d (d = cycle error px)."""
    w = (gamma ** cycle_err_px).unsqueeze(1)
    ef = to_normalized(pred_fwd, hw) - to_normalized(label_fwd, hw)
    eb = to_normalized(pred_bwd, hw) - to_normalized(label_bwd, hw)
    return 0.5 * ((w * huber(ef, delta)).mean() + (w * huber(eb, delta)).mean())


def info_nce(src: torch.Tensor, dst: torch.Tensor, dst_map: torch.Tensor, temp: float) -> torch.Tensor:
    """Per pair -log softmax: src (B,C) vs the cosine to every cell of dst_map (C, h, w), positive dst.

    Returns (B,) losses: logsumexp_n cos(src, F[n])/temp - cos(src, dst)/temp.
    """
    s = F.normalize(src, dim=1, eps=1e-8)
    d = F.normalize(dst, dim=1, eps=1e-8)
    m = F.normalize(dst_map.reshape(dst_map.shape[0], -1), dim=0, eps=1e-8)
    logits = (s @ m) / temp
    pos = (s * d).sum(dim=1) / temp
    return torch.logsumexp(logits, dim=1) - pos


def bb_weight_dino(r: torch.Tensor, c: torch.Tensor, a: float = 27.0, b: float = -5.7) -> torch.Tensor:
    """sigmoid(a(1-r) + b) * max(0, 2c^3): ambiguity ratio r and raw cosine c of the best buddy."""
    return torch.sigmoid(a * (1 - r) + b) * torch.clamp(2 * c ** 3, min=0)


def bb_weight_refined(aff: torch.Tensor) -> torch.Tensor:
    return torch.clamp(2 * aff.detach() ** 3, min=0)


def symmetric_nce(f_s: torch.Tensor, map_s: torch.Tensor, f_t: torch.Tensor, map_t: torch.Tensor,
                  weight: torch.Tensor, temp: float) -> torch.Tensor:
    """Sum_i w_i (l_{s->t} + l_{t->s}) for one frame pair (not yet divided)."""
    l_st = info_nce(f_s, f_t, map_t, temp)
    l_ts = info_nce(f_t, f_s, map_s, temp)
    return (weight * (l_st + l_ts)).sum()


def norm_loss(refined: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """Mean over frames and cells of | ||F_ref|| / ||F_raw|| - 1 | (features on dim 1)."""
    return (refined.norm(dim=1) / raw.norm(dim=1).clamp_min(1e-8) - 1).abs().mean()


def angle_loss(refined: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """Mean over frames and cells of | cos(F_ref, F_raw) - 1 |."""
    return (F.cosine_similarity(refined, raw, dim=1, eps=1e-8) - 1).abs().mean()


def mutual_nn(map_s: torch.Tensor, map_t: torch.Tensor):
    """Mutual nearest neighbours (cosine) between two (C,h,w) maps, no gradient.

    Returns (idx_s (K,), idx_t (K,), affinity (K,)) with flat cell indices.
    """
    with torch.no_grad():
        idx_s, idx_t, aff, _ = mutual_nn_sets(map_s.reshape(map_s.shape[0], -1).t(),
                                              map_t.reshape(map_t.shape[0], -1).t())
        return idx_s, idx_t, aff
