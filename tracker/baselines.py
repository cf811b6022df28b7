"""Baselines behind the :class:`tracker.base.PointTracker` interface, for the evaluators.

* ``static``   -- every point stays at its query position (the BADJA "zero motion" floor).
* ``flow``     -- optical flow chained frame to frame from the query frame, forwards and backwards in
  time; a frame is occluded when the forward-backward check fails there (> ``fb_threshold`` px) or the
  point left the image, but the position estimate keeps propagating so a point can come back.
* ``features`` -- nearest neighbour of the query's backend feature in every frame (cosine), refined
  below the cell size by a soft-argmax in a small window; confidence = the cosine. No training.

All take and return ORIGINAL video pixels (x, y), integer = pixel centre.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from cosettle.errors import UserError
from cosettle.frames import as_frames, video_hw
from cosettle.io.queries import as_queries
from cosettle.io.tracks import TrackResult

from .base import RunReport
from .config import FeatureTrackerConfig, FlowTrackerConfig
from .eta import StageTimes
from .preprocess.flow import consecutive_flows, inside, make_flow_estimator, sample_flow
from .registry import register_tracker

log = logging.getLogger(__name__)


def check_queries(queries, num_frames: int) -> np.ndarray:
    q = np.asarray(queries, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != 3:
        raise UserError(f"queries must be an (N, 3) array of (t, x, y), got shape {q.shape}")
    if len(q) and (not np.isfinite(q).all() or q[:, 0].min() < 0 or q[:, 0].max() > num_frames - 1):
        raise UserError(f"query frames must lie in 0..{num_frames - 1} and values be finite",
                        "check the t column of the queries")
    if len(q) and np.any(q[:, 0] != np.round(q[:, 0])):
        raise UserError("query frame indices must be integers", "check the t column of the queries")
    return q


class _Fitted:
    """A baseline's protocol part: ``fit`` / ``track`` timed into the run's ``eta`` (the track command's, else one
    of its own), the queries taken as ``Queries`` or an array, and the ``report`` made of those times."""

    _T: int | None = None

    def __init__(self):
        self.eta = StageTimes()  # the last fit's stage times (``fit``, ``track``)

    def _need_fit(self):
        if self._T is None:
            raise UserError(f"{self.name} tracker: call fit(video) before track(queries)")

    def fit(self, video, masks=None, eta: StageTimes | None = None):
        """``masks`` are not used by the baselines; ``eta``: the run's stage times and estimate."""
        self.eta = eta if eta is not None else StageTimes()
        with self.eta.timed("fit"):
            self._fit(video)
        return self

    def track(self, queries) -> TrackResult:
        self._need_fit()
        with self.eta.timed("track"):
            qs = as_queries(queries)
            res = self._track(check_queries(qs.txy, self._T))
            res.names = list(qs.names) or res.names
        return res

    def report(self) -> RunReport:
        return RunReport(self.eta.times)


class StaticTracker(_Fitted):
    name = "static"

    def _fit(self, video):
        self._T, self._H, self._W = video_hw(video)

    def _track(self, q: np.ndarray) -> TrackResult:
        tracks = np.repeat(q[:, None, 1:3], self._T, axis=1)
        ones = np.ones(tracks.shape[:2])
        return TrackResult(tracks, ones.astype(bool), ones, q)


class FlowTracker(_Fitted):
    """Chained consecutive flows at the video's own resolution (no resizing)."""

    name = "flow"

    def __init__(self, config: FlowTrackerConfig | None = None, flows=None, progress: bool = True, **kwargs):
        super().__init__()
        self.config = config or FlowTrackerConfig(**kwargs)
        self.progress = progress
        self._flows = flows  # optional precomputed (fwd, bwd), e.g. from the preprocessing cache

    def _fit(self, video):
        self._T, self._H, self._W = video_hw(video)
        if self._flows is not None:
            fwd, bwd = self._flows
            if fwd.shape != (self._T - 1, self._H, self._W, 2):
                raise UserError(f"precomputed flows {fwd.shape} do not match the video "
                                f"({self._T} frames {self._H}x{self._W} HxW)")
        else:
            c = self.config
            est = make_flow_estimator(c.flow, c.dis_preset, c.raft_weights, c.device, c.dis_finest_scale)
            frames = as_frames(video, who="the flow tracker's video").array
            fwd, bwd = consecutive_flows(frames, est, progress=self.progress)
            log.info("flow tracker: %d flow calls", est.calls)
        self.fwd, self.bwd = fwd, bwd

    def _track(self, q: np.ndarray) -> TrackResult:
        n, T = len(q), self._T
        tracks = np.zeros((n, T, 2), np.float32)
        err = np.zeros((n, T), np.float32)
        out = np.zeros((n, T), bool)
        tq = q[:, 0].astype(int)
        tracks[np.arange(n), tq] = q[:, 1:3]
        thr = self.config.fb_threshold
        # forwards: points whose query frame is <= t move t -> t+1 with F[t], checked with B[t]
        for t in range(T - 1):
            idx = np.nonzero(tq <= t)[0]
            if len(idx):
                self._step(tracks, err, out, idx, t, t + 1, self.fwd[t], self.bwd[t])
        # backwards: points whose query frame is >= t+1 move t+1 -> t with B[t], checked with F[t]
        for t in range(T - 2, -1, -1):
            idx = np.nonzero(tq >= t + 1)[0]
            if len(idx):
                self._step(tracks, err, out, idx, t + 1, t, self.bwd[t], self.fwd[t])
        # continuous score: 1 at zero error, 0.5 exactly at the threshold
        conf = 1.0 / (1.0 + (err / thr) ** 2)
        conf[out] = 0.0
        visible = (err < thr) & ~out
        visible[np.arange(n), tq] = True
        conf[np.arange(n), tq] = 1.0
        return TrackResult(tracks, visible, conf, q)

    def _step(self, tracks, err, out, idx, a, b, flow_ab, flow_ba):
        xy = tracks[idx, a]
        c1 = xy + sample_flow(flow_ab, xy)
        c2 = c1 + sample_flow(flow_ba, c1)
        tracks[idx, b] = c1
        err[idx, b] = np.linalg.norm(xy - c2, axis=1)
        out[idx, b] = ~inside(c1, self._H, self._W)


class FeatureTracker(_Fitted):
    """Nearest neighbour of the query feature in each frame + sub-cell soft-argmax."""

    name = "features"

    def __init__(self, backend, config: FeatureTrackerConfig | None = None, features=None,
                 progress: bool = True, **kwargs):
        super().__init__()
        self.backend = backend
        self.config = config or FeatureTrackerConfig(**kwargs)
        self.progress = progress
        self._features = features  # optional precomputed cosettle Features(features, geometry)

    def _fit(self, video):
        self._T, self._H, self._W = video_hw(video)
        feats = self._features or self.backend.extract(video, progress=self.progress)
        f = feats.features.float()
        if f.shape[0] != self._T:
            raise UserError(f"features have {f.shape[0]} frames, the video {self._T}")
        self.geometry = feats.geometry
        self.feats = F.normalize(f, dim=1)  # (T, C, h, w), unit cosine vectors

    def _track(self, q: np.ndarray) -> TrackResult:
        n, T = len(q), self._T
        tracks = np.zeros((n, T, 2), np.float32)
        conf = np.zeros((n, T), np.float32)
        for s in range(0, n, self.config.chunk_points):
            sl = slice(s, min(n, s + self.config.chunk_points))
            tracks[sl], conf[sl] = self._track_chunk(q[sl])
        tq = q[:, 0].astype(int)
        tracks[np.arange(n), tq] = q[:, 1:3]
        conf[np.arange(n), tq] = 1.0
        visible = conf >= self.config.visible_threshold
        return TrackResult(tracks, visible, np.clip(conf, 0.0, 1.0), q)

    def _query_features(self, q: np.ndarray) -> torch.Tensor:
        """(N, C) unit features bilinearly sampled at the query points of their frames."""
        g = self.geometry
        uv = torch.as_tensor(g.pixel_to_normalized(q[:, 1:3]), dtype=torch.float32)
        tq = torch.as_tensor(q[:, 0].astype(np.int64))
        maps = self.feats[tq]  # (N, C, h, w)
        # nearest by default: a blend of 4 cells of a weakly correlated descriptor (dsift) matches
        # no single cell well, and far-away "average-looking" cells win the global argmax
        mode = "nearest" if self.config.query_sampling == "nearest" else "bilinear"
        out = F.grid_sample(maps, uv.view(-1, 1, 1, 2), mode=mode, align_corners=True,
                            padding_mode="border")
        return F.normalize(out[:, :, 0, 0], dim=1)

    def _track_chunk(self, q):
        g, cfg = self.geometry, self.config
        fq = self._query_features(q)  # (N, C)
        T, C, h, w = self.feats.shape
        cos = torch.einsum("nc,tchw->nthw", fq, self.feats)  # (N, T, h, w)
        n = cos.shape[0]
        flat = cos.reshape(n, T, h * w)
        best = flat.argmax(-1)  # first maximum, row-major
        bi, bj = best // w, best % w
        r = cfg.window
        di, dj = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
        ii = bi[..., None, None] + di  # (N, T, k, k)
        jj = bj[..., None, None] + dj
        valid = ((ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)).reshape(n, T, -1)
        ii, jj = ii.clamp(0, h - 1), jj.clamp(0, w - 1)
        vals = torch.gather(flat, 2, (ii * w + jj).reshape(n, T, -1))
        vals = vals.masked_fill(~valid, float("-inf"))  # cells beyond the grid take no weight
        wts = torch.softmax(vals / cfg.temperature, dim=-1)
        gx = (wts * jj.reshape(n, T, -1).float()).sum(-1)
        gy = (wts * ii.reshape(n, T, -1).float()).sum(-1)
        px = g.grid_to_pixel(torch.stack([gx, gy], dim=-1).double()).float().numpy()
        conf = flat.max(-1).values.numpy()
        return px, conf


@register_tracker("flow", summary="chained DIS optical flow", config_class=FlowTrackerConfig, rank=30)
def _build_flow(backend, config, progress, **kwargs) -> FlowTracker:
    return FlowTracker(config=config, progress=progress, **kwargs)


@register_tracker("features", summary="nearest-neighbour features, no training", needs_backend=True,
                  config_class=FeatureTrackerConfig, rank=40)
def _build_features(backend, config, progress, **kwargs) -> FeatureTracker:
    return FeatureTracker(backend, config=config, progress=progress, **kwargs)


@register_tracker("static", summary="points stay where they were queried", rank=50)
def _build_static(backend, config, progress, **kwargs) -> StaticTracker:
    return StaticTracker(**kwargs)  # passed through, as every factory does: it takes none
