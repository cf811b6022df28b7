"""Content hashes used for cache keys (feature cache, tracker work folders, preprocessing stages)."""
from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np


def json_digest(obj: Any, length: int = 16) -> str:
    """sha256 of a canonical JSON dump (sorted keys; non-JSON values via ``str``)."""
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def array_digest(arr: np.ndarray, length: int = 16) -> str:
    """sha256 of an array's shape, dtype and bytes."""
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256()
    h.update(str((arr.shape, str(arr.dtype))).encode())
    h.update(arr.data)
    return h.hexdigest()[:length]


def video_fingerprint(video) -> str:
    """SHA-1 of the decoded frames as uint8 (T,H,W,3), streamed frame by frame.

    Any accepted video input (arrays in either layout, uint8 or float, lazy frame sequences) gives the
    same fingerprint for the same pictures.
    """
    import torch

    from .backends.base import frames_layout, video_hw

    h = hashlib.sha1()
    n, hh, ww = video_hw(video)
    h.update(f"{n}x{hh}x{ww}".encode())
    layout = frames_layout(video)
    for i in range(n):
        frame = video[i]
        if isinstance(frame, torch.Tensor):
            frame = frame.detach().cpu().numpy()
        frame = np.asarray(frame)
        if layout == "tchw":
            frame = np.moveaxis(frame, 0, -1)
        if frame.dtype != np.uint8:
            frame = np.clip(np.round(frame.astype(np.float64) * 255), 0, 255).astype(np.uint8)
        h.update(np.ascontiguousarray(frame).tobytes())
    return h.hexdigest()
