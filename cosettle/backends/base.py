"""The ``FeatureBackend`` contract: frames in, dense features + :class:`Geometry` out.

Any tracker can consume a backend, and anyone can implement one: subclass :class:`FeatureBackend` and
implement :meth:`FeatureBackend.forward_batch` (and set the geometry attributes). Everything else --
accepting any video layout/dtype, resizing to a valid size, normalising with the model's own mean/std,
chunking, ``inference_mode``, autocast and streaming -- is provided here.

Video input accepted by :meth:`extract`:
    * numpy / torch arrays, uint8 (0..255) or float (0..1), RGB, laid out (T,H,W,3) or (T,3,H,W);
    * any sequence of frames (``len`` + ``__getitem__`` returning one (H,W,3) uint8 frame), e.g.
      :class:`cosettle.io.video.Video`, so long videos are decoded lazily and memory stays bounded.
"""
from __future__ import annotations

import abc
import contextlib
import logging
from typing import Any, Iterator, NamedTuple

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..frames import frames_to_tensor, video_hw
from ..geometry import Geometry, snap_input_size
from ..hashing import json_digest
from ..progress import tqdm

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Features(NamedTuple):
    """Output of a backend. ``features`` is (T, C, grid_h, grid_w).

    Fresh extraction gives float32; the on-disk cache returns a memory-mapped float16 tensor (call
    ``.float()`` on the frames you need).
    """

    features: torch.Tensor
    geometry: Geometry


class FeatureBackend(abc.ABC):
    """Base class and documented contract of a dense feature extractor.

    Attributes a backend must set:
        name        registry name (e.g. ``"dinov2_vits14"``)
        feat_dim    C, channels of the output
        patch_size  side of the receptive patch of one cell, in input pixels
        stride      step between cells, in input pixels
        mean, std   RGB normalisation applied to [0, 1] frames (the model's own)
    Optional:
        resolution  None (keep the video size, snapped down to a valid size), an int (short side),
                    or (H, W)
        offset      input-pixel centre of cell (0, 0); default ``(patch_size - 1) / 2``
        output_norm description of the output scale (``"raw"``, ``"layernorm"``, ``"l2"``) for
                    consumers whose regularisers depend on it
        position_encoding  ``"absolute"`` (added PE grid), ``"rotary"`` (RoPE coordinates) or None
                    (no position encoding, e.g. CNNs and dsift): tells the Co-Settle trainer whether
                    PEA applies, through :meth:`forward_tokens`' ``position_transform``

    The small interface the Co-Settle trainer uses (so it never needs one class's internals):
    :meth:`forward_tokens` (tokens + grid, optionally with a position transform on this pass only)
    and :meth:`token_metadata` (what the tokens are, recorded in projector files).
    """

    name: str = "backend"
    feat_dim: int = 0
    patch_size: int = 1
    stride: int = 1
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resolution: None | int | tuple[int, int] = None
    offset: float | None = None
    output_norm: str = "raw"
    position_encoding: str | None = None
    device: torch.device = torch.device("cpu")
    default_chunk_size: int = 4

    # -- to implement ------------------------------------------------------------------------------
    @abc.abstractmethod
    def forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) normalised input at a valid size -> (B, C, grid_h, grid_w) features."""

    def forward_tokens(self, x: torch.Tensor, position_transform=None):
        """(B,3,H,W) normalised -> (tokens (B, gh*gw, C), (gh, gw)).

        ``position_transform`` (e.g. :class:`cosettle.pea.PEA`) perturbs the position encoding of this
        pass only; backends with ``position_encoding`` set override this method to honour it.
        """
        if position_transform is not None:
            raise UserError(f"backend {self.name} has no position encoding to transform",
                            "train without PEA (--pea false) on it")
        f = self.forward_batch(x)
        B, C, gh, gw = f.shape
        return f.flatten(2).transpose(1, 2), (gh, gw)

    def token_metadata(self) -> dict[str, Any]:
        """What the tokens are (recorded in projector files; checked when a projector is loaded)."""
        return {"patch_size": self.patch_size, "stride": self.stride,
                "position_encoding": self.position_encoding,
                "layer": getattr(self, "layer", None), "norm": getattr(self, "norm", None),
                "depth": getattr(self, "depth", None), "timm_name": getattr(self, "timm_name", None)}

    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype of forward passes (None: float32)."""
        return None

    def cache_fields(self) -> dict[str, Any]:
        """Everything that changes the output; hashed into the feature-cache key."""
        return {"name": self.name, "patch_size": self.patch_size, "stride": self.stride,
                "feat_dim": self.feat_dim, "mean": list(self.mean), "std": list(self.std),
                "offset": self.offset, "class": type(self).__name__}

    # -- provided ----------------------------------------------------------------------------------
    def to(self, device) -> "FeatureBackend":
        self.device = torch.device(device)
        return self

    def input_size(self, image_h: int, image_w: int) -> tuple[int, int]:
        """The (H, W) the model runs at for a video of ``image_h x image_w``."""
        res = self.resolution
        if res is None:
            th, tw = image_h, image_w
        elif isinstance(res, int):
            s = res / min(image_h, image_w)
            th, tw = round(image_h * s), round(image_w * s)
        else:
            th, tw = int(res[0]), int(res[1])
        h, w = snap_input_size(th, tw, self.patch_size, self.stride)
        if h < self.patch_size or w < self.patch_size:
            raise UserError(
                f"resolution {image_h}x{image_w} (HxW) is too small for backend {self.name} "
                f"(patch size {self.patch_size})",
                f"use a video or --resolution of at least {self.patch_size}x{self.patch_size} px")
        return h, w

    def geometry(self, image_h: int, image_w: int) -> Geometry:
        h, w = self.input_size(image_h, image_w)
        return Geometry.for_input(self.patch_size, self.stride, h, w, image_h, image_w, self.offset)

    def preprocess(self, frames: torch.Tensor, geometry: Geometry) -> torch.Tensor:
        """[0,1] (B,3,H0,W0) -> resized (antialiased bilinear) and normalised (B,3,H,W)."""
        x = frames.to(self.device)
        if (x.shape[-2], x.shape[-1]) != (geometry.input_h, geometry.input_w):
            x = F.interpolate(x, size=(geometry.input_h, geometry.input_w), mode="bilinear",
                              align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision of forward passes: ``autocast_dtype()`` (subclasses opt in; default none)."""
        dt = self.autocast_dtype()
        return contextlib.nullcontext() if dt is None else torch.autocast(device_type=self.device.type, dtype=dt)

    def iter_chunks(self, video, chunk_size: int | None = None,
                    progress: bool = False) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (start_frame, float32 features of a chunk on CPU), bounded memory."""
        n, h0, w0 = video_hw(video)
        geom = self.geometry(h0, w0)
        chunk = int(chunk_size or self.default_chunk_size)
        bar = _progress(n, f"features [{self.name}]", progress)
        with torch.inference_mode():
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                x = self.preprocess(frames_to_tensor(video, start, stop), geom)
                with self.autocast():
                    f = self.forward_batch(x)
                f = f.float().cpu()
                expect = (stop - start, self.feat_dim, geom.grid_h, geom.grid_w)
                if tuple(f.shape) != expect:
                    raise RuntimeError(f"{self.name}: forward_batch returned {tuple(f.shape)}, "
                                       f"geometry says {expect}")
                bar.update(stop - start)
                yield start, f
        bar.close()

    def extract(self, video, chunk_size: int | None = None, progress: bool = False) -> Features:
        """All frames' features in memory, float32 (T, C, h, w). See ``FeatureCache`` for on-disk."""
        n, h0, w0 = video_hw(video)
        geom = self.geometry(h0, w0)
        out = torch.empty((n, self.feat_dim, geom.grid_h, geom.grid_w), dtype=torch.float32)
        for start, f in self.iter_chunks(video, chunk_size, progress):
            out[start:start + f.shape[0]] = f
        return Features(out, geom)

    __call__ = extract

    def cache_key(self) -> str:
        return json_digest(self.cache_fields(), 24)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, C={self.feat_dim}, "
                f"patch={self.patch_size}, stride={self.stride})")


def _progress(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="frame", disable=not enabled, leave=False)

