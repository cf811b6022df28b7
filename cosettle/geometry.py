"""Feature-grid geometry: where each feature cell sits in the user's video.

Pixel convention (used everywhere in this project): **integer coordinates are pixel centres**. Pixel
column k covers x in [k-0.5, k+0.5]; an image of width W spans x in [-0.5, W-0.5]. Points are (x, y).

A backend resizes a frame of ``image_h x image_w`` to ``input_h x input_w`` (a size its patch
embedding accepts) and returns a ``grid_h x grid_w`` feature map. Cell (i, j) is computed from the
patch covering input pixels ``[stride*j, stride*j + patch_size - 1]``, whose centre is at input pixel
``offset + stride*j`` with ``offset = (patch_size - 1) / 2``.

Difference from the DINO-Tracker reference: it places cell (i, j) at ``7 + 7j`` for patch 14 / stride
7, i.e. 0.5 px right of the patch centre under the pixel-centre convention (its resizing also uses a
pure ratio ``x * W'/W`` instead of the centre-consistent ``(x + 0.5) * W'/W - 0.5``). We keep the exact
centre and let every consumer read it from this object instead of hard-coding it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch


def snap_input_size(target_h: int, target_w: int, patch_size: int, stride: int) -> tuple[int, int]:
    """Largest size <= target with ``(size - patch) % stride == 0`` (every pixel row is covered).

    For stride == patch this is the largest multiple of the patch size; for patch 14 / stride 7 it is
    ``14 + 7k`` -- 480x854 gives 476x854, the DINO-Tracker resolution, without hard-coding it.
    """

    def snap(n: int) -> int:
        if n < patch_size:
            return 0
        return patch_size + stride * ((n - patch_size) // stride)

    return snap(int(target_h)), snap(int(target_w))


@dataclass(frozen=True)
class Geometry:
    """Maps between original-video pixels, backend-input pixels and feature-grid coordinates."""

    patch_size: int
    stride: int
    offset: float  # input-pixel position of the centre of cell (0, 0), both axes
    grid_h: int
    grid_w: int
    input_h: int  # size the backend actually ran at
    input_w: int
    image_h: int  # size of the user's video
    image_w: int

    @classmethod
    def for_input(cls, patch_size: int, stride: int, input_h: int, input_w: int,
                  image_h: int, image_w: int, offset: float | None = None) -> "Geometry":
        if input_h < patch_size or input_w < patch_size:
            raise ValueError(f"input {input_h}x{input_w} smaller than patch {patch_size}")
        grid_h = 1 + (input_h - patch_size) // stride
        grid_w = 1 + (input_w - patch_size) // stride
        off = (patch_size - 1) / 2.0 if offset is None else float(offset)
        return cls(patch_size, stride, off, grid_h, grid_w, input_h, input_w, image_h, image_w)

    # -- scales --------------------------------------------------------------------------------
    @property
    def scale_x(self) -> float:
        """input pixels per original pixel along x"""
        return self.input_w / self.image_w

    @property
    def scale_y(self) -> float:
        return self.input_h / self.image_h

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.grid_h, self.grid_w

    # -- mappings (numpy arrays or torch tensors of shape (..., 2) holding (x, y)) ---------------
    def image_to_input(self, xy):
        return _affine(xy, (self.scale_x, self.scale_y), (0.5 * self.scale_x - 0.5, 0.5 * self.scale_y - 0.5))

    def input_to_image(self, xy):
        sx, sy = 1.0 / self.scale_x, 1.0 / self.scale_y
        return _affine(xy, (sx, sy), (0.5 * sx - 0.5, 0.5 * sy - 0.5))

    def input_to_grid(self, xy):
        s = 1.0 / self.stride
        return _affine(xy, (s, s), (-self.offset * s, -self.offset * s))

    def grid_to_input(self, gxy):
        return _affine(gxy, (self.stride, self.stride), (self.offset, self.offset))

    def pixel_to_grid(self, xy):
        """Original-video pixels (x, y) -> fractional grid coordinates (gx = column j, gy = row i)."""
        return self.input_to_grid(self.image_to_input(xy))

    def grid_to_pixel(self, gxy):
        """Fractional grid coordinates (gx, gy) -> original-video pixels (x, y)."""
        return self.input_to_image(self.grid_to_input(gxy))

    def pixel_to_normalized(self, xy):
        """Original pixels -> [-1, 1] coordinates for ``grid_sample(align_corners=True)`` on the grid.

        -1 / +1 are the centres of the first / last cell; points beyond them lie outside [-1, 1].
        """
        g = self.pixel_to_grid(xy)
        denom = (max(self.grid_w - 1, 1), max(self.grid_h - 1, 1))
        return _affine(g, (2.0 / denom[0], 2.0 / denom[1]), (-1.0, -1.0))

    def normalized_to_pixel(self, uv):
        gx = _affine(uv, ((self.grid_w - 1) / 2.0, (self.grid_h - 1) / 2.0),
                     ((self.grid_w - 1) / 2.0, (self.grid_h - 1) / 2.0))
        return self.grid_to_pixel(gx)

    def cell_centers(self, space: str = "image") -> np.ndarray:
        """(grid_h, grid_w, 2) array of cell centres (x, y) in ``image`` or ``input`` pixels."""
        jj, ii = np.meshgrid(np.arange(self.grid_w), np.arange(self.grid_h))
        g = np.stack([jj, ii], axis=-1).astype(np.float64)
        if space == "input":
            return self.grid_to_input(g)
        if space == "image":
            return self.grid_to_pixel(g)
        raise ValueError(f"space must be 'image' or 'input', got {space!r}")

    def cell_size_pixels(self) -> float:
        """Mean spacing between adjacent cells in original pixels (useful for radii/thresholds)."""
        return 0.5 * self.stride * (1.0 / self.scale_x + 1.0 / self.scale_y)

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Geometry":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def __str__(self) -> str:  # concise for logs
        return (f"Geometry(HxW: image {self.image_h}x{self.image_w} -> input {self.input_h}x{self.input_w}, "
                f"patch {self.patch_size}, stride {self.stride}, offset {self.offset:g}, "
                f"grid {self.grid_h}x{self.grid_w})")


def _affine(xy, scale, shift):
    """Per-axis ``xy * scale + shift`` for numpy arrays, torch tensors and sequences."""
    try:
        if isinstance(xy, torch.Tensor):
            s = torch.tensor(scale, dtype=xy.dtype if xy.is_floating_point() else torch.float64,
                             device=xy.device)
            b = torch.tensor(shift, dtype=s.dtype, device=xy.device)
            return xy.to(s.dtype) * s + b
    except ImportError:  # pragma: no cover
        pass
    arr = np.asarray(xy, dtype=np.float64)
    return arr * np.asarray(scale) + np.asarray(shift)


def isclose_geometry(a: Geometry, b: Geometry) -> bool:
    return all(math.isclose(getattr(a, f), getattr(b, f)) for f in Geometry.__dataclass_fields__)
