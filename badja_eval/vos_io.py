"""Files of the DAVIS video-object-segmentation benchmark: indexed PNG masks in the DAVIS layout (DAVIS palette),
per-sequence CSV/JSON and a contact sheet (prediction over image).

Layout under the run's ``--out`` (one results root per backend, readable by the official DAVIS evaluation):

    masks/<backend>/<sequence>/00000.png ...     predicted masks, indexed PNG, DAVIS palette (0 = background)
    sequences/<backend>/<sequence>.json / .csv   per-object J, F per frame and their statistics
    contact/<backend>/<sequence>.png             a few frames: prediction over the image, GT outline

A sequence's masks are written into a staging folder that is renamed into place when complete, and its JSON
is written last: a sequence counts as done when its JSON exists with the run's fingerprint (a killed run
resumes at the first sequence without one).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cosettle.io.atomic import OutputStage, atomic_path, write_text


def davis_palette() -> np.ndarray:
    """(256, 3) uint8: the PASCAL VOC colour map that DAVIS annotations use (index 1 = (128, 0, 0), 2 =
    (0, 128, 0), 3 = (128, 128, 0), ...): the bits of the index spread over the high bits of R, G, B."""
    pal = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        pal[i] = (r, g, b)
    return pal


PALETTE = davis_palette()


def indexed_png_bytes(labels: np.ndarray) -> bytes:
    """(H, W) uint8 labels -> an indexed ('P' mode) PNG with the DAVIS palette."""
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"indexed PNGs need a 2-D label map, got {lab.shape}")
    im = Image.fromarray(lab.astype(np.uint8), mode="P")
    im.putpalette(PALETTE.ravel().tolist())
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


class MaskWriter:
    """Writes one sequence's masks into a staging folder; :meth:`commit` renames it to ``folder`` (so a
    sequence folder is either absent, or complete)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._stage = OutputStage(self.folder)

    def write(self, index: int, labels: np.ndarray) -> None:
        (self._stage.dir / f"{index:05d}.png").write_bytes(indexed_png_bytes(labels))

    def commit(self) -> Path:
        if self.folder.exists():  # an older complete copy (a re-run with changed settings): replaced whole
            for p in self.folder.glob("*.png"):
                p.unlink()
        return self._stage.commit()

    def discard(self) -> None:
        self._stage.discard()


def overlay(frame: np.ndarray, labels: np.ndarray, gt: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
    """RGB frame with each predicted object tinted in its palette colour, and the GT objects' outlines in white."""
    out = frame.astype(np.float32).copy()
    lab = np.asarray(labels)
    fg = lab > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * PALETTE[lab[fg]].astype(np.float32)
    out = out.clip(0, 255).astype(np.uint8)
    if gt is not None:
        g = np.where(np.asarray(gt) == 255, 0, np.asarray(gt)).astype(np.uint8)
        # pixels whose 3x3 neighbourhood holds another label: object/background and object/object borders
        edges = cv2.morphologyEx(g, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        out[edges] = 255
    return out


def contact_indices(num_frames: int, count: int = 4) -> list[int]:
    """``count`` frames spread over the clip, the first and last included."""
    if num_frames <= count:
        return list(range(num_frames))
    return sorted({int(round(v)) for v in np.linspace(0, num_frames - 1, count)})


def contact_sheet(tiles: list[tuple[int, np.ndarray]], title: str, width: int = 1600) -> np.ndarray:
    """One row of frames (each labelled with its index) scaled to ``width`` px in all, with a title bar."""
    if not tiles:
        raise ValueError("no frames for the contact sheet")
    h, w = tiles[0][1].shape[:2]
    tw = max(width // len(tiles), 1)
    th = max(int(round(h * tw / w)), 1)
    row = []
    for idx, img in tiles:
        small = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA)
        cv2.putText(small, f"{idx:05d}", (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
        row.append(small)
    body = np.concatenate(row, axis=1)
    bar = np.zeros((28, body.shape[1], 3), np.uint8)
    cv2.putText(bar, title[:180], (6, 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([bar, body], axis=0)


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    path = Path(path)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buf.tobytes())
    return path


def per_frame_csv(frames: list[int], per_object: dict[str, dict[str, list[float]]]) -> str:
    """CSV: one row per (object, scored frame) with J and F (fractions)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["object", "frame", "J", "F"])
    for name, vals in per_object.items():
        for t, j, f in zip(frames, vals["J"], vals["F"]):
            w.writerow([name, t, f"{j:.6f}", f"{f:.6f}"])
    return buf.getvalue()


def write_csv(path: str | Path, text: str) -> Path:
    write_text(path, text)
    return Path(path)


__all__ = ["PALETTE", "davis_palette", "indexed_png_bytes", "MaskWriter", "overlay", "contact_indices",
           "contact_sheet", "write_png", "per_frame_csv", "write_csv"]
