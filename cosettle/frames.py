"""The video inputs every tool accepts: a (T, H, W, 3) or (T, 3, H, W) array/tensor, or a lazy sequence of
(H, W, 3) frames (``cosettle.io.video.Video``). Shape and chunk helpers, free of any model code, so hashing and
the backends share them without importing each other."""
from __future__ import annotations

import numpy as np
import torch

from .errors import UserError


def frames_layout(video) -> str:
    """'thwc' or 'tchw' for a 4-D array/tensor, 'sequence' for a lazy frame sequence."""
    shape = getattr(video, "shape", None)
    if shape is None or isinstance(video, (list, tuple)) and not hasattr(video, "shape"):
        return "sequence"
    if len(shape) != 4:
        raise UserError(f"video must have 4 dims (T,H,W,3) or (T,3,H,W), got shape {tuple(shape)}")
    if shape[-1] == 3:
        return "thwc"
    if shape[1] == 3:
        return "tchw"
    raise UserError(f"video must be RGB with 3 channels, got shape {tuple(shape)}")


def video_hw(video) -> tuple[int, int, int]:
    """(T, H, W) of any accepted video input."""
    layout = frames_layout(video)
    if layout == "sequence":
        if len(video) == 0:
            raise UserError("video has no frames")
        first = np.asarray(video[0])
        return len(video), int(first.shape[0]), int(first.shape[1])
    shape = video.shape
    if layout == "thwc":
        return int(shape[0]), int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[2]), int(shape[3])


def frames_to_tensor(video, start: int, stop: int) -> torch.Tensor:
    """Frames [start, stop) as float32 (B,3,H,W) in [0, 1]."""
    layout = frames_layout(video)
    if layout == "sequence":
        chunk = np.stack([np.asarray(video[i]) for i in range(start, stop)])
        layout = "thwc"
    else:
        chunk = video[start:stop]
    t = torch.as_tensor(np.asarray(chunk) if not isinstance(chunk, torch.Tensor) else chunk)
    if layout == "thwc":
        t = t.permute(0, 3, 1, 2)
    if t.dtype == torch.uint8:
        t = t.float().div_(255.0)
    else:
        t = t.float()
    return t.contiguous()
