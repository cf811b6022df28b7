"""Track results and their files: ``tracks.npz``, ``tracks.json``, ``tracks.csv`` (overlays: ``overlay.py``).

Layout (point-major, like TAP-Vid and DINO-Tracker):
    tracks      (N, T, 2) float32, (x, y) in original-video pixels, integer = pixel centre
    visible     (N, T) bool, **True = visible** (TAP-Vid's ``occluded`` is the negation)
    confidence  (N, T) float32 in [0, 1], a continuous score; ``visible`` is its decision
    queries     (N, 3) float32, (t, x, y)
    redetected  (N, T) bool or None: where the tracker itself reports a re-detection (``dino-flow``: a verified
                jump to the head's match); None for trackers that report none (the overlay marks only these)
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_path, write_json, write_text


@dataclass
class TrackResult:
    tracks: np.ndarray
    visible: np.ndarray
    confidence: np.ndarray
    queries: np.ndarray
    names: list[str] = field(default_factory=list)
    redetected: np.ndarray | None = None

    def __post_init__(self):
        self.tracks = np.asarray(self.tracks, dtype=np.float32)
        n, t = self.tracks.shape[:2]
        self.visible = np.asarray(self.visible, dtype=bool).reshape(n, t)
        self.confidence = np.asarray(self.confidence, dtype=np.float32).reshape(n, t)
        self.queries = np.asarray(self.queries, dtype=np.float32).reshape(n, 3)
        if not self.names:
            self.names = [f"p{i}" for i in range(n)]
        if self.redetected is not None:
            self.redetected = np.asarray(self.redetected, dtype=bool).reshape(n, t)

    @property
    def num_points(self) -> int:
        return self.tracks.shape[0]

    @property
    def num_frames(self) -> int:
        return self.tracks.shape[1]


def save_tracks(out_dir: str | os.PathLike, result: TrackResult, fps: float, size_hw: tuple[int, int],
                metadata: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write npz/json/csv atomically into ``out_dir``; returns {kind: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(metadata or {})
    meta.update({"layout": "tracks (N,T,2) x,y original pixels, pixel-centre convention; "
                           "visible (N,T) True=visible; queries (N,3) t,x,y"})
    paths = {"npz": out / "tracks.npz", "json": out / "tracks.json", "csv": out / "tracks.csv"}
    with atomic_path(paths["npz"]) as tmp:
        np.savez_compressed(tmp, tracks=result.tracks, visible=result.visible,
                            confidence=result.confidence, queries=result.queries,
                            names=np.array(result.names), fps=np.float32(fps),
                            size_hw=np.array(size_hw, dtype=np.int32),
                            metadata=np.array(json.dumps(meta, default=str)),
                            **({} if result.redetected is None else {"redetected": result.redetected}))
    write_json(paths["json"], {
        "fps": fps, "height": size_hw[0], "width": size_hw[1], "metadata": meta,
        "points": [{"name": result.names[i],
                    "query": {"frame": int(result.queries[i, 0]), "x": float(result.queries[i, 1]),
                              "y": float(result.queries[i, 2])},
                    "x": np.round(result.tracks[i, :, 0], 3).tolist(),
                    "y": np.round(result.tracks[i, :, 1], 3).tolist(),
                    "visible": result.visible[i].tolist(),
                    "confidence": np.round(result.confidence[i], 4).tolist()}
                   for i in range(result.num_points)]})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["point", "name", "frame", "x", "y", "visible", "confidence"])
    for i in range(result.num_points):
        for t in range(result.num_frames):
            w.writerow([i, result.names[i], t, f"{result.tracks[i, t, 0]:.3f}",
                        f"{result.tracks[i, t, 1]:.3f}", int(result.visible[i, t]),
                        f"{result.confidence[i, t]:.4f}"])
    write_text(paths["csv"], buf.getvalue())
    return paths


def load_tracks(path: str | os.PathLike) -> tuple[TrackResult, dict[str, Any]]:
    with np.load(path, allow_pickle=False) as z:
        res = TrackResult(z["tracks"], z["visible"], z["confidence"], z["queries"],
                          [str(n) for n in z["names"]], z["redetected"] if "redetected" in z else None)
        info = {"fps": float(z["fps"]), "size_hw": tuple(int(v) for v in z["size_hw"]),
                "metadata": json.loads(str(z["metadata"]))}
    return res, info
