"""Query points: JSON, CSV or a grid. Internal layout: ``(N, 3)`` float array of **(t, x, y)**.

Coordinates are original-video pixels with integer = pixel centre: the top-left pixel's centre is
(0, 0) and a W x H frame spans x in [-0.5, W-0.5], y in [-0.5, H-0.5]. ``t`` is a 0-based frame index
in the video as read (after ``--frame-stride``/``--max-frames``).

JSON: ``{"points": [{"frame": 0, "x": 120.5, "y": 80, "name": "nose"}, ...]}`` (``name`` optional)
CSV:  header ``frame,x,y[,name]`` then one row per point.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .atomic import write_json


@dataclass
class Queries:
    txy: np.ndarray  # (N, 3) float64: frame, x, y
    names: list[str]

    def __len__(self) -> int:
        return len(self.txy)

    @property
    def frames(self) -> np.ndarray:
        return self.txy[:, 0].astype(int)

    @property
    def xy(self) -> np.ndarray:
        return self.txy[:, 1:3]


def as_queries(queries) -> Queries:
    """The one form trackers take: a ``Queries`` as it is, an (N, 3) array-like of (t, x, y) as unnamed queries
    (``names`` empty: ``TrackResult`` then names them p0, p1, ...). Shapes are the tracker's to check."""
    if isinstance(queries, Queries):
        return queries
    return Queries(np.asarray(queries, dtype=np.float64), [])


def load_queries(path: str | os.PathLike, num_frames: int, height: int, width: int,
                 frame_note: str | None = None) -> Queries:
    """Read a JSON or CSV points file and validate it against the video. ``frame_note``: ``"why -- fix"`` for
    a frame beyond the clip as read (e.g. ``--max-frames`` cut it), said instead of the generic fix."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"points file not found: {path}", "check the path passed to --points")
    if not path.is_file():
        raise UserError(f"--points {path} is a folder, not a file", "pass a .json or .csv points file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        rows = _read_json(path)
    elif suffix == ".csv":
        rows = _read_csv(path)
    else:
        raise UserError(f"unsupported points format {path.suffix!r}: {path}", "use .json or .csv")
    if not rows:
        raise UserError(f"points file {path} contains no points", "add at least one point")
    txy = np.array([[r[0], r[1], r[2]] for r in rows], dtype=np.float64)
    names = [r[3] if r[3] else f"p{i}" for i, r in enumerate(rows)]
    queries = Queries(txy, names)
    validate_queries(queries, num_frames, height, width, source=str(path), frame_note=frame_note)
    return queries


def _read_json(path: Path) -> list[tuple]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a byte-order mark is accepted
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"malformed JSON in {path}: {err}",
                        'expected {"points": [{"frame": t, "x": x, "y": y}, ...]}') from None
    except RecursionError:
        raise UserError(f"{path} is nested too deeply to be a points file",
                        'expected {"points": [{"frame": t, "x": x, "y": y}, ...]}') from None
    pts = data.get("points") if isinstance(data, dict) else data
    if not isinstance(pts, list):
        raise UserError(f"{path} has no 'points' list", 'expected {"points": [{"frame": t, "x": x, "y": y}]}')
    rows = []
    for i, p in enumerate(pts):
        if not isinstance(p, dict) or not {"frame", "x", "y"} <= set(p):
            raise UserError(f"point {i} in {path} must be an object with frame, x, y: got {p!r}"[:200],
                            'e.g. {"frame": 0, "x": 10.5, "y": 20}')
        rows.append((_num(p["frame"], path, i, "frame"), _num(p["x"], path, i, "x"),
                     _num(p["y"], path, i, "y"), str(p.get("name", "") or "")))
    return rows


def _read_csv(path: Path) -> list[tuple]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:  # spreadsheets save a byte-order mark
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in (reader.fieldnames or [])]
            if not {"frame", "x", "y"} <= set(fields):
                raise UserError(f"{path} needs a header 'frame,x,y[,name]', got {reader.fieldnames}",
                                "add the header line")
            rows = []
            for i, row in enumerate(reader):
                row = {k.strip().lower(): v for k, v in row.items() if k}
                rows.append((_num(row["frame"], path, i, "frame"), _num(row["x"], path, i, "x"),
                             _num(row["y"], path, i, "y"), (row.get("name") or "").strip()))
            return rows
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text CSV file", "save it as UTF-8 CSV") from None


def _num(value, path, i, field) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"point {i} in {path}: {field}={value!r} is not a number", "fix the value") from None
    if not np.isfinite(v):
        raise UserError(f"point {i} in {path}: {field} is not finite", "fix the value")
    return v


def validate_queries(q: Queries, num_frames: int, height: int, width: int, source: str = "queries",
                     frame_note: str | None = None) -> None:
    for i, (t, x, y) in enumerate(q.txy):
        if t != int(t) or not 0 <= t < num_frames:
            msg = f"point {i} ({q.names[i]}) in {source}: frame {t:g} is out of range [0, {num_frames - 1}]"
            if frame_note and t == int(t) and t >= num_frames:
                why, _, fix = frame_note.partition(" -- ")
                raise UserError(f"{msg}: {why}", fix or None)
            raise UserError(msg, "use a 0-based frame index of the video as read")
        if not (-0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5):
            raise UserError(f"point {i} ({q.names[i]}) in {source}: (x={x:g}, y={y:g}) is outside the "
                            f"{height}x{width} (HxW) frame", "coordinates are pixels of the original video")


def grid_queries(height: int, width: int, grid_size: int, frame: int = 0,
                 mask: np.ndarray | None = None) -> Queries:
    """A ``grid_size x grid_size`` lattice of queries at ``frame`` (cell centres of an even split),
    optionally kept only where ``mask`` (H, W, non-zero = keep) is set."""
    if grid_size < 1:
        raise UserError(f"grid size must be >= 1, got {grid_size}")
    xs = (np.arange(grid_size) + 0.5) * width / grid_size - 0.5
    ys = (np.arange(grid_size) + 0.5) * height / grid_size - 0.5
    gx, gy = np.meshgrid(xs, ys)
    xy = np.stack([gx.ravel(), gy.ravel()], axis=1)
    if mask is not None:
        m = np.asarray(mask)
        if m.shape[:2] != (height, width):
            raise UserError(f"grid mask is {m.shape[0]}x{m.shape[1]}, video is {height}x{width} (HxW)",
                            "use a mask of the video's size")
        keep = m[np.clip(np.round(xy[:, 1]).astype(int), 0, height - 1),
                 np.clip(np.round(xy[:, 0]).astype(int), 0, width - 1)] > 0
        xy = xy[keep.reshape(-1) if keep.ndim == 1 else keep[..., 0]]
        if len(xy) == 0:
            raise UserError("grid mask removes every grid point", "use a larger mask or a denser grid")
    txy = np.concatenate([np.full((len(xy), 1), float(frame)), xy], axis=1)
    return Queries(txy, [f"g{i}" for i in range(len(xy))])


def save_queries_json(path: str | os.PathLike, q: Queries) -> None:
    write_json(path, {"points": [{"frame": int(t), "x": float(x), "y": float(y), "name": n}
                                 for (t, x, y), n in zip(q.txy, q.names)]})
