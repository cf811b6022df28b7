"""Feature diagnostics of the authors' ``cal_metric`` (spec §9), for a backend and its projection.

Per clip the features are the backend's patch tokens, NOT L2-normalised (as the authors):
    * cycle accuracy -- frame pairs at fractions (0.25,0.4), (0.35,0.5), (0.45,0.6), (0.55,0.7),
      (0.65,0.8) of the clip; walk f1 -> f2 -> f1 without PEA on 2x2-pooled nodes, softmax(A / 0.03);
      acc = mean_i [argmax_j (S12 S21)_ij == i]  (higher = more temporally consistent);
    * inter-video distance -- middle frames; 8 random patch positions (seed 42) shared by all clips;
      mean L2 distance of same-position patches over all clip pairs (higher = more discriminative);
      also divided by the feature-cloud diameter (2 x radius of the closest p% of patches to the
      global centroid, p = 100/95/90);
    * intra-video distance -- adjacent frame pairs in the middle 85% of the clip: each patch's nearest
      patch in the next frame, the smallest 50% of those distances averaged (lower = more consistent);
      normalised by 2 x the per-clip p-quantile distance to the clip centroid;
    * effective rank -- exp(entropy of normalised singular values) / min(#tokens, C) of the middle-
      frame tokens of all clips.

Differences from the authors: clips of any length (frame indices scale with the length; they keep
only 40-frame clips), CLS tokens never included (some of their baseline paths kept CLS).
"""
from __future__ import annotations

import itertools
import logging
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from .losses import pool_nodes

log = logging.getLogger(__name__)

CYCLE_PAIRS = ((0.25, 0.4), (0.35, 0.5), (0.45, 0.6), (0.55, 0.7), (0.65, 0.8))
QUANTILES = (100, 95, 90)


def prepare_frames(frames: np.ndarray, size: int = 224, resize: int = 256) -> np.ndarray:
    """Resize(short side ``resize``) + CenterCrop(``size``), as the authors' evaluation transform."""
    out = []
    for f in frames:
        h, w = f.shape[:2]
        s = resize / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        r = cv2.resize(f, (nw, nh), interpolation=cv2.INTER_LINEAR if s > 1 else cv2.INTER_AREA)
        y0, x0 = (nh - size) // 2, (nw - size) // 2
        out.append(r[y0:y0 + size, x0:x0 + size])
    return np.stack(out)


def cycle_accuracy(tokens: torch.Tensor, grid: tuple[int, int], pairs=CYCLE_PAIRS, tau: float = 0.03,
                   pool: int = 2, unit: bool = False) -> float:
    """tokens (T, N, C) of one clip, unnormalised (the authors' protocol). ``unit``: L2-normalise each
    token first, as the training loss does, so the score no longer depends on the feature scale (ours:
    with a fixed tau the raw score rewards larger norms, e.g. a LayerNorm output of norm sqrt(C))."""
    if unit:
        tokens = torch.nn.functional.normalize(tokens.float(), dim=-1)
    T = tokens.shape[0]
    accs = []
    for a, b in pairs:
        i, j = min(int(a * T), T - 1), min(int(b * T), T - 1)
        n1, n2 = (pool_nodes(tokens[k:k + 1].float(), grid, pool)[0] for k in (i, j))
        S = torch.softmax(n1 @ n2.T / tau, -1) @ torch.softmax(n2 @ n1.T / tau, -1)
        accs.append(float((S.argmax(-1) == torch.arange(S.shape[0])).float().mean()))
    return float(np.mean(accs))


def _radius(points: torch.Tensor, centre: torch.Tensor, q: float) -> float:
    d = (points - centre).norm(dim=-1)
    return float(torch.quantile(d, q / 100.0)) if q < 100 else float(d.max())


def inter_video_distance(mid: Sequence[torch.Tensor], num_positions: int = 8, seed: int = 42) -> dict[str, float]:
    """mid: per clip the middle-frame tokens (N, C). Raw and diameter-normalised distances."""
    N = mid[0].shape[0]
    pos = np.random.default_rng(seed).choice(N, size=min(num_positions, N), replace=False)
    sel = [m[pos].float() for m in mid]
    dists = [float((a - b).norm(dim=-1).mean()) for a, b in itertools.combinations(sel, 2)]
    raw = float(np.mean(dists)) if dists else float("nan")
    allp = torch.cat([m.float() for m in mid])
    c = allp.mean(0)
    out = {"inter": raw}
    for q in QUANTILES:
        out[f"inter_norm{q}"] = raw / max(2 * _radius(allp, c, q), 1e-12)
    return out


def intra_video_distance(tokens: torch.Tensor, keep: float = 0.5) -> dict[str, float]:
    """tokens (T, N, C) of one clip: nearest-patch distance between adjacent frames."""
    T = tokens.shape[0]
    start = int(0.075 * T)
    stop = max(start + 1, T - start - 1)  # 40 frames -> pairs (3,4) .. (35,36) as the authors
    vals = []
    for t in range(start, min(stop, T - 1)):
        d = torch.cdist(tokens[t].float(), tokens[t + 1].float()).min(dim=1).values
        k = max(1, int(keep * d.numel()))
        vals.append(float(d.sort().values[:k].mean()))
    raw = float(np.mean(vals)) if vals else float("nan")
    allp = tokens.reshape(-1, tokens.shape[-1]).float()
    c = allp.mean(0)
    out = {"intra": raw}
    for q in QUANTILES:
        out[f"intra_norm{q}"] = raw / max(2 * _radius(allp, c, q), 1e-12)
    return out


def effective_rank(tokens: torch.Tensor) -> float:
    """exp(entropy of s / sum s) / min(rows, cols) for a token matrix (M, C)."""
    s = torch.linalg.svdvals(tokens.double())
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()) / min(tokens.shape))


def metrics(clips_tokens: Sequence[torch.Tensor], grid: tuple[int, int]) -> dict[str, float]:
    """All metrics for per-clip tokens (T_i, N, C)."""
    cyc = float(np.mean([cycle_accuracy(t, grid) for t in clips_tokens]))
    mid = [t[t.shape[0] // 2] for t in clips_tokens]
    intra = [intra_video_distance(t) for t in clips_tokens]
    cyc_unit = float(np.mean([cycle_accuracy(t, grid, unit=True) for t in clips_tokens]))
    out: dict[str, Any] = {"cycle_acc": cyc, "cycle_acc_unit": cyc_unit, "effective_rank": effective_rank(torch.cat(mid))}
    out.update(inter_video_distance(mid))
    for k in intra[0]:
        out[k] = float(np.mean([d[k] for d in intra]))
    return out


def clip_tokens(backend, frames: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """(T, N, C) float32 tokens of a clip and the grid."""
    f = backend.extract(frames).features.float()
    T, C, h, w = f.shape
    return f.permute(0, 2, 3, 1).reshape(T, h * w, C), (h, w)


def diagnose(clips: Sequence[np.ndarray], base, projected=None) -> dict[str, dict[str, float]]:
    """Metrics for ``base`` and (when given) its ``ProjectedBackend``. The projected tokens reuse the
    base pass (the projection is per token), so the encoder runs once per clip."""
    base_tok, proj_tok, grid = [], [], None
    for frames in clips:
        toks, grid = clip_tokens(base, frames)
        base_tok.append(toks)
        if projected is not None:
            with torch.inference_mode():
                proj_tok.append(projected.projection(toks.to(projected.device)).float().cpu())
    out = {"base": metrics(base_tok, grid)}
    if projected is not None:
        out["projected"] = metrics(proj_tok, grid)
    return out


def format_table(results: dict[str, dict[str, float]]) -> str:
    cols = list(results)
    keys = list(results[cols[0]])
    lines = [f"{'metric':<16}" + "".join(f"{c:>12}" for c in cols)]
    for k in keys:
        lines.append(f"{k:<16}" + "".join(f"{results[c][k]:>12.4f}" for c in cols))
    return "\n".join(lines)
