"""Optical flow for the tracker: estimators, consecutive forward/backward flows, point sampling.

Flows are (H, W, 2) float32 arrays of (dx, dy) in pixels, pixel-centre convention (integer = centre).

* ``dis`` (default): OpenCV's DIS optical flow -- no weights, a few tens of ms per 854x480 pair on
  one CPU core. Preset ``ultrafast|fast|medium`` (default ``medium``).
* ``raft``: torchvision ``raft_large`` -- only when its weights file is on disk (we never download);
  otherwise a :class:`UserError` naming the expected file.

Difference from DINO-Tracker: the reference uses RAFT only and recomputes/re-reads frames for every
start frame; here every estimator counts its calls (``estimator.calls``) so the preprocessing can log
how many flows it ran, and consecutive flows are computed once and cached by ``tracker.preprocess``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from cosettle.errors import UserError
from cosettle.progress import tqdm

from ..eta import StageTimes
from .lazy_array import NpyWriter

log = logging.getLogger(__name__)

DIS_PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}
RAFT_WEIGHTS_FILE = "raft_large_C_T_SKHT_V2-ff5fadd5.pth"
FLOW_METHODS = ("dis", "raft")


class FlowEstimator:
    """Callable ``(img0, img1) -> flow (H, W, 2)`` from img0 to img1; counts its calls."""

    name = "flow"

    def __init__(self):
        self.calls = 0

    def __call__(self, img0: np.ndarray, img1: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self._flow(img0, img1)

    def _flow(self, img0, img1):  # pragma: no cover - abstract
        raise NotImplementedError

    def cache_fields(self) -> dict:
        return {"name": self.name}


class DISFlow(FlowEstimator):
    """OpenCV Dense Inverse Search on grayscale frames."""

    name = "dis"

    def __init__(self, preset: str = "medium", finest_scale: int | None = None):
        super().__init__()
        if preset not in DIS_PRESETS:
            raise UserError(f"unknown DIS preset {preset!r}", f"choose one of {', '.join(DIS_PRESETS)}")

        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
        # The presets stop one pyramid level above full resolution (finest scale 1 for "medium");
        # 0 runs the last level at full resolution: ~2.5x slower, sharper flow (see docs).
        if finest_scale is not None:
            if finest_scale < 0:
                raise UserError(f"DIS finest scale must be >= 0, got {finest_scale}")
            self._dis.setFinestScale(int(finest_scale))
        self.finest_scale = self._dis.getFinestScale()

    def _flow(self, img0, img1):
        g0 = _gray(img0, cv2)
        g1 = _gray(img1, cv2)
        return self._dis.calc(g0, g1, None).astype(np.float32, copy=False)

    def cache_fields(self):
        return {"name": "dis", "preset": self.preset, "finest_scale": self.finest_scale, "version": 1}


def _gray(img, cv2):
    img = np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img


class RaftFlow(FlowEstimator):
    """torchvision ``raft_large`` from a local weights file (24 updates, last iterate, pad to /8)."""

    name = "raft"

    def __init__(self, weights: str | os.PathLike | None = None, device="cpu", num_updates: int = 24):
        super().__init__()
        path = find_raft_weights(weights)
        try:
            from torchvision.models.optical_flow import raft_large  # deferred: RAFT flow only; slow import
        except ImportError:
            raise UserError("flow 'raft' needs torchvision", "pip install torchvision, or use --flow dis") from None
        self.device = torch.device(device)
        self.model = raft_large(weights=None, progress=False)
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval().to(self.device)
        self.num_updates = int(num_updates)
        self.path = path

    def _flow(self, img0, img1):
        x = torch.from_numpy(np.stack([img0, img1])).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        # "sintel" padding: split the pad between both sides, replicate borders
        pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        x = F.pad(x, pads, mode="replicate").to(self.device)
        with torch.inference_mode():
            flows = self.model(x[:1], x[1:], num_flow_updates=self.num_updates)
        f = flows[-1][0, :, pads[2]:pads[2] + h, pads[0]:pads[0] + w]
        return f.permute(1, 2, 0).float().cpu().numpy()

    def cache_fields(self):
        return {"name": "raft", "weights": str(self.path), "updates": self.num_updates, "version": 1}


def find_raft_weights(weights: str | os.PathLike | None = None) -> Path:
    """The RAFT weights file: ``weights`` or torch hub's checkpoint folder; UserError if absent."""
    if weights:
        path = Path(weights)
    else:
        try:
            hub = Path(torch.hub.get_dir()) / "checkpoints"
        except Exception:  # pragma: no cover
            hub = Path.home() / ".cache" / "torch" / "hub" / "checkpoints"
        path = hub / RAFT_WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"RAFT weights not found: {path} (expected file {RAFT_WEIGHTS_FILE})",
                        "put torchvision's raft_large weights there (we never download), "
                        "or use the weight-free --flow dis")
    return path


def make_flow_estimator(method: str = "dis", dis_preset: str = "medium", raft_weights=None,
                        device="cpu", dis_finest_scale: int | None = None) -> FlowEstimator:
    if method == "dis":
        return DISFlow(dis_preset, dis_finest_scale)
    if method == "raft":
        return RaftFlow(raft_weights, device=device)
    raise UserError(f"unknown flow method {method!r}", f"choose one of {', '.join(FLOW_METHODS)}")


def consecutive_flows(frames, estimator: FlowEstimator, progress: bool = False):
    """Forward ``F[i] = flow(i -> i+1)`` and backward ``B[i] = flow(i+1 -> i)``, each (T-1, H, W, 2)."""
    n = len(frames)
    h, w = np.asarray(frames[0]).shape[:2]
    fwd = np.zeros((max(n - 1, 0), h, w, 2), np.float32)
    bwd = np.zeros_like(fwd)
    prev = np.asarray(frames[0])
    for i in tqdm(range(n - 1), desc=f"flow [{estimator.name}]", unit="pair", disable=not progress,
                  leave=False):
        cur = np.asarray(frames[i + 1])
        fwd[i] = estimator(prev, cur)
        bwd[i] = estimator(cur, prev)
        prev = cur
    return fwd, bwd


def sample_flow(flow: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear flow at points ``xy`` (N, 2) (x, y); positions outside are clamped to the border.

    Callers decide what "outside" means (every consumer here also checks bounds). The reference
    samples with zero padding instead; both agree inside the image, which is all that is kept.
    """
    h, w = flow.shape[:2]
    x = np.clip(xy[:, 0], 0.0, w - 1.0)
    y = np.clip(xy[:, 1], 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros(len(x), np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros(len(y), np.int64)
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    ax = (x - x0)[:, None].astype(np.float32)
    ay = (y - y0)[:, None].astype(np.float32)
    top = flow[y0, x0] * (1 - ax) + flow[y0, x1] * ax
    bot = flow[y1, x0] * (1 - ax) + flow[y1, x1] * ax
    return (top * (1 - ay) + bot * ay).astype(np.float32)


def inside(xy: np.ndarray, h: int, w: int) -> np.ndarray:
    """(N,) bool: point within [0, W-1] x [0, H-1] (the reference's bounds for kept points)."""
    return (xy[:, 0] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= h - 1)


def step_points(xy: np.ndarray, fwd: np.ndarray, bwd: np.ndarray):
    """Move points one frame with ``fwd`` and check them with ``bwd`` (flow of the next frame back).

    Returns (new positions (N,2), forward-backward error (N,), inside (N,) bool).
    """
    h, w = fwd.shape[:2]
    c1 = xy + sample_flow(fwd, xy)
    c2 = c1 + sample_flow(bwd, c1)
    err = np.linalg.norm(xy - c2, axis=1)
    return c1.astype(np.float32), err.astype(np.float32), inside(c1, h, w)


def fb_consistency(fwd: np.ndarray, bwd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel error map of frame i+1 and its coverage by frame i (reference step A).

    For each pixel x of frame i+1: c1 = x + B(x), c2 = c1 + F(c1), err = |x - c2|. A pixel is
    covered when some pixel p of frame i lands on it, round(p + F(p)) == x.
    """
    h, w = fwd.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    grid = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32)
    c1 = grid + bwd.reshape(-1, 2)
    c2 = c1 + sample_flow(fwd, c1)
    err = np.linalg.norm(grid - c2, axis=1).reshape(h, w)
    land = np.rint(grid + fwd.reshape(-1, 2)).astype(np.int64)
    ok = (land[:, 0] >= 0) & (land[:, 0] < w) & (land[:, 1] >= 0) & (land[:, 1] < h)
    covered = np.zeros(h * w, bool)
    covered[land[ok, 1] * w + land[ok, 0]] = True
    return err.astype(np.float32), covered.reshape(h, w)


def write_consecutive_flows(frames, estimator: FlowEstimator, fwd_path, bwd_path, progress: bool = False,
                            eta: StageTimes | None = None) -> None:
    """Same flows as :func:`consecutive_flows`, streamed to two ``.npy`` files one pair at a time.

    ``frames`` may be a lazy per-frame reader: only two frames and one flow pair are in memory at once
    (the in-memory form holds 2 x (T-1) x H x W x 2 floats: 1.6 GB for 1,000 frames at 427x240).
    ``eta``: the run's time estimate, told of every frame pair (stage ``flows``).
    """
    eta = eta if eta is not None else StageTimes()

    n = len(frames)

    h, w = np.asarray(frames[0]).shape[:2]
    shape = (max(n - 1, 0), h, w, 2)
    with NpyWriter(fwd_path, shape, np.float32) as wf, NpyWriter(bwd_path, shape, np.float32) as wb:
        prev = np.asarray(frames[0])
        for i in tqdm(range(n - 1), desc=f"flow [{estimator.name}]", unit="pair", disable=not progress,
                      leave=False):
            cur = np.asarray(frames[i + 1])
            wf.write(estimator(prev, cur)[None])
            wb.write(estimator(cur, prev)[None])
            prev = cur
            eta.advance("flows")  # per frame pair, for the run's time-left estimate
