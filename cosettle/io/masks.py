"""The one mask reader of the project (``--masks`` folders, ``--grid-mask`` / ``--points-from-mask`` files,
DAVIS/BADJA annotations, masks handed to ``Tracker.fit``), with one documented rule:

* a **palette** image (DAVIS annotations): foreground = palette index > 0 (every object, whatever its colour);
* any other image or array: the grey value, or the brightest of R, G, B (alpha ignored in LA and RGBA
  images; a bool mask counts as 0/1), is compared with a threshold: **> 127** when the mask holds any value
  above 127 (0/255 masks, and JPEG-saved ones whose ringing must not count), else **> 0** (0/1 label masks).

A folder holds one image per frame of the source video (png, jpg, jpeg or bmp; hidden files ignored), matched to
the frames by sorted file name; it may hold more than a run uses (``--max-frames`` / ``--frame-stride`` pick
frames of the source, and the masks with the same indices are read).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import UserError

MASK_EXTS = {".png", ".jpg", ".jpeg", ".bmp"}


def foreground(values: np.ndarray) -> np.ndarray:
    """The threshold rule above on single-channel mask values (any shape; bool counts as 0/1) -> bool. Colour
    images are reduced to their brightest channel first (``read_mask``; ``check_masks`` for arrays): a last
    axis of 3 or 4 here is image width, never channels."""
    m = np.asarray(values)
    if m.dtype == bool:
        return m.copy()
    return m > (127 if m.size and m.max() > 127 else 0)


def read_mask(path: str | Path, flag: str = "mask") -> np.ndarray:
    """One mask image -> (H, W) bool by the module's rule; a one-line error naming ``flag`` if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{flag} {path}: file not found", "pass an existing mask image")
    try:
        with Image.open(path) as im:
            if im.mode == "P":  # palette: keep the indices, object k > 0 stays foreground whatever its colour
                return np.asarray(im) != 0
            arr = np.asarray(im)
    except Exception as err:  # PIL raises many types for a non-image
        raise UserError(f"{flag} {path} is not a readable image ({type(err).__name__})",
                        "pass a png mask (object pixels non-zero)") from None
    if arr.ndim == 3:  # RGB(A) or grey+alpha (LA): the brightest colour channel, alpha (last of 2 or 4) ignored
        arr = arr[..., :1 if arr.shape[-1] == 2 else 3].max(axis=-1)
    return foreground(arr)


def mask_files(folder: str | Path, flag: str = "--masks") -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{flag} {folder}: folder not found", "pass a folder of mask images, one per frame")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in MASK_EXTS and not p.name.startswith("."))


def load_mask_folder(folder: str | Path, frames: int | Sequence[int], height: int, width: int,
                     flag: str = "--masks") -> np.ndarray:
    """(T, H, W) bool masks of the source frames ``frames`` (a count = frames 0..count-1), each checked against
    the video's ``height x width``."""
    idx = list(range(frames)) if isinstance(frames, (int, np.integer)) else [int(i) for i in frames]
    files = mask_files(folder, flag)
    need = max(idx) + 1 if idx else 0
    if len(files) < need:
        raise UserError(f"{flag} {folder} has {len(files)} images, the video {need} frames",
                        "give one mask per frame of the source video (sorted by file name)")
    out = np.zeros((len(idx), height, width), bool)
    for k, i in enumerate(idx):
        m = read_mask(files[i], flag)
        if m.shape != (height, width):
            raise UserError(f"mask {files[i]} is {m.shape[0]}x{m.shape[1]} (HxW), the video is {height}x{width}",
                            "masks must have the video's size")
        out[k] = m
    return out


def read_labels(path: str | Path, flag: str = "mask") -> np.ndarray:
    """One annotation image -> (H, W) uint8 object indices, for multi-object segmentation (DAVIS 2017):
    a **palette** image gives its indices as they are (0 background, k = object k, 255 void); any other image
    gives 0/1 by the rule of :func:`read_mask` (one object). ``read_mask(path) == (read_labels(path) != 0)``
    for every image ``read_mask`` reads."""
    try:
        with Image.open(path) as im:
            if im.mode == "P":
                return np.array(im, dtype=np.uint8)
    except Exception:  # PIL raises many types for a non-image; read_mask below names the problem in one line
        pass
    return read_mask(path, flag).astype(np.uint8)
