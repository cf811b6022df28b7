"""DINOv3 (timm ``Eva`` with DINOv3 rotary position encoding + registers) as a FeatureBackend.

Served: timm's ``vit_*_patch16_dinov3*`` models (``rope_type='dinov3'``, no absolute position
embedding), under Meta's hub names ``dinov3_vits16`` ... ``dinov3_vit7b16`` or ``timm:<name>``.

* CLS and the 4 register ("storage") tokens are dropped; only ``blocks[:layer + 1]`` run.
* Overlapping stride (e.g. 8 for /16): the patch-embedding conv stride is set to ``stride`` and the
  rotary coordinates are computed for the denser grid from the cells' **physical** centres:
  ``u = (stride * i + patch / 2) / input_size`` mapped to [-1, 1]. At stride = patch this is exactly
  DINOv3's 0.5-centred grid ``(i + 0.5) / n`` (tested against timm's own rope), so a cell keeps the
  coordinate of the image location it sees at any stride. (timm would give the denser grid the
  coordinates of a larger image, i.e. a different spacing.)
* Local weights: timm/safetensors files or Meta's official checkpoint layout (``storage_tokens``,
  ``ls1.gamma``, fused ``qkv.bias``), mapped by timm's Eva checkpoint filter.
* PEA (``position_transform``): the rotary coordinates of this pass are those of a window of the
  original size cut at a random offset from the grid scaled by (1 + r) -- see :mod:`cosettle.pea`.
  Design difference from the paper (which perturbs an *added* PE grid): RoPE has no embedding grid to
  resample, so we resample the coordinates the rotations are computed from (exact, no interpolation).
"""
from __future__ import annotations

import logging

import torch

from ..errors import UserError
from .registry import register_timm_family, register_timm_names
from .timm_common import TimmBackend, block_index, overlapping_patches
from .weights import create_timm_model

log = logging.getLogger(__name__)

# Meta's hub names -> timm model names (pretrained tag included)
DINOV3_MODELS = {
    "dinov3_vits16": "vit_small_patch16_dinov3.lvd1689m",
    "dinov3_vits16plus": "vit_small_plus_patch16_dinov3.lvd1689m",
    "dinov3_vitb16": "vit_base_patch16_dinov3.lvd1689m",
    "dinov3_vitl16": "vit_large_patch16_dinov3.lvd1689m",
    "dinov3_vith16plus": "vit_huge_plus_patch16_dinov3.lvd1689m",
    "dinov3_vit7b16": "vit_7b_patch16_dinov3.lvd1689m",
}


def eva_filter(state, model):
    from timm.models.eva import checkpoint_filter_fn  # deferred: slow import

    return checkpoint_filter_fn(state, model)


@register_timm_family("dinov3")
class TimmDinoV3Backend(TimmBackend):
    position_encoding = "rotary"

    def __init__(self, timm_name: str, *, name: str | None = None, stride: int | None = None,
                 layer: int | None = None, weights: str | None = None, resolution=None,
                 norm: bool = False, precision: str = "auto", device: str | torch.device = "cpu",
                 seed: int = 0, allow_pickle: bool = False, chunk_size: int = 4,
                 model_kwargs: dict | None = None):
        self.timm_name = timm_name
        self.name = name or f"timm:{timm_name}"
        self.weights = "hub" if weights in (None, "hub", "pretrained") else weights
        self.seed = seed
        kwargs = dict(dynamic_img_size=True, num_classes=0, **(model_kwargs or {}))
        model = create_timm_model(timm_name, self.weights, seed=seed, allow_pickle=allow_pickle,
                                  filter_fn=eva_filter, **kwargs)
        rope = getattr(model, "rope", None)
        if rope is None or type(rope).__name__ != "RotaryEmbeddingDinoV3" or model.pos_embed is not None:
            raise UserError(f"timm model {timm_name} is an Eva variant we do not serve (only DINOv3's "
                            "rotary-only models)", "use dinov3_vits16 ... dinov3_vit7b16 or timm:vit_*_dinov3*")
        self.model = model.eval().requires_grad_(False)
        self.patch_size, self.stride = overlapping_patches(model, stride)
        self.depth = len(model.blocks)
        self.layer = block_index(layer, self.depth, timm_name)
        self.norm = bool(norm)
        self.output_norm = "layernorm" if norm else "raw"
        self.feat_dim = int(model.embed_dim)
        self._finish_init(resolution, precision, chunk_size, device)

    # -- rotary coordinates --------------------------------------------------------------------
    def cell_coords(self, gh: int, gw: int, position_transform=None) -> torch.Tensor:
        """(gh*gw, 2) rotary coordinates (y, x) in [-1, 1] of the cells' centres.

        With ``position_transform`` (PEA), each axis' fraction u in (0, 1) becomes (o + u*n) / U:
        the cells of a window of n cells at offset o in the grid scaled to U = int((1 + r) n) cells.
        """
        s, p = self.stride, self.patch_size
        axes = []
        for n in (gh, gw):
            size = p + s * (n - 1)  # input pixels of this axis (the valid size the grid came from)
            axes.append((s * torch.arange(n, dtype=torch.float64) + p / 2) / size)
        if position_transform is not None:
            uh, uw = position_transform.upsampled_size(gh, gw)
            oh, ow = position_transform.draw(gh, gw)
            position_transform.last_offset = (oh, ow)
            axes = [(o + u * n) / U for u, n, o, U in ((axes[0], gh, oh, uh), (axes[1], gw, ow, uw))]
        yy, xx = torch.meshgrid(axes[0], axes[1], indexing="ij")
        return (torch.stack([yy, xx], dim=-1).reshape(-1, 2) * 2 - 1).float()

    def rope_embed(self, gh: int, gw: int, position_transform=None) -> torch.Tensor:
        """(gh*gw, 2*head_dim//...) sin|cos table timm's DINOv3 blocks take as ``rope=``."""
        coords = self.cell_coords(gh, gw, position_transform)
        sin, cos = self.model.rope._get_pos_embed_from_coords(coords)
        return torch.cat([sin, cos], dim=-1)

    # -- forward -------------------------------------------------------------------------------
    def forward_tokens(self, x: torch.Tensor, position_transform=None, layer: int | None = None,
                       norm: bool | None = None):
        """(B,3,H,W) normalised -> patch tokens (B, gh*gw, C) of ``layer`` and the grid (gh, gw)."""
        m = self.model
        layer = self.layer if layer is None else layer % self.depth
        norm = self.norm if norm is None else norm
        x = m.patch_embed.proj(x).permute(0, 2, 3, 1)  # NHWC; PatchEmbed would assert the size
        x = m.patch_embed.norm(x)
        B, gh, gw, C = x.shape
        x = x.reshape(B, gh * gw, C)
        rope = self.rope_embed(gh, gw, position_transform).to(x.device)
        prefix = [t.expand(B, -1, -1) for t in (m.cls_token, m.reg_token) if t is not None]
        x = m.pos_drop(torch.cat(prefix + [x], dim=1))
        x = m.norm_pre(x)
        for blk in m.blocks[: layer + 1]:
            x = blk(x, rope=rope)
        if norm:
            x = m.norm(x)
        return x[:, m.num_prefix_tokens:], (gh, gw)

    def cache_fields(self):
        return super().cache_fields() | {"norm": self.norm, "rope": "physical"}


register_timm_names(DINOV3_MODELS, TimmDinoV3Backend)
