"""TAP-Vid: read the official pickles, sample queries (``first`` / ``strided``), score at 256x256.

Pickle layouts (evaluation.md §1.1):
* DAVIS: ``{name: {"video": uint8 (T,H,W,3), "points": float (N,T,2) (x,y) in [0,1], "occluded": bool (N,T)}}``;
* RGB-Stacking / Kinetics shards: a list of such dicts (Kinetics: ``video`` may be a list of JPEG bytes).

**Coordinate conventions -- converted explicitly at this boundary.** TAP-Vid's normalised (0,0) is the
upper-left *corner* of the upper-left pixel; the tapnet readers multiply by (W, H) with no half-pixel
shift, so raster pixel k has its centre at k + 0.5. Our trackers use the pixel-*centre* convention
(integer = pixel centre). Hence, at any resolution (W, H):

    ours_x = norm_x * W - 0.5      raster_x = ours_x + 0.5      (same for y with H)

Queries go to the tracker as (t, ours_x, ours_y); predictions come back in our convention and are
converted to raster pixels at 256x256 (per axis) before the metrics, exactly where tapnet computes them.

Unpickling can run arbitrary code, so by default the pickle is read with an unpickler that only admits
numpy arrays/dtypes and plain containers; ``trust=True`` (CLI ``--trust-pickle``) lifts that.
"""
from __future__ import annotations

import hashlib
import io
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cosettle.errors import UserError

from .metrics import compute_tapvid_metrics

log = logging.getLogger(__name__)

EVAL_SIZE = 256
STRIDE = 5


@dataclass
class TapVidVideo:
    name: str
    video: object  # (T, H, W, 3) uint8 array, or a list of JPEG bytes (Kinetics), decoded on demand
    points: np.ndarray  # (N, T, 2) float32 (x, y) normalised, corner convention
    occluded: np.ndarray  # (N, T) bool, True = occluded
    hw: tuple[int, int] = (0, 0)  # frame size (H, W) at the pickle's resolution

    def __post_init__(self):
        if self.hw == (0, 0) and isinstance(self.video, np.ndarray):
            self.hw = (int(self.video.shape[1]), int(self.video.shape[2]))

    @property
    def num_frames(self) -> int:
        return int(self.points.shape[1])

    def frames(self) -> np.ndarray:
        """(T, H, W, 3) uint8 (JPEG bytes are decoded here, so a Kinetics shard is never all in memory)."""
        if isinstance(self.video, np.ndarray):
            return self.video
        return np.stack([_decode_jpeg(b, self.name, k) for k, b in enumerate(self.video)])

    def digest(self) -> str:
        """Content hash of the frames as stored (for the runner's cache)."""
        h = hashlib.sha1()
        if isinstance(self.video, np.ndarray):
            h.update(np.ascontiguousarray(self.video).tobytes())
        else:
            for b in self.video:
                h.update(bytes(b))
        return h.hexdigest()


class _SafeUnpickler(pickle.Unpickler):
    """Only numpy array reconstruction + builtin containers (what the official pickles hold)."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy", "bool_"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("collections", "OrderedDict"), ("builtins", "bytes"), ("builtins", "bytearray"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_pickle(path: str | Path, trust: bool = False) -> list[TapVidVideo]:
    """Read a TAP-Vid pickle (dict or list layout) into videos, decoding JPEG-bytes frames."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"TAP-Vid pickle not found: {path}", "check --pickle")
    try:
        with open(path, "rb") as fh:
            data = pickle.load(fh) if trust else _SafeUnpickler(fh).load()
    except pickle.UnpicklingError as err:
        raise UserError(f"cannot read {path} safely: {err}",
                        "if you trust the file, add --trust-pickle") from None
    except Exception as err:
        raise UserError(f"{path} is not a readable pickle: {type(err).__name__}: {err}",
                        "expected an official TAP-Vid .pkl") from None
    if isinstance(data, dict) and {"video", "points", "occluded"} <= set(data):
        items = [("video_0", data)]
    elif isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = [(f"video_{i:04d}", d) for i, d in enumerate(data)]
    else:
        raise UserError(f"{path}: expected a dict or list of videos, got {type(data).__name__}",
                        "expected an official TAP-Vid .pkl")
    videos = [_to_video(str(name), d, path) for name, d in items]
    log.info("TAP-Vid %s: %d videos", path, len(videos))
    return videos


def _to_video(name: str, d, path: Path) -> TapVidVideo:
    if not isinstance(d, dict) or not {"video", "points", "occluded"} <= set(d):
        raise UserError(f"{path}: video {name!r} lacks video/points/occluded", "expected a TAP-Vid pickle")
    frames = d["video"]
    if isinstance(frames, (list, tuple)) and frames and isinstance(frames[0], (bytes, bytearray)):
        first = _decode_jpeg(frames[0], name, 0)
        T, hw = len(frames), first.shape[:2]
        frames = list(frames)
    else:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise UserError(f"{path}: video {name!r} has shape {frames.shape}, expected (T,H,W,3)",
                            "check the file")
        frames = frames.astype(np.uint8, copy=False)
        T, hw = frames.shape[0], frames.shape[1:3]
    points = np.asarray(d["points"], dtype=np.float32)
    occ = np.asarray(d["occluded"], dtype=bool)
    if points.ndim != 3 or points.shape[1:] != (T, 2) or occ.shape != points.shape[:2]:
        raise UserError(f"{path}: video {name!r}: points {points.shape} / occluded {occ.shape} do not match "
                        f"{T} frames", "expected points (N,T,2) and occluded (N,T)")
    return TapVidVideo(name, frames, points, occ, (int(hw[0]), int(hw[1])))


def _decode_jpeg(buf: bytes, name: str, k: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(buf)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as err:
        raise UserError(f"video {name!r} frame {k}: cannot decode JPEG bytes ({type(err).__name__})",
                        "check the pickle") from None


# ------------------------------------------------------------------------------------------ coordinates
def norm_to_raster(points: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Normalised (x, y) -> raster pixels at (H, W), tapnet's way (multiply, no shift)."""
    return np.asarray(points, dtype=np.float64) * np.array([hw[1], hw[0]], dtype=np.float64)


def raster_to_ours(xy: np.ndarray) -> np.ndarray:
    """Raster (corner-origin) -> our pixel-centre convention at the same resolution."""
    return np.asarray(xy, dtype=np.float64) - 0.5


def ours_to_raster(xy: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int] = (EVAL_SIZE, EVAL_SIZE)) -> np.ndarray:
    """Our pixel-centre (x, y) at ``from_hw`` -> raster pixels at ``to_hw`` (per-axis scale)."""
    r = np.asarray(xy, dtype=np.float64) + 0.5
    return r * np.array([to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]])


# ------------------------------------------------------------------------------------------ queries
def sample_queries(points_px: np.ndarray, occluded: np.ndarray, mode: str, stride: int = STRIDE):
    """Build queries as the tapnet readers do. ``points_px``: (N,T,2) raster (x,y).

    Returns (query_points (Q,3) [t, y, x] raster, track_index (Q,) into the GT tracks).
    ``first``: tracks never visible are dropped; one query per track at its first visible frame.
    ``strided``: for i = 0, stride, 2*stride, ... every track visible at frame i gives a query [i, y, x]
    (one GT track can give several queries, each scored against the full track).
    """
    occ = np.asarray(occluded, dtype=bool)
    n, T = occ.shape
    qs, idx = [], []
    if mode == "first":
        for k in range(n):
            vis = np.flatnonzero(~occ[k])
            if len(vis):
                t0 = int(vis[0])
                qs.append([t0, points_px[k, t0, 1], points_px[k, t0, 0]])
                idx.append(k)
    elif mode == "strided":
        for i in range(0, T, stride):
            for k in range(n):
                if not occ[k, i]:
                    qs.append([i, points_px[k, i, 1], points_px[k, i, 0]])
                    idx.append(k)
    else:
        raise UserError(f"unknown TAP-Vid query mode {mode!r}", "use first or strided")
    return np.array(qs, dtype=np.float64).reshape(-1, 3), np.array(idx, dtype=np.int64)


def resize_video(video: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Frames resized to (H, W) without keeping the aspect ratio (like the tapnet readers)."""
    if video.shape[1:3] == tuple(hw):
        return video
    return np.stack([cv2.resize(f, (hw[1], hw[0]), interpolation=cv2.INTER_AREA) for f in video])


@dataclass
class TapVidTask:
    """What the runner needs to track one video: its frames (loaded on demand) and tracker queries."""

    name: str
    video: TapVidVideo
    inf_hw: tuple[int, int]  # inference resolution (H, W)
    queries_ours: np.ndarray  # (Q, 3) t, x, y in our pixel-centre convention at the inference size
    query_points: np.ndarray  # (Q, 3) [t, y, x] raster at 256x256 (for the metric)
    gt_tracks: np.ndarray  # (Q, T, 2) raster (x, y) at 256x256
    gt_occluded: np.ndarray  # (Q, T)
    mode: str = "first"

    def load_frames(self) -> np.ndarray:
        """(T, h, w, 3) uint8 at the inference resolution."""
        return resize_video(self.video.frames(), self.inf_hw)


def prepare(video: TapVidVideo, mode: str, resolution: str = "256", stride: int = STRIDE) -> TapVidTask:
    """``resolution``: ``"256"`` (the tapnet readers' 256x256 frames -- the standard category) or
    ``"full"`` (the pickle's own size; predictions are rescaled to 256x256 and form a separate category)."""
    if resolution == "256":
        inf_hw = (EVAL_SIZE, EVAL_SIZE)
    elif resolution == "full":
        inf_hw = video.hw
    else:
        raise UserError(f"unknown TAP-Vid resolution {resolution!r}", "use 256 or full")
    ev_hw = (EVAL_SIZE, EVAL_SIZE)
    gt256 = norm_to_raster(video.points, ev_hw)
    qp256, idx = sample_queries(gt256, video.occluded, mode, stride)
    # Queries for the tracker: the same GT points, at the inference size, in the pixel-centre convention.
    gt_inf = norm_to_raster(video.points, inf_hw)
    q_ours = np.zeros((len(idx), 3), dtype=np.float64)
    q_ours[:, 0] = qp256[:, 0]
    t_idx = qp256[:, 0].astype(np.int64)
    q_ours[:, 1:] = raster_to_ours(gt_inf[idx, t_idx])
    return TapVidTask(video.name, video, inf_hw, q_ours, qp256, gt256[idx], video.occluded[idx], mode)


def score(task: TapVidTask, pred_tracks_ours: np.ndarray, pred_visible: np.ndarray) -> dict:
    """Metrics of one video (×100 for the percentages), from predictions in our convention at the
    inference size ``task.inf_hw``."""
    pred256 = ours_to_raster(pred_tracks_ours, task.inf_hw)
    m = compute_tapvid_metrics(task.query_points[None], task.gt_occluded[None], task.gt_tracks[None],
                               ~np.asarray(pred_visible, dtype=bool)[None], pred256[None], task.mode)
    out = {k: 100.0 * float(v[0]) for k, v in m.items()}
    out["count"] = int(len(task.query_points))
    return out
