"""The video inputs every tool accepts: a (T, H, W, 3) or (T, 3, H, W) array/tensor, or a lazy sequence of
(H, W, 3) frames (``cosettle.io.video.Video``). Shape and chunk helpers, free of any model code, so hashing and
the backends share them without importing each other."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

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


# -- the one video normaliser ---------------------------------------------------------------------------
def _uint8_frames(arr: np.ndarray, who: str) -> np.ndarray:
    """An array's pixels as uint8. Floats are [0, 1] pictures: x255, rounded, clipped -- exactly the rule of
    :func:`cosettle.hashing.video_fingerprint`, so a float clip and its uint8 version key the same caches."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        if arr.size and not np.isfinite(arr).all():
            raise UserError(f"{who} has NaN or infinite pixel values", "pass finite pixels in [0, 1] or uint8")
        return np.clip(np.round(arr.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise UserError(f"{who} has integer pixels outside 0..255", "pass uint8 frames, or floats in [0, 1]")
        return arr.astype(np.uint8)
    raise UserError(f"{who} has {arr.dtype} pixels", "pass uint8 frames, or floats in [0, 1]")


@dataclass(frozen=True, eq=False)
class Frames:
    """A checked video: ``array`` is a C-contiguous (T, H, W, 3) uint8 array (do not modify it).

    It reads like the (T, H, W, 3) array it holds (``shape``, ``len``, indexing, ``np.asarray``), so every
    consumer of a video takes it as it is. Its digests are computed lazily, each at most once: ``digest``
    equals :func:`cosettle.hashing.video_fingerprint` of the same pictures (the tracker's work-folder key) and
    ``content_digest`` equals ``array_digest(array)`` (the preprocessing stages' key), so the caches written
    before this class existed stay valid."""

    array: np.ndarray

    @property
    def T(self) -> int:
        return int(self.array.shape[0])

    @property
    def H(self) -> int:
        return int(self.array.shape[1])

    @property
    def W(self) -> int:
        return int(self.array.shape[2])

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape

    @property
    def dtype(self):
        return self.array.dtype

    @property
    def ndim(self) -> int:
        return 4

    def __len__(self) -> int:
        return self.T

    def __getitem__(self, key):
        return self.array[key]

    def __array__(self, dtype=None, copy=None):
        return self.array if dtype is None else self.array.astype(dtype)

    def numpy(self) -> np.ndarray:
        return self.array

    # Two digests, each computed at most once, only when asked: both keys predate this class (the work folder
    # is keyed by the first, its preprocessing stages by the second) and cached folders must stay valid.
    @cached_property
    def digest(self) -> str:
        """SHA-1 fingerprint, equal to ``video_fingerprint`` of the same pictures."""
        h = hashlib.sha1(f"{self.T}x{self.H}x{self.W}".encode())
        h.update(memoryview(self.array).cast("B"))
        return h.hexdigest()

    @cached_property
    def content_digest(self) -> str:
        """sha256[:16], equal to ``array_digest(self.array)``."""
        h = hashlib.sha256(str((self.array.shape, str(self.array.dtype))).encode())
        h.update(memoryview(self.array).cast("B"))
        return h.hexdigest()[:16]


def as_frames(video, *, min_frames: int = 1, who: str = "video") -> Frames:
    """Any accepted video -> :class:`Frames`, the one check every tracker and the CLI use.

    Accepts uint8 or float ([0, 1]) pixels in a (T, H, W, 3) or (T, 3, H, W) numpy array or torch tensor, a
    :class:`cosettle.io.video.Video` or any object with ``.numpy()``, a lazy sequence of (H, W, 3) frames, or
    a :class:`Frames` (returned as it is, digests kept). A bad shape, channel count, pixel type or fewer than
    ``min_frames`` frames is one :class:`UserError` naming ``who``."""
    if isinstance(video, Frames):
        frames = video
    else:
        if isinstance(video, torch.Tensor):
            arr = video.detach().cpu().numpy()
        elif hasattr(video, "numpy") and not isinstance(video, np.ndarray):
            arr = np.asarray(video.numpy())
        elif isinstance(video, np.ndarray):
            arr = video
        else:  # a lazy sequence of frames
            arr = np.stack([f.detach().cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f)
                            for f in video]) if len(video) else np.zeros((0, 0, 0, 3), np.uint8)
        if arr.ndim != 4:
            raise UserError(f"{who} must have 4 dims (T,H,W,3) or (T,3,H,W), got shape {tuple(arr.shape)}",
                            "pass RGB frames")
        if arr.shape[-1] != 3:
            if arr.shape[1] != 3:
                raise UserError(f"{who} must be RGB with 3 channels, got shape {tuple(arr.shape)}",
                                "pass (T,H,W,3) or (T,3,H,W) frames")
            arr = np.moveaxis(arr, 1, -1)
        frames = Frames(np.ascontiguousarray(_uint8_frames(arr, who)))
    if frames.T < min_frames:
        plural = "" if min_frames == 1 else "s"
        raise UserError(f"{who} needs at least {min_frames} frame{plural}, got {frames.T}", "use a longer video")
    return frames
