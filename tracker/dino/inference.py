"""Inference: queries at any frame tracked to every frame (earlier and later), plus occlusion.

Tracking a query (t_q, x, y) runs the head from the query's refined feature into every frame, so
"forwards" and "backwards" in time are the same operation. Unlike the reference (which re-predicts the
query frame), the query frame keeps the query point itself.

Occlusion rules:

* ``anchors`` (spec §5.2): c[t] = cos(f_t(P[t]), f_q(P[q])); anchors A = {c >= 0.7}; D[a,t] = distance
  between P[a] and the prediction in frame a when tracking P[t] from frame t; tau = max over anchors of
  the lower median over anchors of D; occluded = median_a D[a,t] > tau or c[t] < 0.6.
  O(N * |A| * T) = O(N * T^2) head evaluations.
* ``fb`` (default, O(N * T)): one backward pass per frame, tracking P[t] from frame t back to the
  query frame; occluded when that lands farther than ``fb_thresh_cells`` cells from the query point or
  c[t] < 0.6.

Confidence (both rules) = min(sigmoid((c - 0.6) / 0.05), sigmoid((tau - D) / s)), so
``visible == confidence >= 0.5`` up to ties; it is continuous in both the feature similarity and the
geometric consistency.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from cosettle.progress import tqdm

from .models import DinoTrackerModel
from .sampling import NormalisedMaps, sample_points
from .train import frames_tensor

log = logging.getLogger(__name__)


@torch.no_grad()
def refined_features(model: DinoTrackerModel, frames: np.ndarray, raw: torch.Tensor, scale: float,
                     geometry, chunk: int = 8, progress: bool = False, device="cpu",
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(T, C, h, w) refined features of every frame (DeltaDINO in eval mode, chunks of 8), stored as
    ``dtype``: float16 rounds each chunk as it is computed, so a long clip never holds them in float32."""
    model.eval()
    t = raw.shape[0]
    out = torch.empty(raw.shape, dtype=dtype)
    for s in tqdm(range(0, t, chunk), desc="refine features", disable=not progress, leave=False):
        idx = list(range(s, min(t, s + chunk)))
        rgb = frames_tensor(frames, idx).to(device)
        out[idx] = model.refine(rgb, raw[idx].float().to(device) * scale, geometry).cpu().to(dtype)
    return out


def _sig(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x)


class TrackInference:
    """Tracking and occlusion over one clip's refined features.

    ``refined`` may be float16 (what ``Tracker`` passes: the values of its fp16 cache): it is read as
    float32 a frame at a time, and the normalised maps the head matches against are made a block of
    frames at a time (:class:`NormalisedMaps`), so the results equal those of the same values held in
    float32 while the clip is held once, in 2 bytes per feature value (0.8 GB for 1,000 frames of dsift
    at 424x240; it was 8 bytes with float32 refined features and a normalised copy).
    """

    def __init__(self, model: DinoTrackerModel, refined: torch.Tensor, geometry, cfg):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.refined = refined.to(self.device)
        self.maps_n = NormalisedMaps(self.refined, cfg.infer_block_frames)
        self.geom = geometry
        self.cfg = cfg
        self.stats = {"head_evals": 0}

    @torch.no_grad()
    def _track(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """src (M, C) features, tgt (M,) frame indices -> (M, 2) input px, in memory-bounded chunks.

        Rows go through in target-frame order, so each block of normalised maps is made about once
        per call (query-major chunks would each touch every frame and remake every block)."""
        out = src.new_empty((src.shape[0], 2))
        step = max(1, int(self.cfg.infer_chunk_maps))
        order = torch.argsort(tgt, stable=True)
        for a in range(0, src.shape[0], step):
            rows = order[a:a + step]
            out[rows] = self.model.predict(src[rows], self.maps_n, tgt[rows], self.geom)
        self.stats["head_evals"] += int(src.shape[0])
        return out

    def _sample_all(self, xy: torch.Tensor) -> torch.Tensor:
        """xy (n, T, 2) -> features (n, T, C) sampled in each frame."""
        n, t, _ = xy.shape
        out = xy.new_empty((n, t, self.refined.shape[1]))
        for f in range(t):
            out[:, f] = sample_points(self.refined[f].float(), xy[:, f], self.geom)
        return out

    @torch.no_grad()
    def track(self, queries: np.ndarray, occlusion: str | None = None, progress: bool = False):
        """queries (N, 3) (t, x, y) in input px -> tracks (N,T,2), visible (N,T), confidence (N,T)."""
        rule = occlusion or self.cfg.occlusion
        q = torch.as_tensor(np.asarray(queries, np.float32), device=self.device)
        n, t = q.shape[0], self.refined.shape[0]
        dev = self.device
        tracks = torch.zeros((n, t, 2), device=dev)
        vis = torch.zeros((n, t), dtype=torch.bool, device=dev)
        conf = torch.zeros((n, t), device=dev)
        qf = q[:, 0].round().long()
        t0 = time.perf_counter()
        for f in tqdm(torch.unique(qf).tolist(), desc=f"track ({rule})", disable=not progress, leave=False):
            sel = torch.nonzero(qf == f).flatten()
            xy = q[sel, 1:3]
            src = sample_points(self.refined[f].float(), xy, self.geom)  # (m, C)
            m = len(sel)
            tgt = torch.arange(t, device=dev).repeat(m)
            pred = self._track(src.repeat_interleave(t, 0), tgt).view(m, t, 2)
            pred[:, f] = xy
            feats = self._sample_all(pred)  # (m, T, C)
            c = torch.nn.functional.cosine_similarity(feats, src[:, None], dim=2, eps=1e-8)
            if rule == "fb":
                v, cf = self._fb(feats, pred, xy, f)
            else:
                v, cf = self._anchors(feats, pred, c)
            c_ok = c >= self.cfg.visible_cos
            tracks[sel] = pred
            vis[sel] = v & c_ok
            conf[sel] = torch.minimum(cf, _sig((c - self.cfg.visible_cos) / 0.05))
            vis[sel, f] = True
            conf[sel, f] = 1.0
        self.stats["seconds"] = time.perf_counter() - t0
        return tracks.cpu().numpy(), vis.cpu().numpy(), conf.cpu().numpy()

    def _fb(self, feats, pred, xy, f):
        m, t, _ = feats.shape
        back = self._track(feats.reshape(m * t, -1), torch.full((m * t,), f, device=self.device)).view(m, t, 2)
        d = (back - xy[:, None]).norm(dim=2)
        tau = self.cfg.fb_thresh_cells * self.geom.stride
        return d <= tau, _sig((tau - d) / (0.25 * tau))

    def _anchors(self, feats, pred, c):
        m, t, _ = feats.shape
        vis = torch.zeros((m, t), dtype=torch.bool, device=self.device)
        conf = torch.zeros((m, t), device=self.device)
        for i in range(m):
            anchors = torch.nonzero(c[i] >= self.cfg.anchor_cos).flatten()
            k = len(anchors)
            # G[a, t]: P[t] (from frame t) tracked into each anchor frame a
            src = feats[i].repeat(k, 1)                      # (k*T, C), anchor-major
            tgt = anchors.repeat_interleave(t)
            g = self._track(src, tgt).view(k, t, 2)
            d = (g - pred[i, anchors][:, None]).norm(dim=2)  # (k, T)
            med = d.median(dim=0).values                     # lower median (torch.median)
            tau = med[anchors].max()
            vis[i] = med <= tau
            s = max(0.25 * float(tau), 0.5 * self.geom.stride)
            conf[i] = _sig((tau - med) / s)
        return vis, conf
