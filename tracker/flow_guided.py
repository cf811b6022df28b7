"""``dino-flow``: DINO-Tracker's predictions fused with chained optical flow at the video's own resolution.

Why: chained flow is pixel-precise over short spans but drifts and never recovers once it slips onto the
background or the point is occluded; DINO-Tracker re-detects a point anywhere (long-range, occlusions)
but is only cell-precise (one dsift cell at the CPU work size is 16 px of a 480p frame). On BADJA clips
the two fail in different places (an oracle picking the better one per point-frame beats flow by +7
delta_seg), so the fused tracker follows flow while flow is trustworthy and re-detects with the trained
head where it is not. This is NOT part of the DINO-Tracker paper (which uses the head alone); the pure
method stays available as tracker ``dino``.

Rule, per query and step a -> b (forwards from the query frame, then backwards), in original pixels:

* flow candidate ``f = p_a + F_ab(p_a)``; it is *consistent* when the forward-backward error is below
  ``fusion_fb_px`` and ``f`` is inside the frame;
* DINO candidate ``d`` = DINO-Tracker's prediction in frame b (tracked from the query feature, so it
  never drifts) with its visibility decision;
* take ``f`` when it is consistent and either within ``fusion_snap_cells`` feature cells of ``d`` or DINO
  marks the point occluded in b; otherwise take ``d`` when DINO sees the point (re-detection: flow broke,
  or drifted too far from where the features say the point is); otherwise keep ``f`` (propagate through
  an occlusion so the point can come back).
* a re-detected point (cell-precise) is moved to the best normalised cross-correlation match of its
  query-frame patch (17x17 px) within one cell, when that match reaches ``fusion_refine_ncc``
  (``TemplateRefiner``), so it is pixel-precise again when the appearance still matches;
* visible = flow followed (consistent) or re-detected; a point coasting on inconsistent flow while DINO
  does not see it is occluded. Confidence: DINO's where the point was re-detected, the larger of flow's
  (1 / (1 + (err / fusion_fb_px)^2)) and DINO's where flow was followed, DINO's while coasting.

Flows are computed on the fly, one frame pair at a time, so memory does not grow with clip length.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from cosettle.io.tracks import TrackResult

from .api import Tracker
from .flow import inside, make_flow_estimator, sample_flow

log = logging.getLogger(__name__)


@dataclass
class FusionStats:
    flow_steps: int = 0        # point-steps that followed flow
    redetections: int = 0      # point-steps snapped to the DINO prediction
    coasting: int = 0          # flow inconsistent and DINO unsure: flow kept, point marked occluded
    flow_calls: int = 0
    refined: int = 0           # re-detections moved by the template refinement
    seconds: float = 0.0

    def to_dict(self) -> dict:
        total = max(1, self.flow_steps + self.redetections + self.coasting)
        return {"flow_steps": self.flow_steps, "redetections": self.redetections, "coasting": self.coasting,
                "redetect_share": self.redetections / total, "refined": self.refined,
                "flow_calls": self.flow_calls,
                "seconds": round(self.seconds, 3)}


def fuse_step(p_a: np.ndarray, flow_ab: np.ndarray, flow_ba: np.ndarray, d_b: np.ndarray, dvis_b: np.ndarray,
              snap_px: float, fb_px: float):
    """One fusion step for M points. Returns (p_b, flow_used, redetected, flow_consistent, fb_err)."""
    h, w = flow_ab.shape[:2]
    f = p_a + sample_flow(flow_ab, p_a)
    back = f + sample_flow(flow_ba, f)
    err = np.linalg.norm(back - p_a, axis=1)
    consistent = (err < fb_px) & inside(f, h, w)
    agree = np.linalg.norm(f - d_b, axis=1) <= snap_px
    use_flow = consistent & (agree | ~dvis_b)
    redetect = ~use_flow & dvis_b
    p_b = np.where(redetect[:, None], d_b, f).astype(np.float32)
    return p_b, use_flow, redetect, consistent, err


class TemplateRefiner:
    """Moves a re-detected point to the best normalised cross-correlation match of its query patch
    within ``search_px`` of the head's (cell-precise) prediction; keeps the prediction when no match
    reaches ``min_ncc``. Pixel precision after a re-detection, where the head alone is off by up to a
    cell."""

    def __init__(self, frames: np.ndarray, queries: np.ndarray, half: int = 8, search_px: float = 16.0,
                 min_ncc: float = 0.6):
        import cv2

        self.frames, self.half, self.search, self.min_ncc = frames, int(half), int(round(search_px)), min_ncc
        gray = {int(t): cv2.cvtColor(frames[int(t)], cv2.COLOR_RGB2GRAY)
                for t in np.unique(np.round(queries[:, 0]))}
        self.templates = [self._patch(gray[int(round(t))], x, y, self.half) for t, x, y in queries]
        self.refined = 0

    @staticmethod
    def _patch(img, x, y, r):
        xi, yi = int(round(x)), int(round(y))
        if xi - r < 0 or yi - r < 0 or xi + r >= img.shape[1] or yi + r >= img.shape[0]:
            return None
        return img[yi - r: yi + r + 1, xi - r: xi + r + 1]

    def __call__(self, idx: np.ndarray, frame: int, xy: np.ndarray) -> np.ndarray:
        import cv2

        img = cv2.cvtColor(self.frames[frame], cv2.COLOR_RGB2GRAY)
        out = xy.copy()
        r, s = self.half, self.search
        for k, (i, (x, y)) in enumerate(zip(idx, xy)):
            tpl = self.templates[i]
            win = self._patch(img, x, y, r + s)
            if tpl is None or win is None or float(tpl.std()) < 1.0:
                continue
            res = cv2.matchTemplate(win, tpl, cv2.TM_CCOEFF_NORMED)
            _, peak, _, (dx, dy) = cv2.minMaxLoc(res)
            if peak >= self.min_ncc:
                out[k] = (int(round(x)) - s + dx, int(round(y)) - s + dy)
                self.refined += 1
        return out


def fuse_tracks(dino: TrackResult, flow_pair, num_frames: int, snap_px: float, fb_px: float,
                progress: bool = False, stats: FusionStats | None = None, refine=None):
    """Fuse DINO predictions with flow. ``flow_pair(t) -> (F[t], B[t])``: flows t -> t+1 and t+1 -> t.
    ``refine(query_idx, frame, xy) -> xy``: optional, applied to re-detected points (TemplateRefiner).

    Returns (tracks (N,T,2), visible (N,T), confidence (N,T)) in original pixels.
    """
    from tqdm.auto import tqdm

    st = stats if stats is not None else FusionStats()
    q = np.asarray(dino.queries, np.float64)
    n, T = len(q), num_frames
    tq = q[:, 0].round().astype(int)
    tracks = np.array(dino.tracks, np.float32, copy=True)
    vis = np.zeros((n, T), bool)
    conf = np.zeros((n, T), np.float32)
    tracks[np.arange(n), tq] = q[:, 1:3]
    vis[np.arange(n), tq] = True
    conf[np.arange(n), tq] = 1.0

    def step(idx, a, b, flow_ab, flow_ba):
        d_b, dvis_b, dconf_b = dino.tracks[idx, b], dino.visible[idx, b], dino.confidence[idx, b]
        p_b, use_flow, redet, consistent, err = fuse_step(tracks[idx, a], flow_ab, flow_ba, d_b, dvis_b,
                                                          snap_px, fb_px)
        if refine is not None and redet.any():
            p_b[redet] = refine(idx[redet], b, p_b[redet])
        tracks[idx, b] = p_b
        fconf = np.where(consistent, 1.0 / (1.0 + (err / fb_px) ** 2), 0.0)
        vis[idx, b] = use_flow | redet
        conf[idx, b] = np.where(redet, dconf_b, np.where(use_flow, np.maximum(fconf, dconf_b), dconf_b))
        st.flow_steps += int(use_flow.sum())
        st.redetections += int(redet.sum())
        st.coasting += int((~use_flow & ~redet).sum())

    t0 = time.perf_counter()
    need_back = bool(len(q)) and tq.max() > 0
    bar = tqdm(total=(T - 1) * (2 if need_back else 1), desc="fuse flow+dino", unit="pair",
               disable=not progress, leave=False)
    for t in range(T - 1):  # forwards: points queried at <= t move t -> t+1
        idx = np.nonzero(tq <= t)[0]
        if len(idx):
            fwd, bwd = flow_pair(t)
            st.flow_calls += 2
            step(idx, t, t + 1, fwd, bwd)
        bar.update(1)
    if need_back:
        for t in range(T - 2, -1, -1):  # backwards: points queried at >= t+1 move t+1 -> t
            idx = np.nonzero(tq >= t + 1)[0]
            if len(idx):
                fwd, bwd = flow_pair(t)
                st.flow_calls += 2
                step(idx, t + 1, t, bwd, fwd)
            bar.update(1)
    bar.close()
    st.seconds += time.perf_counter() - t0
    return tracks, vis, conf


class FlowGuidedTracker(Tracker):
    """DINO-Tracker (trained exactly as ``dino``) + flow-guided inference; same API as ``Tracker``."""

    name = "dino-flow"

    def fit(self, video, masks=None) -> "FlowGuidedTracker":
        from .baselines import _as_frames

        super().fit(video, masks)
        self._frames = _as_frames(video)  # original resolution: flow is pixel-precise there
        return self

    def _cell_px(self) -> float:
        """One feature cell in original-video pixels (the geometry's stride times the resize scale)."""
        g = self.geometry
        h, _ = self.geometry_image_hw
        return float(g.stride) * h / g.input_h

    def track_head(self, queries, occlusion: str | None = None) -> TrackResult:
        """The pure DINO-Tracker result of the same fitted model (tracker ``dino``)."""
        return super().track(queries, occlusion)

    def track(self, queries, occlusion: str | None = None) -> TrackResult:
        res = self.track_head(queries, occlusion)
        c = self.cfg
        # DIS at full resolution (finest scale 0), as the ``flow`` baseline: no weights needed
        est = make_flow_estimator("dis", c.fusion_dis_preset, None, "cpu", 0)
        frames = self._frames

        def flow_pair(t):
            return est(frames[t], frames[t + 1]), est(frames[t + 1], frames[t])

        self.fusion_stats = FusionStats()
        cell = self._cell_px()
        refine = (TemplateRefiner(frames, res.queries, search_px=cell, min_ncc=c.fusion_refine_ncc)
                  if c.fusion_refine_ncc > 0 else None)
        tracks, vis, conf = fuse_tracks(res, flow_pair, frames.shape[0], c.fusion_snap_cells * cell,
                                        c.fusion_fb_px, progress=self.progress, stats=self.fusion_stats,
                                        refine=refine)
        self.fusion_stats.refined = refine.refined if refine is not None else 0
        self.timings["fusion"] = self.timings.get("fusion", 0.0) + self.fusion_stats.seconds
        log.info("flow+dino fusion: %s", self.fusion_stats.to_dict())
        return TrackResult(tracks, vis, conf, res.queries, res.names)
