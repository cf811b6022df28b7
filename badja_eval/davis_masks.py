"""Mask-consistency benchmark on DAVIS clips that have foreground masks but no point labels.

Protocol (``python badja_eval/run.py --benchmark davis-masks``):

* **queries**: ``num_points`` points per clip (seeded by ``seed`` and the clip name), drawn uniformly
  without replacement from the pixel centres of the clip's frame-0 foreground mask **eroded** by
  ``erode_px``, so every query really lies on the object; all queried at frame 0.
* **scored frames**: t >= 1 (after the query) where the frame's mask is non-empty ("present").
* ``in_mask``: of the point-frames predicted visible on present frames, the share whose position (rounded
  to the nearest pixel) lies inside that frame's mask **dilated** by ``dilate_px``.
* ``in_mask_all``: the same share over every present point-frame, whatever the predicted visibility.
* ``visible``: the share of present point-frames predicted visible. The object is in view on present
  frames, so a tracker that hides it loses here (parts of it can be hidden behind the object itself or
  an occluder, so 100 is not the ideal for every clip).
* ``jump`` (lower is better): of the steps t -> t+1 where the point is predicted visible at both frames,
  lies inside the frame at t, and the DIS flow is forward-backward consistent there (error < ``flow_fb_px``),
  the share where the predicted displacement differs from the flow's displacement at the previous
  predicted position by more than ``jump_px`` -- "a point jumping far more than flow says it moved".

Pixel thresholds are given at 854x480 and scale with the clip's long side (``max(H, W) / 854``).

Limits: mask consistency is necessary, not sufficient -- a point can slide over the object, or jump to
another part of it, and stay inside the mask; masks cover every DAVIS object of a clip (e.g. rider and
horse), so a point that moves from one to the other is not caught. ``jump`` trusts DIS: where DIS is wrong
but forward-backward consistent, a correct tracker is counted as jumping; the ``flow`` baseline chains the
same DIS flows (same settings), so its ``jump`` is near 0 by construction -- read it as a check of the
other trackers against flow, not of flow itself.

Hold-out split: :data:`HELD_OUT` (fixed here and in docs/evaluation.md) is for checking defaults, the rest
(``--split tune``) for choosing them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from cosettle.errors import UserError
from cosettle.io.atomic import atomic_path
from tracker.config import FlowTrackerConfig
from tracker.preprocess.flow import consecutive_flows, make_flow_estimator, step_points

from .badja import FrameMaskFiles, read_frame, read_mask
from .report import MEAN, build_rows
from .runner import Task

log = logging.getLogger(__name__)

# The 16 mask-only DAVIS-2016 validation clips in ../shared/data/davis480 (horsejump-high, the clip with
# BADJA labels, is not one of them).
CLIPS = ("blackswan", "bmx-trees", "breakdance", "car-roundabout", "car-shadow", "dance-twirl",
         "drift-chicane", "drift-straight", "goat", "kite-surf", "libby", "motocross-jump",
         "paragliding-launch", "parkour", "scooter-black", "soapbox")
# Held out for checking defaults (never tune on these): an animal, a non-rigid person, a vehicle and a
# small object on water, chosen for variety before any tracker was run on them.
HELD_OUT = ("car-roundabout", "dance-twirl", "goat", "kite-surf")
SPLITS = ("all", "tune", "heldout")
METRICS = ("in_mask", "in_mask_all", "visible", "jump")
REF_LONG_SIDE = 854.0  # the pixel thresholds are stated at 854x480


@dataclass(frozen=True)
class MaskBenchConfig:
    """Settings of the mask-consistency benchmark (pixel values at 854x480, scaled to the clip)."""

    num_points: int = 20
    seed: int = 0
    erode_px: float = 10.0
    dilate_px: float = 15.0
    jump_px: float = 30.0
    flow_fb_px: float = 5.0
    max_frames: int | None = None
    split: str = "all"

    def scaled(self, size_hw: tuple[int, int]) -> "MaskBenchConfig":
        """The pixel thresholds at a clip of size ``size_hw`` (scale = long side / 854)."""
        s = max(size_hw) / REF_LONG_SIDE
        return replace(self, erode_px=self.erode_px * s, dilate_px=self.dilate_px * s,
                       jump_px=self.jump_px * s, flow_fb_px=self.flow_fb_px * s)


# ------------------------------------------------------------------------------------------- data
@dataclass
class MaskClip(FrameMaskFiles):
    """One clip: ``frame_paths``/``mask_paths`` (the first ``max_frames`` when cut) at ``size_hw``."""

    name: str
    frame_paths: list[Path]
    mask_paths: list[Path]
    size_hw: tuple[int, int]

    def uncut(self) -> "MaskClip":
        """The whole clip this one was cut from (itself when not cut)."""
        frames = sorted(self.frame_paths[0].parent.glob("*.jpg"))
        if len(frames) == self.num_frames:
            return self
        masks = [self.mask_paths[0].parent / f"{p.stem}.png" for p in frames]
        return MaskClip(self.name, frames, masks, self.size_hw)

    def content(self) -> str:
        """Identifies the input files (names + sizes) for the caches."""
        text = ";".join(f"{p.name}:{p.stat().st_size}" for p in self.frame_paths + self.mask_paths)
        return hashlib.sha1(text.encode()).hexdigest()


def clip_dir(root: str | Path, name: str) -> Path:
    return Path(root) / "davis480" / name


def available_clips(root: str | Path) -> list[str]:
    """The :data:`CLIPS` that have frames and masks under ``root/davis480``."""
    return [c for c in CLIPS if (clip_dir(root, c) / "JPEGImages").is_dir()
            and (clip_dir(root, c) / "Annotations").is_dir()]


def select_clips(names: list[str], split: str) -> list[str]:
    """``all`` | ``tune`` (not held out) | ``heldout`` (:data:`HELD_OUT`), keeping the order."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}", f"choose from {', '.join(SPLITS)}")
    if split == "all":
        return list(names)
    held = split == "heldout"
    return [n for n in names if (n in HELD_OUT) == held]


def load_clip(root: str | Path, name: str, max_frames: int | None = None) -> MaskClip:
    """Frames ``davis480/<name>/JPEGImages/*.jpg`` with a mask ``Annotations/<stem>.png`` each."""
    d = clip_dir(root, name)
    frames = sorted((d / "JPEGImages").glob("*.jpg"))
    if not frames:
        raise UserError(f"no frames for clip {name!r}: expected {d}/JPEGImages/%05d.jpg",
                        "check --data-root / --sequences")
    if max_frames is not None:
        frames = frames[:max_frames]
    masks = [d / "Annotations" / f"{p.stem}.png" for p in frames]
    for m in masks:
        if not m.is_file():
            raise UserError(f"missing mask file: {m}", f"clip {name!r} needs a mask for every frame")
    if len(frames) < 2:
        raise UserError(f"clip {name!r} has {len(frames)} frame(s)", "need at least 2 (check --max-frames)")
    h, w = read_frame(frames[0]).shape[:2]
    return MaskClip(name, frames, masks, (int(h), int(w)))


# ------------------------------------------------------------------------------------------- masks
def _disk(radius: float) -> np.ndarray:
    r = max(int(round(radius)), 0)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def erode(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary erosion with a disc of ``radius`` px (pixels outside the image count as background)."""
    if round(radius) <= 0:
        return mask.astype(bool)
    return cv2.erode(mask.astype(np.uint8), _disk(radius), borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0


def dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Binary dilation with a disc of ``radius`` px."""
    if round(radius) <= 0:
        return mask.astype(bool)
    return cv2.dilate(mask.astype(np.uint8), _disk(radius), borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0


def clip_rng(seed: int, name: str) -> np.random.Generator:
    """A generator per (seed, clip): adding or dropping clips never changes another clip's queries."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def sample_queries(mask0: np.ndarray, n: int, erode_px: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) queries (t=0, x, y) at pixel centres inside ``mask0`` eroded by ``erode_px``.

    A mask too thin for that erosion is eroded by half as much, repeatedly (logged); points are drawn
    without replacement while the eroded mask has enough pixels."""
    if not mask0.any():
        raise UserError("the frame-0 mask is empty", "pick a clip whose object is visible in its first frame")
    r = float(erode_px)
    region = erode(mask0, r)
    while not region.any():
        r = r / 2 if r >= 1 else 0.0
        log.warning("frame-0 mask empty after erosion; eroding by %.1f px instead", r)
        region = erode(mask0, r)
    ys, xs = np.nonzero(region)
    pick = rng.choice(len(ys), size=n, replace=len(ys) < n)
    return np.stack([np.zeros(n), xs[pick], ys[pick]], axis=1).astype(np.float32)


# ------------------------------------------------------------------------------------------- metrics
def _inside_mask(tracks: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N, T) bool: rounded position of each point-frame inside ``masks[t]`` (outside the image: False)."""
    T, H, W = masks.shape
    xy = np.rint(np.nan_to_num(np.asarray(tracks, np.float64), nan=-1e9)).astype(np.int64)
    x, y = xy[..., 0], xy[..., 1]
    ok = (x >= 0) & (x < W) & (y >= 0) & (y < H)
    t = np.broadcast_to(np.arange(T)[None, :], x.shape)
    out = np.zeros(x.shape, bool)
    out[ok] = masks[t[ok], y[ok], x[ok]]
    return out


def _share(hit: np.ndarray, among: np.ndarray) -> float:
    n = int(among.sum())
    return 100.0 * float((hit & among).sum()) / n if n else math.nan


def mask_scores(tracks: np.ndarray, visible: np.ndarray, masks: np.ndarray, dilate_px: float) -> dict:
    """``in_mask``, ``in_mask_all``, ``visible`` (percentages) and ``count`` (present point-frames) of
    tracks (N, T, 2) x,y / visible (N, T) against masks (T, H, W), queries at frame 0."""
    masks = np.asarray(masks, bool)
    vis = np.asarray(visible, bool)
    present = np.broadcast_to((masks.reshape(len(masks), -1).any(axis=1) & (np.arange(len(masks)) >= 1))[None],
                              vis.shape)
    inside = _inside_mask(tracks, np.stack([dilate(m, dilate_px) for m in masks]))
    return {"in_mask": _share(inside, present & vis), "in_mask_all": _share(inside, present),
            "visible": _share(vis, present), "count": int(present.sum())}


def jump_scores(tracks: np.ndarray, visible: np.ndarray, fwd: np.ndarray, bwd: np.ndarray,
                jump_px: float, flow_fb_px: float) -> dict:
    """``jump`` (percentage) and ``steps`` (steps counted): steps t -> t+1 with the point visible at t
    and t+1, inside the frame at t, and a forward-backward-consistent flow there (``fwd[t]``: t -> t+1,
    ``bwd[t]``: t+1 -> t), where |(p[t+1] - p[t]) - flow_t(p[t])| > ``jump_px``."""
    tracks = np.asarray(tracks, np.float64)
    vis = np.asarray(visible, bool)
    N, T = vis.shape
    jumped = np.zeros((N, T - 1), bool)
    counted = np.zeros((N, T - 1), bool)
    for t in range(T - 1):
        p = np.nan_to_num(tracks[:, t], nan=-1e9).astype(np.float32)
        c1, err, _ = step_points(p, np.asarray(fwd[t], np.float32), np.asarray(bwd[t], np.float32))
        h, w = fwd[t].shape[:2]
        in_frame = (p[:, 0] >= 0) & (p[:, 0] <= w - 1) & (p[:, 1] >= 0) & (p[:, 1] <= h - 1)
        counted[:, t] = vis[:, t] & vis[:, t + 1] & in_frame & (err < flow_fb_px)
        miss = np.linalg.norm(np.nan_to_num(tracks[:, t + 1], nan=1e9) - c1, axis=1)
        jumped[:, t] = miss > jump_px
    return {"jump": _share(jumped, counted), "steps": int(counted.sum())}


# ------------------------------------------------------------------------------------------- flow cache
def flow_settings() -> dict:
    """DIS settings of the project's flow baseline (``tracker.config.FlowTrackerConfig``)."""
    c = FlowTrackerConfig()
    return {"method": "dis", "dis_preset": c.dis_preset, "dis_finest_scale": c.dis_finest_scale}


def _flow_path(cache_dir: str | Path, clip: MaskClip, est) -> Path:
    key = hashlib.sha1(json.dumps({"clip": clip.name, "content": clip.content(), "flow": est.cache_fields(),
                                   "v": 1}, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{clip.name}-{key}.npz"


def _read_flows(path: Path, pairs: int):
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            fwd, bwd = z["fwd"], z["bwd"]
    except Exception as err:  # a damaged entry is recomputed, never fatal
        log.warning("ignoring unreadable flow cache %s (%s)", path, err)
        return None
    return (fwd[:pairs], bwd[:pairs]) if len(fwd) >= pairs else None


def cached_flows(cache_dir: str | Path, clip: MaskClip, frames: np.ndarray | None = None,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Forward/backward consecutive DIS flows of ``clip`` (float16), computed once with
    ``tracker.preprocess.flow`` and stored atomically in ``<cache_dir>/<clip>-<key>.npz``. A cut clip
    (``--max-frames``) reuses the first pairs of its whole clip's entry when that exists (consecutive
    flows do not depend on the other frames)."""
    s = flow_settings()
    est = make_flow_estimator(s["method"], s["dis_preset"], dis_finest_scale=s["dis_finest_scale"])
    path = _flow_path(cache_dir, clip, est)
    pairs = clip.num_frames - 1
    for cand in dict.fromkeys([path, _flow_path(cache_dir, clip.uncut(), est)]):
        got = _read_flows(cand, pairs)
        if got is not None:
            return got
    fwd, bwd = consecutive_flows(clip.load_frames() if frames is None else frames, est, progress=progress)
    fwd, bwd = fwd.astype(np.float16), bwd.astype(np.float16)
    with atomic_path(path) as tmp:
        np.savez(tmp, fwd=fwd, bwd=bwd)  # uncompressed: flows barely compress, loading stays fast
    return fwd, bwd


class ClipScorer:
    """Scores predictions of one clip; loads its masks and flows on first use. Scorers sharing one
    ``slot`` dict keep only the last clip's data in memory (a 100-frame clip's flows are ~330 MB)."""

    def __init__(self, clip: MaskClip, cfg: MaskBenchConfig, flow_dir: str | Path, progress: bool = False,
                 slot: dict | None = None):
        self.clip, self.cfg, self.flow_dir, self.progress = clip, cfg.scaled(clip.size_hw), flow_dir, progress
        self._slot = {} if slot is None else slot

    def __call__(self, pred) -> dict:
        if self._slot.get("clip") is not self.clip:
            self._slot.clear()
            data = (self.clip.load_masks(), *cached_flows(self.flow_dir, self.clip, progress=self.progress))
            self._slot.update(clip=self.clip, data=data)
        masks, fwd, bwd = self._slot["data"]
        out = mask_scores(pred.tracks, pred.visible, masks, self.cfg.dilate_px)
        out.update(jump_scores(pred.tracks, pred.visible, fwd, bwd, self.cfg.jump_px, self.cfg.flow_fb_px))
        return out


# ------------------------------------------------------------------------------------------- benchmark
def bench_config(cfg) -> MaskBenchConfig:
    """The benchmark settings from the CLI's ``EvalConfig``."""
    if cfg.num_points < 1:
        raise UserError(f"--num-points must be >= 1, got {cfg.num_points}")
    if cfg.max_frames is not None and cfg.max_frames < 2:
        raise UserError(f"--max-frames must be >= 2, got {cfg.max_frames}")
    return MaskBenchConfig(num_points=cfg.num_points, seed=cfg.seed, max_frames=cfg.max_frames, split=cfg.split)


def chosen_clips(root: Path, sequences, split: str, available=None, select=None) -> list[str]:
    """The clips of ``split`` among the named ``sequences`` (every available clip when none is named); a named
    clip without frames is a UserError. ``available(root)`` / ``select(names, split)``: the benchmark's own clip
    list and split (default this module's; davis-vos passes its 18 clips and its split)."""
    available = available or available_clips
    select = select or select_clips
    if sequences:
        missing = [s for s in sequences if not (clip_dir(root, s) / "JPEGImages").is_dir()]
        if missing:
            raise UserError(f"clips {missing} not under {root / 'davis480'}",
                            f"available: {', '.join(available(root))}")
        return select(list(sequences), split)
    return select(available(root), split)


def build_tasks(cfg, progress: bool = False):
    """(tasks, scorers, groups) for ``badja_eval/run.py``: one task per clip of the split."""
    bc = bench_config(cfg)
    root = Path(cfg.data_root)
    names = chosen_clips(root, cfg.sequences, bc.split)
    if not names:
        raise UserError(f"no DAVIS mask clips of split {bc.split!r} under {root / 'davis480'}",
                        f"expected davis480/<clip>/{{JPEGImages,Annotations}} for {', '.join(CLIPS[:3])}, ...")
    tasks, scorers = [], {}
    slot: dict = {}  # one clip's masks + flows in memory at a time, shared by the scorers
    flow_dir = Path(getattr(cfg, "flow_cache", None) or Path(cfg.out) / "flow")
    for name in names:
        clip = load_clip(root, name, bc.max_frames)
        q = sample_queries(_read_mask0(clip), bc.num_points, bc.scaled(clip.size_hw).erode_px, clip_rng(bc.seed, name))
        tasks.append(Task(name, lambda c=clip: (c.load_frames(), c.load_masks()), q,
                          (clip.num_frames, *clip.size_hw), clip.content()))
        scorers[name] = ClipScorer(clip, bc, flow_dir, progress, slot)
    return tasks, scorers, {n: n for n in names}


def _read_mask0(clip: MaskClip) -> np.ndarray:
    return read_mask(clip.mask_paths[0], clip.size_hw)


def protocol(cfg, n_clips: int) -> str:
    """One line stating how the numbers were made."""
    bc = bench_config(cfg)
    cut = f"first {bc.max_frames} frames" if bc.max_frames else "whole clips"
    return (f"DAVIS masks ({bc.split} split, {cut}): {bc.num_points} points/clip (seed {bc.seed}) in the frame-0 "
            f"mask eroded {bc.erode_px:g} px, queried at frame 0; frames t>=1 with a non-empty mask; in_mask = "
            f"inside the mask dilated {bc.dilate_px:g} px (visible / all point-frames); jump = visible steps with "
            f"|move - DIS flow| > {bc.jump_px:g} px where flow is fwd-bwd consistent (< {bc.flow_fb_px:g} px), "
            f"lower is better; px at 854x480; mean over {n_clips} clip(s)")


def split_mean_rows(scores: dict, sequences: list[str], methods, metrics) -> list[dict]:
    """Mean rows ``mean[tune]`` and ``mean[heldout]`` (simple means over each split's clips present)."""
    out = []
    for split in ("tune", "heldout"):
        part = select_clips(list(sequences), split)
        if not part or len(part) == len(sequences):
            continue
        for r in build_rows(scores, part, methods, metrics):
            if r["sequence"] == MEAN:
                out.append({**r, "sequence": f"{MEAN}[{split}]"})
    return out


__all__ = ["CLIPS", "HELD_OUT", "SPLITS", "METRICS", "MaskBenchConfig", "MaskClip", "available_clips",
           "select_clips", "load_clip", "erode", "dilate", "sample_queries", "mask_scores", "jump_scores",
           "cached_flows", "build_tasks", "protocol", "split_mean_rows"]
