"""``ProjectedBackend(base, projection)``: a learned per-token projection on top of any backend.

The projection is an ``nn.Module`` mapping (..., C_in) -> (..., C_out) on the channel axis (e.g. the
Co-Settle projector). Geometry is the base's unchanged; only C and the output scale may change.
It always runs in float32, even when the base runs under bf16/fp16 autocast (Co-Settle: the projector
stays fp32).
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from ..geometry import Geometry
from .base import FeatureBackend


def module_fingerprint(module: nn.Module) -> str:
    """Content hash of a module's parameters and buffers (changes whenever the weights change)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


class ProjectedBackend(FeatureBackend):
    def __init__(self, base: FeatureBackend, projection: nn.Module, out_dim: int | None = None,
                 tag: str = "proj", output_norm: str = "layernorm"):
        self.base = base
        self.projection = projection.float().eval()
        for p in self.projection.parameters():
            p.requires_grad_(False)
        if out_dim is None:
            with torch.no_grad():
                out_dim = int(self.projection(torch.zeros(1, base.feat_dim)).shape[-1])
        self.name = f"{base.name}+{tag}"
        self.feat_dim = out_dim
        self.patch_size, self.stride, self.offset = base.patch_size, base.stride, base.offset
        self.mean, self.std, self.resolution = base.mean, base.std, base.resolution
        self.default_chunk_size = base.default_chunk_size
        self.output_norm = output_norm
        self.device = base.device
        self._fingerprint = module_fingerprint(self.projection)

    def to(self, device) -> "ProjectedBackend":
        self.base.to(device)
        self.projection.to(device)
        self.device = torch.device(device)
        return self

    def input_size(self, image_h: int, image_w: int) -> tuple[int, int]:
        return self.base.input_size(image_h, image_w)

    def geometry(self, image_h: int, image_w: int) -> Geometry:
        return self.base.geometry(image_h, image_w)

    def preprocess(self, frames, geometry):
        return self.base.preprocess(frames, geometry)

    def forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        with self.base.autocast():
            f = self.base.forward_batch(x)
        return self.project(f)

    def project(self, f: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) base features -> (B, C_out, h, w), in float32."""
        dev_type = f.device.type
        with torch.autocast(device_type=dev_type, enabled=False):
            tokens = f.float().permute(0, 2, 3, 1)
            out = self.projection(tokens)
        return out.permute(0, 3, 1, 2).contiguous()

    def cache_fields(self) -> dict[str, Any]:
        return {"base": self.base.cache_fields(), "projection": self._fingerprint,
                "feat_dim": self.feat_dim, "class": type(self).__name__}
