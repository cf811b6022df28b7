"""Content hashes used for cache keys (feature cache, tracker work folders, preprocessing stages)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .frames import Frames, frames_layout, video_hw
from .io.atomic import write_text


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
    same fingerprint for the same pictures. A :class:`Frames` gives its digest, computed once.
    """
    if isinstance(video, Frames):
        return video.digest

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


# -- content checksums of cached files (verified when read) ------------------------------------------
CHECKSUM_SUFFIX = ".blake2b"


def file_digest(path, chunk: int = 1 << 20) -> str:
    """blake2b (32-byte) hex digest of a file's bytes, streamed."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def checksum_path(path):
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def write_checksum(path) -> str:
    """Write ``<path>.blake2b`` (atomically) holding the file's digest; -> the digest."""
    digest = file_digest(path)
    write_text(checksum_path(path), digest + "\n")
    return digest


def verify_checksum(path) -> str | None:
    """None if ``path`` matches its ``.blake2b`` sidecar, else why not (missing, truncated, corrupt)."""
    path, side = Path(path), checksum_path(path)
    if not path.is_file():
        return "missing"
    try:
        want = side.read_text().strip()
    except OSError:
        return "no checksum file"
    try:
        got = file_digest(path)
    except OSError as err:
        return f"unreadable ({err.strerror})"
    return None if got == want else "checksum mismatch (truncated or corrupt)"
