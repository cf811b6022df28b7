"""The overlay: what a person looks at first to judge a run (``overlay.mp4`` and the ``overlay.png`` still).

Why each rule (from users reading the old overlay wrongly):

* a re-detection moves a point across the frame in one step; a trail segment drawn across that jump
  reads as motion that never happened. A step longer than the point's own motion supports
  (``trail_breaks``) breaks the trail;
* the re-detection mark (an ``x`` in a square, for a few frames) sits only where the tracker itself
  reports a re-detection (``TrackResult.redetected``: ``dino-flow``'s verified re-detections). It once
  marked every large step, so correctly followed fast points, and ``flow`` runs that re-detect nothing,
  were marked; trackers that report none (``flow``, ``dino``, ...) show no mark and no key for it;
* points carry their names from the points file (a legend with colours, labels beside the markers
  when there are few points); more points than ``MAX_LEGEND`` get one legend line saying how many and
  that their colours repeat (never a list of the first 24 that reads as if it were all);
* visible points are filled discs; occluded or uncertain ones (``visible`` False, or confidence < 0.5)
  are hollow rings, so they stand out at a glance;
* marker, line and text sizes scale with the frame (a 4-px disc vanished at 854x480);
* styles: ``trails`` (named points, fading trails, the legend) and ``rainbow`` (DINO-Tracker's picture:
  colours by query position, so a grid becomes a rainbow and a swapped point shows as a wrong colour).
"""
from __future__ import annotations

import colorsys
import os
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np

from .atomic import atomic_path
from .video import write_video

STYLES = ("trails", "rainbow")
JUMP_FACTOR = 4.0      # a step > 4x the point's median step ...
JUMP_FLOOR = 0.04      # ... and > 4 % of the frame's short side is a jump, not motion
REDETECT_FRAMES = 4    # frames the re-detection mark stays
MAX_LEGEND = 24        # legend rows (more points: no legend, the colours still follow the style)
MAX_LABELS = 12        # labels beside markers up to this many points


def trail_breaks(tracks: np.ndarray, size_hw: tuple[int, int], factor: float = JUMP_FACTOR,
                 floor: float = JUMP_FLOOR) -> np.ndarray:
    """(N, T) bool: True at t when the step t-1 -> t is a jump the point's motion does not support
    (longer than ``factor`` x its median step and than ``floor`` x the frame's short side)."""
    tr = np.asarray(tracks, dtype=np.float64)
    n, t = tr.shape[:2]
    out = np.zeros((n, t), bool)
    if t < 2:
        return out
    step = np.linalg.norm(np.diff(tr, axis=1), axis=-1)  # (N, T-1), NaN where a position is missing
    typical = np.nanmedian(np.where(np.isfinite(step), step, np.nan), axis=1, keepdims=True) if n else step
    typical = np.nan_to_num(typical, nan=0.0)
    thresh = np.maximum(factor * typical, floor * min(size_hw))
    with np.errstate(invalid="ignore"):
        out[:, 1:] = np.isfinite(step) & (step > thresh)
    return out


def point_colors(n: int) -> np.ndarray:
    """Distinct RGB colours (HSV wheel, golden-ratio steps), deterministic."""
    return (np.array([colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 1.0) for i in range(max(n, 1))])
            * 255).astype(np.uint8)[:n]


def style_colors(result, style: str, size_hw: tuple[int, int]) -> np.ndarray:
    """(N, 3) uint8 RGB. trails: distinct hues by point index; rainbow: hue by query position (rows of
    a grid run red -> violet top to bottom, shifting along each row)."""
    n = result.num_points
    if style != "rainbow" or n == 0:
        return point_colors(n)
    h, w = size_hw
    q = np.asarray(result.queries, dtype=np.float64)
    key = np.clip(q[:, 2] / max(h, 1), 0, 1) * 0.85 + np.clip(q[:, 1] / max(w, 1), 0, 1) * 0.15
    rank = np.argsort(np.argsort(key, kind="stable"), kind="stable") / max(n - 1, 1)
    return (np.array([colorsys.hsv_to_rgb(0.8 * r, 1.0, 1.0) for r in rank]) * 255).astype(np.uint8)


def _sizes(h: int, w: int, n: int, style: str) -> dict:
    short = min(h, w)
    r = max(3, round(short / 80)) if style == "trails" or n <= 50 else max(2, round(short / 140))
    return {"r": r, "line": max(1, round(r / 3)), "font": max(0.35, short / 900), "text": max(1, round(short / 500))}


def draw_overlay_frames(video, result, trail: int = 10, style: str = "trails", radius: int | None = None,
                        only=None):
    """Yield RGB frames with the tracks drawn (see the module docstring); ``only``: just these frames."""
    if style not in STYLES:
        raise ValueError(f"unknown overlay style {style!r}")
    n_frames = len(video)
    first = np.asarray(video[0])
    h, w = first.shape[:2]
    n = result.num_points
    colors = [tuple(int(v) for v in c) for c in style_colors(result, style, (h, w))]
    sz = _sizes(h, w, n, style)
    if radius:
        sz["r"] = radius
    jumps = trail_breaks(result.tracks, (h, w))
    marks = redetections(result)
    shown = result.visible & (result.confidence >= 0.5)
    names = list(result.names) if result.names else [f"p{i}" for i in range(n)]
    for t in range(n_frames):
        if only is not None and t not in only:
            continue
        frame = np.ascontiguousarray(np.asarray(video[t]).copy())
        if style == "trails" and MAX_LABELS < n <= MAX_LEGEND:  # names not beside the markers: a legend
            _legend(frame, names, colors, sz, redetect_key=result.redetected is not None)  # first: no
            # marker hides under it
        for i in range(n):
            c = colors[i]
            for k in range(max(0, t - trail), t):
                if jumps[i, k + 1]:
                    continue  # the trail breaks across a jump
                p0, p1 = result.tracks[i, k], result.tracks[i, k + 1]
                if np.isfinite(p0).all() and np.isfinite(p1).all():
                    alpha = (k - t + trail + 1) / (trail + 1)
                    col = tuple(int(v * alpha) for v in c)
                    cv2.line(frame, _pt(p0), _pt(p1), col, sz["line"], cv2.LINE_AA)
        for i in range(n):
            p = result.tracks[i, t]
            if not np.isfinite(p).all():
                continue
            c, r = colors[i], sz["r"]
            if shown[i, t]:
                cv2.circle(frame, _pt(p), r, (0, 0, 0), -1, cv2.LINE_AA)  # dark rim: visible on any colour
                cv2.circle(frame, _pt(p), max(1, r - 1), c, -1, cv2.LINE_AA)
            else:
                cv2.circle(frame, _pt(p), r, c, max(1, r // 3), cv2.LINE_AA)
            if marks[i, max(0, t - REDETECT_FRAMES + 1):t + 1].any():  # reported re-detection in the last frames:
                # a square with an x around the new position
                x, y = _pt(p)
                e = r + 2 * sz["line"] + 1
                cv2.rectangle(frame, (x - e, y - e), (x + e, y + e), c, sz["line"], cv2.LINE_AA)
                cv2.line(frame, (x - e, y - e), (x + e, y + e), c, sz["line"], cv2.LINE_AA)
                cv2.line(frame, (x - e, y + e), (x + e, y - e), c, sz["line"], cv2.LINE_AA)
            if style == "trails" and n <= MAX_LABELS:
                _label(frame, names[i], p, c, sz)
        _text(frame, f"frame {t}", (4, h - 6), (255, 255, 255), sz)
        yield frame


def _line_h(sz) -> int:
    text_h = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, sz["font"], sz["text"])[0][1]
    return max(2 * sz["r"] + 4, int(text_h * 1.8))


def redetections(result) -> np.ndarray:
    """(N, T) bool: where the tracker reported a re-detection (all False when it reports none)."""
    rep = getattr(result, "redetected", None)
    return np.zeros(result.tracks.shape[:2], bool) if rep is None else np.asarray(rep, bool)


def legend_note(n: int) -> str | None:
    """The legend's one line for more points than it lists (a grid), else None."""
    if n <= MAX_LEGEND:
        return None
    return f"{n} points, not listed (colours repeat; names in tracks.csv; --overlay-style rainbow for grids)"


def _legend(frame, names, colors, sz, darken: bool = True, note: str | None = None,
            redetect_key: bool = True) -> None:
    """Top-left box: one row per point (colour + name), or one ``note`` row instead of a list, and the
    marker key (visible, occluded, and re-detected where the tracker reports re-detections)."""
    rows = [] if note else [(c, nm) for c, nm in zip(colors, names)][:MAX_LEGEND]
    keys = ("visible", "occluded", "re-detected")[:3 if redetect_key else 2]
    r, font, th = sz["r"], sz["font"], sz["text"]
    line_h = _line_h(sz)
    tw = [cv2.getTextSize(k, cv2.FONT_HERSHEY_SIMPLEX, font, th)[0][0] for k in keys]
    key_w = sum(tw) + len(keys) * (3 * r + 10)
    texts = [nm for _, nm in rows] + ([note] if note else [])
    width = max([key_w] + [cv2.getTextSize(nm, cv2.FONT_HERSHEY_SIMPLEX, font, th)[0][0] + 3 * r + 12
                           for nm in texts]) + 8
    h, w = frame.shape[:2]
    n_rows = len(rows) + (1 if note else 0)
    x1, y1 = min(width, w - 1), min(line_h * (n_rows + 1) + 6, h - 1)
    if darken:
        roi = frame[:y1, :x1]
        roi[:] = (roi * 0.45).astype(np.uint8)  # darkened box keeps the video visible behind it
    white = (255, 255, 255)
    for k, (c, nm) in enumerate(rows):
        cy = 3 + line_h * k + line_h // 2
        cv2.circle(frame, (6 + r, cy), r, c, -1, cv2.LINE_AA)
        _text(frame, nm, (10 + 2 * r, cy + line_h // 4), white, sz)
    if note:
        _text(frame, note, (6, 3 + line_h * len(rows) + line_h // 2 + line_h // 4), white, sz)
    cy, x = 3 + line_h * n_rows + line_h // 2, 6
    for k, label in enumerate(keys):
        cx = x + r
        if k == 0:
            cv2.circle(frame, (cx, cy), r, white, -1, cv2.LINE_AA)
        elif k == 1:
            cv2.circle(frame, (cx, cy), r, white, max(1, r // 3), cv2.LINE_AA)
        else:
            cv2.rectangle(frame, (cx - r, cy - r), (cx + r, cy + r), white, sz["line"], cv2.LINE_AA)
            cv2.line(frame, (cx - r, cy - r), (cx + r, cy + r), white, sz["line"], cv2.LINE_AA)
            cv2.line(frame, (cx - r, cy + r), (cx + r, cy - r), white, sz["line"], cv2.LINE_AA)
        _text(frame, label, (cx + r + 4, cy + line_h // 4), white, sz)
        x = cx + r + 4 + tw[k] + 10


def _label(frame, text: str, p, color, sz) -> None:
    """A name beside its marker: right of it, or left when it would leave the frame."""
    r = sz["r"]
    tw, th = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, sz["font"], sz["text"])[0]
    h, w = frame.shape[:2]
    x = int(p[0]) + r + 2 if int(p[0]) + r + 2 + tw < w else int(p[0]) - r - 2 - tw
    y = int(p[1]) - r - 2 if int(p[1]) - r - 2 - th > 0 else int(p[1]) + r + 2 + th
    _text(frame, text, (x, y), color, sz)


def _text(frame, text: str, org, color, sz) -> None:
    cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, sz["font"], (0, 0, 0), sz["text"] + 2, cv2.LINE_AA)
    cv2.putText(frame, text, org, cv2.FONT_HERSHEY_SIMPLEX, sz["font"], color, sz["text"], cv2.LINE_AA)


def _pt(p) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def still_indices(num_frames: int) -> list[int]:
    """First, middle and last frame (fewer for a 1- or 2-frame clip)."""
    return sorted({0, (num_frames - 1) // 2, num_frames - 1})


def overlay_still(video, result, style: str = "trails", trail: int = 10) -> np.ndarray:
    """First | middle | last overlay frame side by side, (H, k*W + gaps, 3) uint8; in the ``trails``
    style a legend strip below (every name up to ``MAX_LEGEND`` and the marker key)."""
    idx = still_indices(len(video))
    frames = list(draw_overlay_frames(video, result, trail, style, only=set(idx)))
    gap = np.full((frames[0].shape[0], 4, 3), 255, np.uint8)
    parts = []
    for k, f in enumerate(frames):
        parts += ([gap] if k else []) + [f]
    still = np.concatenate(parts, axis=1)
    if style != "trails":
        return still
    h, w = frames[0].shape[:2]
    n = result.num_points
    sz = _sizes(h, w, n, style)
    names = list(result.names) if result.names else [f"p{i}" for i in range(n)]
    colors = [tuple(int(v) for v in c) for c in style_colors(result, style, (h, w))]
    note = legend_note(n)
    if note:  # more points than a legend can name: one line saying so, and the marker key
        strip = np.zeros((_line_h(sz) * 2 + 8, still.shape[1], 3), np.uint8)
        _legend(strip, [], [], sz, darken=False, note=note, redetect_key=result.redetected is not None)
        return np.concatenate([still, strip], axis=0)
    cols = max(1, still.shape[1] // max(1, 14 * _line_h(sz)))  # names in columns across the strip
    per_col = -(-n // cols) if n else 0
    strip = np.zeros((_line_h(sz) * (per_col + 1) + 8, still.shape[1], 3), np.uint8)
    for c in range(cols):
        sel = list(range(c * per_col, min(n, (c + 1) * per_col)))
        if not sel and c:
            break
        sub = strip[:, c * (still.shape[1] // cols):(c + 1) * (still.shape[1] // cols)]
        sub_img = np.ascontiguousarray(sub)
        _legend(sub_img, [names[i] for i in sel], [colors[i] for i in sel], sz, darken=False,
                redetect_key=result.redetected is not None)
        if c:  # the marker key once, in the first column
            sub_img[_line_h(sz) * len(sel) + 3:] = 0
        sub[:] = sub_img
    return np.concatenate([still, strip], axis=0)


def write_overlay(path: str | os.PathLike, video, result, fps: float, trail: int = 10,
                  style: str = "trails") -> Path:
    return write_video(path, draw_overlay_frames(video, result, trail, style), fps)


def write_still(path: str | os.PathLike, video, result, style: str = "trails") -> Path:

    path = Path(path)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, overlay_still(video, result, style))
    return path
