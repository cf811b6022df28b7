"""Semi-supervised label propagation on frozen features (the DAVIS video-object-segmentation protocol).

The protocol is the one of DINO's ``eval_video_segmentation.py`` (facebookresearch/dino, read, not copied;
"ref" below names its functions): the first frame's labels are given; every later frame t gets its labels from
the **first frame** and the **last ``n_last`` frames** (a queue of their *soft* predictions), each target cell
taking the ``topk`` most similar source cells among all those frames together, restricted to a square
neighbourhood of ``radius`` cells around its own position; similarities are cosine similarities of
L2-normalised features, turned into weights ``exp(sim / temperature)`` (temperature 0.1), the top-k weights
normalised to sum 1, the labels the weighted sum of the sources' label vectors.

Where this module follows a specific reference line (ref = ``eval_video_segmentation.py``):

* queue of the first frame + the ``n_last`` previous frames, oldest dropped first
  (ref ``eval_video_tracking_davis``: ``used_frame_feats = [frame1_feat] + que``; ``que.get()`` when full);
* the queue holds the soft label maps at feature resolution, not the arg-maxed masks
  (ref: ``que.put([feat_tar, seg])`` with ``seg = frame_tar_avg`` before upsampling);
* ``F.normalize`` of target and source features, ``exp(bmm / 0.1)`` (ref ``label_propagation``);
* neighbourhood: source (i', j') allowed for target (i, j) iff ``|i - i'| <= radius and |j - j'| <= radius``
  (ref ``restrict_neighborhood``), disabled by ``radius <= 0`` (ref: ``size_mask_neighborhood > 0``);
* top-k over all context frames jointly, keeping every weight ``>=`` the k-th largest (ties at the k-th value
  are all kept, as the ref's ``aff[aff < tk_val_min] = 0`` does), then division by the column sum
  (ref ``label_propagation``);
* the first frame's labels: one-hot of the frame-0 mask sampled at the feature grid by nearest neighbour
  (ref ``read_seg``: ``seg.resize((w // patch, h // patch), NEAREST)`` then ``to_one_hot`` with
  ``max label + 1`` channels);
* before the arg-max each channel of the upsampled map is min-max normalised when its max is > 0
  (ref ``norm_mask``), then ``argmax`` over channels (ref: ``torch.max(frame_tar_avg, dim=0)``).

Where it differs (on purpose):

* features at the backend's own grid and input size (``Geometry``), not a ViT at 480 x (long side floored
  to a multiple of 64) with ``patch_size`` cells; ``radius`` is in cells of that grid;
* the soft labels are upsampled straight to the frame by bilinear sampling at each pixel's exact grid
  coordinate (``Geometry.pixel_to_normalized``, border clamped), instead of the ref's ``F.interpolate(
  scale_factor=patch_size)`` to the network input followed by a nearest resize to the frame: with a stride
  that differs from the patch size, or a backend whose cell centres are not at ``(j + 0.5) * patch``, the ref's
  upsampling would shift the masks;
* frame-0 labels are read at the pixel nearest each cell centre in the frame (``Geometry.cell_centers``)
  rather than PIL's nearest resize of the whole mask to the grid size (the same cells for stride = patch);
* weights are computed as ``exp((sim - max sim) / temperature)`` per target (the same after normalisation,
  no overflow), and only inside the neighbourhood: out-of-neighbourhood sources get weight 0 as in the ref
  (where they are multiplied by 0 before the top-k), but are never counted among the top k -- the ref could
  pick such a zero when fewer than k sources lie in the window, which needs a window of fewer than
  k cells over all context frames and never happens at the defaults;
* no GPU and no dense (h*w) x (h*w) affinity: targets are processed in tiles, each against the block of
  source cells its neighbourhood can reach, so memory is bounded by the queue and the tile chunk, never by
  the clip length or (h*w)^2.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from cosettle.errors import UserError
from cosettle.geometry import Geometry


@dataclass(frozen=True)
class PropagationConfig:
    """Settings of label propagation (defaults: DINO's ``eval_video_segmentation.py``)."""

    topk: int = 5  # ref --topk
    n_last: int = 7  # ref --n_last_frames: previous frames in the queue (plus the first frame)
    radius: int = 12  # ref --size_mask_neighborhood, in cells of the backend's grid; <= 0: no restriction
    temperature: float = 0.1  # ref: exp(aff / 0.1)
    tile: int = 8  # targets per tile side (speed only; the result does not depend on it)
    tile_chunk: int = 16  # tiles per batched matmul (memory only)

    def check(self) -> "PropagationConfig":
        if self.topk < 1:
            raise UserError(f"--topk must be >= 1, got {self.topk}")
        if self.n_last < 0:
            raise UserError(f"--queue must be >= 0, got {self.n_last}")
        if self.temperature <= 0:
            raise UserError(f"temperature must be > 0, got {self.temperature}")
        if self.tile < 1 or self.tile_chunk < 1:
            raise UserError("tile and tile_chunk must be >= 1")
        return self


class _Tiles:
    """Target tiles of a ``h x w`` grid and, per tile, the block of source cells its neighbourhood reaches.

    Tiles are ``th x tw`` (about ``tile`` cells a side, the whole side where a block would span it anyway;
    origins clamped inside the grid, so edge tiles may overlap their neighbours and every tile has the same
    shape); the block of a tile is ``bh x bw`` = the tile grown by ``radius`` on each side, clipped to the grid
    size and shifted inside it (so blocks need no padding either)."""

    def __init__(self, h: int, w: int, radius: int, tile: int):
        dense = radius <= 0

        def side(n: int) -> int:  # tiles of about ``tile`` cells covering n evenly (little overlap)
            if dense or n <= tile + 2 * radius:  # the block spans all of n anyway: one tile, no overlap
                return n
            return -(-n // -(-n // tile))

        th, tw = side(h), side(w)
        bh, bw = (h, w) if dense else (min(h, th + 2 * radius), min(w, tw + 2 * radius))
        i0s = sorted({min(i, h - th) for i in range(0, h, th)})
        j0s = sorted({min(j, w - tw) for j in range(0, w, tw)})
        targets, sources, allowed = [], [], []
        ti, tj = np.meshgrid(np.arange(th), np.arange(tw), indexing="ij")
        si, sj = np.meshgrid(np.arange(bh), np.arange(bw), indexing="ij")
        for i0 in i0s:
            for j0 in j0s:
                r0 = min(max(i0 - max(radius, 0), 0), h - bh)
                c0 = min(max(j0 - max(radius, 0), 0), w - bw)
                gi, gj = (i0 + ti).ravel(), (j0 + tj).ravel()
                ki, kj = (r0 + si).ravel(), (c0 + sj).ravel()
                targets.append(gi * w + gj)
                sources.append(ki * w + kj)
                if dense:
                    allowed.append(np.ones((gi.size, ki.size), bool))
                else:  # ref restrict_neighborhood: |di| <= radius and |dj| <= radius
                    allowed.append((np.abs(gi[:, None] - ki[None, :]) <= radius)
                                   & (np.abs(gj[:, None] - kj[None, :]) <= radius))
        self.targets = torch.from_numpy(np.stack(targets))  # (L, m)
        self.sources = torch.from_numpy(np.stack(sources))  # (L, nb)
        self.blocked = torch.from_numpy(~np.stack(allowed))  # (L, m, nb) True = outside the neighbourhood
        # the same as an additive bias, added inside the matmul (baddbmm): -inf outside the neighbourhood
        self.bias = torch.zeros(self.blocked.shape).masked_fill_(self.blocked, -math.inf)


class LabelPropagator:
    """Propagates soft labels frame by frame over a ``grid_h x grid_w`` feature grid.

        prop = LabelPropagator(cfg, (h, w))
        prop.start(feat0, labels0)          # (C, h, w) features, (K, h, w) labels of frame 0
        soft = prop.step(feat_t)            # (K, h, w) soft labels of the next frame (queued)

    Holds the first frame and at most ``n_last`` previous frames: each as its L2-normalised features gathered
    once into the source blocks of every tile (float32, (tiles, block cells, C)) and its soft labels."""

    def __init__(self, cfg: PropagationConfig, grid_hw: tuple[int, int]):
        self.cfg = cfg.check()
        self.h, self.w = int(grid_hw[0]), int(grid_hw[1])
        self._tiles = _Tiles(self.h, self.w, cfg.radius, cfg.tile)
        self._first: tuple[torch.Tensor, torch.Tensor] | None = None
        self._queue: deque = deque(maxlen=cfg.n_last) if cfg.n_last > 0 else deque(maxlen=0)

    @staticmethod
    def _flat(feat) -> torch.Tensor:
        """(C, h, w) -> (h*w, C) float32, L2-normalised per cell (ref: F.normalize(dim=1))."""
        f = torch.as_tensor(feat).float()
        return F.normalize(f.reshape(f.shape[0], -1).t().contiguous(), dim=1)

    def _blocks(self, q: torch.Tensor) -> torch.Tensor:
        """(n, C) normalised features of a frame -> (L, nb, C): the source block of every tile (gathered once
        per frame; every target frame that has this frame in its context reads it)."""
        L, nb = self._tiles.sources.shape
        return q.index_select(0, self._tiles.sources.reshape(-1)).view(L, nb, -1)

    def start(self, feat0, labels0) -> None:
        lab = torch.as_tensor(labels0).float()
        if tuple(lab.shape[1:]) != (self.h, self.w) or tuple(torch.as_tensor(feat0).shape[1:]) != (self.h, self.w):
            raise ValueError(f"frame-0 features {tuple(torch.as_tensor(feat0).shape)} / labels {tuple(lab.shape)} "
                             f"do not match the grid {self.h}x{self.w}")
        self._first = (self._blocks(self._flat(feat0)), lab.reshape(lab.shape[0], -1).t().contiguous())
        self._queue.clear()

    def step(self, feat) -> torch.Tensor:
        """The soft labels (K, h, w) of the next frame; it then joins the queue (ref: ``que.put``)."""
        if self._first is None:
            raise RuntimeError("call start() first")
        q = self._flat(feat)
        ctx = [self._first, *self._queue]
        out = self._propagate(q, [c[0] for c in ctx], torch.stack([c[1] for c in ctx]))
        self._queue.append((self._blocks(q), out))  # deque(maxlen) drops the oldest (ref: que.get() when full)
        return out.t().reshape(-1, self.h, self.w)

    def _propagate(self, q: torch.Tensor, src: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        """q (n, C) targets; src: per context frame its (L, nb, C) source blocks; lab (F, n, K) -> (n, K).

        Per tile chunk and context frame: similarities of the tile's targets with the block its neighbourhood
        reaches (one batched matmul), cells outside the neighbourhood set to -inf, and that frame's top k+1;
        the top k over all frames is the top k of those per-frame lists (exact). The weights are computed on
        those k only; a target whose k-th and (k+1)-th similarities tie is redone over every source so that
        all sources tied at the k-th value count (the ref's rule, see the module doc)."""
        cfg, tiles = self.cfg, self._tiles
        nf, n, K = lab.shape
        k = cfg.topk
        out = torch.zeros(n, K)
        for a in range(0, len(tiles.targets), cfg.tile_chunk):
            tgt, srcs = tiles.targets[a:a + cfg.tile_chunk], tiles.sources[a:a + cfg.tile_chunk]
            bias = tiles.bias[a:a + cfg.tile_chunk]
            L, m = tgt.shape
            nb = srcs.shape[1]
            qt = q.index_select(0, tgt.reshape(-1)).view(L, m, -1)
            vals, idx = [], []
            for f in range(nf):
                st = src[f][a:a + cfg.tile_chunk]  # (L, nb, C)
                sim = torch.baddbmm(bias, qt, st.transpose(1, 2))  # (L, m, nb); -inf outside the neighbourhood
                v, i = sim.topk(min(k + 1, nb), dim=-1)
                vals.append(v)
                idx.append(i + f * nb)
            v_all, j = torch.cat(vals, -1).topk(min(k + 1, nf * nb), dim=-1)
            i = torch.cat(idx, -1).gather(-1, j)  # (L, m, k+1) indices into (frame, block cell)
            v, i = v_all[..., :k], i[..., :k]
            wgt = torch.exp((v - v[..., :1]) / cfg.temperature)  # ref: exp(aff / 0.1), normalised below
            wgt = wgt / wgt.sum(-1, keepdim=True)
            # labels of the chosen sources: frame i // nb, grid cell srcs[tile, i % nb]
            cell = srcs.gather(1, (i % nb).reshape(L, -1)).reshape(L, m, -1)
            chosen = lab[i // nb, cell]  # (L, m, k, K)
            res = (wgt[..., None] * chosen).sum(-2)  # (L, m, K)
            if nf * nb > k:
                kth, nxt = v_all[..., k - 1], v_all[..., k]  # the k-th and (k+1)-th best over all frames
                tie = (nxt == kth) & torch.isfinite(kth)
                if bool(tie.any()):
                    res[tie] = self._with_ties(qt, [b[a:a + cfg.tile_chunk] for b in src], lab, srcs,
                                               tiles.blocked[a:a + cfg.tile_chunk], tie)
            out[tgt.reshape(-1)] = res.reshape(L * m, K)
        return out

    def _with_ties(self, qt, src, lab, srcs, blocked, tie) -> torch.Tensor:
        """The ref's rule for the (few) targets whose k-th best similarity is tied: every source >= the k-th
        value counts. Computed one target at a time over every frame of the context."""
        cfg = self.cfg
        res = []
        for l, p in tie.nonzero().tolist():
            sims = torch.stack([blk[l] @ qt[l, p] for blk in src])
            sims = sims.masked_fill(blocked[l, p][None], -math.inf).reshape(-1)  # (F * nb)
            kth = sims.topk(cfg.topk).values[-1]
            keep = sims >= kth  # ref: aff[aff < tk_val_min] = 0
            w = torch.exp((sims[keep] - sims.max()) / cfg.temperature)
            labs = lab[:, srcs[l]].reshape(-1, lab.shape[-1])[keep]
            res.append((w[:, None] * labs).sum(0) / w.sum())
        return torch.stack(res)


# ------------------------------------------------------------------------------------- labels <-> grid
def labels_to_grid(labels: np.ndarray, geometry: Geometry, num_channels: int) -> torch.Tensor:
    """(H, W) integer labels of a frame -> (num_channels, h, w) one-hot at the feature grid, each cell taking
    the label of the pixel nearest its centre (ref ``read_seg`` + ``to_one_hot``; see the module doc)."""
    centres = geometry.cell_centers("image")  # (h, w, 2) x, y
    H, W = labels.shape
    xs = np.clip(np.rint(centres[..., 0]).astype(np.int64), 0, W - 1)
    ys = np.clip(np.rint(centres[..., 1]).astype(np.int64), 0, H - 1)
    cell = torch.from_numpy(np.asarray(labels)[ys, xs].astype(np.int64))
    cell = cell.clamp_max(num_channels - 1)
    return F.one_hot(cell, num_channels).permute(2, 0, 1).float()


def pixel_grid(geometry: Geometry) -> torch.Tensor:
    """(1, H, W, 2) ``grid_sample`` coordinates (align_corners=True) of every frame pixel on the feature grid."""
    ys, xs = np.meshgrid(np.arange(geometry.image_h), np.arange(geometry.image_w), indexing="ij")
    uv = geometry.pixel_to_normalized(np.stack([xs, ys], axis=-1).astype(np.float64))
    return torch.from_numpy(uv.astype(np.float32))[None]


def labels_to_frame(soft: torch.Tensor, grid: torch.Tensor) -> np.ndarray:
    """(K, h, w) soft labels -> (H, W) uint8 label per pixel: bilinear at each pixel's grid position (border
    clamped), each channel min-max normalised when its max > 0 (ref ``norm_mask``), arg-max over channels."""
    up = F.grid_sample(soft[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
    flat = up.reshape(up.shape[0], -1)
    lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    span = (hi - lo).clamp_min(1e-12)
    flat = torch.where(hi > 0, (flat - lo) / span, flat)  # ref norm_mask: only channels whose max > 0
    # arg-max over the (few) channels, the first on ties like torch.argmax; a loop over channels is ~10x faster
    # than argmax(dim=0) on a (K, H*W) tensor
    best, idx = flat[0].clone(), torch.zeros(flat.shape[1], dtype=torch.uint8)
    for k in range(1, flat.shape[0]):
        better = flat[k] > best
        idx[better] = k
        best = torch.maximum(best, flat[k])
    return idx.reshape(up.shape[1:]).numpy()


def propagate_clip(features: Iterable, labels0: np.ndarray, geometry: Geometry,
                   cfg: PropagationConfig = PropagationConfig()) -> Iterator[np.ndarray]:
    """Yield the (H, W) uint8 label map of frames 1, 2, ... from per-frame (C, h, w) features (any iterable:
    a memory-mapped cache is read one frame at a time) and frame 0's (H, W) integer labels (0 = background,
    k = object k). Labels above the frame-0 maximum never appear."""
    it = iter(features)
    num_channels = int(np.max(labels0)) + 1
    prop = LabelPropagator(cfg, (geometry.grid_h, geometry.grid_w))
    prop.start(next(it), labels_to_grid(labels0, geometry, num_channels))
    grid = pixel_grid(geometry)
    for feat in it:
        yield labels_to_frame(prop.step(feat), grid)


__all__ = ["PropagationConfig", "LabelPropagator", "labels_to_grid", "labels_to_frame", "pixel_grid",
           "propagate_clip"]
