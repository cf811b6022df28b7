"""A built-in demo clip, generated procedurally (the repo ships no third-party video).

A textured background pans slowly while two textured discs move on smooth paths; the ground-truth
track of every query point is known exactly, so the demo also reports its own error.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .io.atomic import write_json
from .io.video import write_video


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth random colour texture (sum of blurred noise octaves), uint8 (h, w, 3)."""
    img = np.zeros((h, w, 3), np.float32)
    for scale, amp in ((4, 0.25), (12, 0.6), (32, 1.0)):
        small = rng.random((max(2, h // scale), max(2, w // scale), 3)).astype(np.float32)
        img += amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img -= img.min()
    img /= max(img.max(), 1e-6)
    return (img * 255).astype(np.uint8)


def render_demo(num_frames: int = 24, height: int = 192, width: int = 256, seed: int = 0):
    """Return (frames (T,H,W,3) uint8, queries (N,3) t,x,y, gt_tracks (N,T,2))."""
    rng = np.random.default_rng(seed)
    bg = _texture(rng, height + 64, width + 64)
    objs = []
    for k in range(2):
        r = int(min(height, width) * (0.16 + 0.04 * k))
        tex = _texture(rng, 2 * r + 1, 2 * r + 1)
        objs.append((r, tex))
    frames, centres = [], []
    for t in range(num_frames):
        u = t / max(num_frames - 1, 1)
        ox, oy = int(round(24 * u)), int(round(12 * u))  # background pan
        frame = bg[oy:oy + height, ox:ox + width].copy()
        cs = []
        for k, (r, tex) in enumerate(objs):
            cx = width * (0.3 + 0.4 * u) if k == 0 else width * (0.72 - 0.25 * u)
            cy = height * (0.35 + 0.15 * np.sin(2 * np.pi * u)) if k == 0 else height * (0.65 - 0.1 * u)
            cx, cy = int(round(cx)), int(round(cy))
            yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
            inside = xx ** 2 + yy ** 2 <= r * r
            y0, x0 = cy - r, cx - r
            ys, xs = yy[inside] + cy, xx[inside] + cx
            ok = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
            frame[ys[ok], xs[ok]] = tex[(yy[inside] + r)[ok], (xx[inside] + r)[ok]]
            cs.append((cx, cy, ox, oy))
            del y0, x0
        frames.append(frame)
        centres.append(cs)
    # queries at frame 0: 2 points on each disc (relative offsets), 2 on the background
    rel = [(0, -0.4, -0.3), (0, 0.35, 0.3), (1, -0.3, 0.4), (1, 0.4, -0.2)]
    tracks, queries = [], []
    for k, dx, dy in rel:
        r = objs[k][0]
        pts = [(centres[t][k][0] + dx * r, centres[t][k][1] + dy * r) for t in range(num_frames)]
        tracks.append(pts)
    for bx, by in ((0.1, 0.1), (0.9, 0.12)):
        x0, y0 = bx * width, by * height
        pts = [(x0 - centres[t][0][2], y0 - centres[t][0][3]) for t in range(num_frames)]
        tracks.append(pts)
    gt = np.array(tracks, dtype=np.float32)
    queries = np.concatenate([np.zeros((len(gt), 1), np.float32), gt[:, 0]], axis=1)
    return np.stack(frames), queries, gt


def make_demo_clip(folder: str | Path, num_frames: int = 24, height: int = 192, width: int = 256,
                   seed: int = 0) -> tuple[Path, Path, np.ndarray]:
    """Write ``demo.mp4`` and ``demo_points.json`` into ``folder``; returns (video, points, gt)."""
    folder = Path(folder)
    frames, queries, gt = render_demo(num_frames, height, width, seed)
    video = write_video(folder / "demo.mp4", frames, fps=12.0)
    names = ["disc1_a", "disc1_b", "disc2_a", "disc2_b", "bg_left", "bg_right"]
    pts = folder / "demo_points.json"
    write_json(pts, {"points": [{"frame": 0, "x": float(x), "y": float(y), "name": n}
                                for (_, x, y), n in zip(queries, names)]})
    write_json(folder / "demo_gt.json", {"tracks_xy": gt.tolist(), "names": names})
    return video, pts, gt
