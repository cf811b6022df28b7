"""Frozen timm Vision Transformers (DINOv2, DINO, MAE, CLIP, any timm ViT) as a FeatureBackend.

* Overlapping patches: the patch-embedding conv stride is set to ``stride`` (e.g. 7 for /14 models)
  and the position embedding is resampled (bicubic) to the larger grid by timm's dynamic-size path.
  Difference from DINO-Tracker: it resizes the 37x37 grid with scale factor (n+0.1)/37, timm resizes
  to the exact size with antialias -- the same grid, values differ slightly.
* Only the chosen block runs and is read: we stop after ``blocks[layer]`` (never hook every block;
  DINO-Tracker's all-blocks hook needed ~100 GB per frame without xformers).
* ``pos_embed_transform`` lets the Co-Settle trainer perturb the patch position embeddings (PEA).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable

import torch

from ..errors import UserError
from .registry import register_timm_family, register_timm_names
from .timm_common import (TimmBackend, block_index, cpu_bf16_supported, default_layer,  # noqa: F401
                          overlapping_patches, precision_dtype)
from .weights import create_pretrained, load_into_timm

log = logging.getLogger(__name__)

PosEmbedTransform = Callable[[torch.Tensor], torch.Tensor]  # (1, C, gh, gw) -> (1, C, gh, gw)

# curated names -> timm model names (pretrained tag included)
VIT_MODELS = {
    "dinov2_vits14": "vit_small_patch14_dinov2.lvd142m",
    "dinov2_vitb14": "vit_base_patch14_dinov2.lvd142m",
    "dinov2_vitl14": "vit_large_patch14_dinov2.lvd142m",
    "dinov2_vitg14": "vit_giant_patch14_dinov2.lvd142m",
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitl14_reg": "vit_large_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitg14_reg": "vit_giant_patch14_reg4_dinov2.lvd142m",
    "dino_vits8": "vit_small_patch8_224.dino",
    "dino_vits16": "vit_small_patch16_224.dino",
    "dino_vitb8": "vit_base_patch8_224.dino",
    "dino_vitb16": "vit_base_patch16_224.dino",
    "mae_vitb16": "vit_base_patch16_224.mae",
    "clip_vitb16": "vit_base_patch16_clip_224.openai",
}


@register_timm_family("vit")
class TimmViTBackend(TimmBackend):
    def __init__(self, timm_name: str, *, name: str | None = None, stride: int | None = None,
                 layer: int | None = None, weights: str | None = None, resolution=None,
                 norm: bool = False, precision: str = "auto", device: str | torch.device = "cpu",
                 seed: int = 0, allow_pickle: bool = False, chunk_size: int = 4):
        import timm  # deferred: slow import

        self.timm_name = timm_name
        self.name = name or f"timm:{timm_name}"
        self.weights = "hub" if weights in (None, "hub", "pretrained") else weights
        kwargs = dict(dynamic_img_size=True, num_classes=0)
        try:
            if self.weights == "hub":
                model = create_pretrained(timm_name, **kwargs)
            else:
                with _seeded(seed):
                    model = timm.create_model(timm_name, pretrained=False, **kwargs)
                if self.weights != "random":
                    load_into_timm(model, self.weights, allow_pickle=allow_pickle)
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise UserError(f"unknown timm model {timm_name!r}",
                                "see timm.list_models('vit*') or cosettle.list_backends()") from None
            raise
        if not hasattr(model, "blocks") or not hasattr(model, "patch_embed"):
            raise UserError(f"timm model {timm_name} is not a plain ViT (no blocks/patch_embed)",
                            "use a ViT model name")
        self.model = model.eval().requires_grad_(False)
        self.seed = seed
        self.patch_size, self.stride = overlapping_patches(model, stride)
        self.depth = len(model.blocks)
        self.position_encoding = "absolute" if getattr(model, "pos_embed", None) is not None else None
        self.layer = block_index(layer, self.depth, timm_name)
        self.norm = bool(norm)
        self.output_norm = "layernorm" if norm else "raw"
        self.feat_dim = int(model.embed_dim)
        self._finish_init(resolution, precision, chunk_size, device)

    # -- device --------------------------------------------------------------------------------
    def to(self, device) -> "TimmViTBackend":
        super().to(device)
        self.xformers = _maybe_enable_xformers(self.model, self.device)
        return self

    # -- forward -------------------------------------------------------------------------------
    def forward_tokens(self, x: torch.Tensor, pos_embed_transform: PosEmbedTransform | None = None,
                       layer: int | None = None, norm: bool | None = None, position_transform=None):
        """(B,3,H,W) normalised -> patch tokens (B, gh*gw, C) of ``layer`` and the grid (gh, gw).

        CLS/register tokens are dropped. ``pos_embed_transform`` (alias ``position_transform``, the
        name of the backend-independent interface) replaces the patch position embedding (already
        resampled to this grid) by its output; prefix-token embeddings are kept.
        """
        pos_embed_transform = pos_embed_transform or position_transform
        m = self.model
        layer = self.layer if layer is None else layer % len(m.blocks)
        norm = self.norm if norm is None else norm
        # PatchEmbed.forward asserts size % patch == 0, which overlapping strides break: call its
        # conv and norm directly (same maths).
        x = m.patch_embed.proj(x).permute(0, 2, 3, 1)
        x = m.patch_embed.norm(x)
        B, gh, gw, C = x.shape
        x = self._add_pos_embed(x, pos_embed_transform)
        x = m.patch_drop(x)
        x = m.norm_pre(x)
        for blk in m.blocks[: layer + 1]:
            x = blk(x)
        if norm:
            x = m.norm(x)
        return x[:, m.num_prefix_tokens:], (gh, gw)

    def _add_pos_embed(self, x: torch.Tensor, transform: PosEmbedTransform | None) -> torch.Tensor:
        m = self.model
        B, gh, gw, C = x.shape
        prefix = []
        if m.cls_token is not None:
            prefix.append(m.cls_token.expand(B, -1, -1))
        if getattr(m, "reg_token", None) is not None:
            prefix.append(m.reg_token.expand(B, -1, -1))
        x = x.reshape(B, gh * gw, C)
        if m.pos_embed is None:
            if transform is not None:
                raise UserError(f"{self.timm_name} has no absolute position embedding; PEA needs one")
            return torch.cat(prefix + [x], dim=1)
        n_pe_prefix = 0 if m.no_embed_class else m.num_prefix_tokens
        pe = self.resample_pos_embed(m.pos_embed, (gh, gw), n_pe_prefix)
        pe_prefix, pe_patch = pe[:, :n_pe_prefix], pe[:, n_pe_prefix:]
        if transform is not None:
            grid = pe_patch.reshape(1, gh, gw, C).permute(0, 3, 1, 2)
            grid = transform(grid)
            pe_patch = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, C)
        x = x + pe_patch.to(x.dtype)
        if prefix:
            if n_pe_prefix:
                prefix_t = torch.cat(prefix, dim=1) + pe_prefix.to(x.dtype)
                prefix = [prefix_t]
            x = torch.cat(prefix + [x], dim=1)
        return m.pos_drop(x)

    def resample_pos_embed(self, pos_embed: torch.Tensor, grid: tuple[int, int], n_prefix: int) -> torch.Tensor:
        """(1, n_prefix + N, C) position embedding -> the same for the ``grid`` (timm's rule: bicubic
        with antialiasing; a backend whose weights were trained with another rule overrides this)."""
        from timm.layers import resample_abs_pos_embed  # deferred: slow import

        return resample_abs_pos_embed(pos_embed, new_size=grid, old_size=self.model.patch_embed.grid_size,
                                      num_prefix_tokens=n_prefix)

    def cache_fields(self):
        return super().cache_fields() | {"norm": self.norm}


register_timm_names(VIT_MODELS, TimmViTBackend)


@contextlib.contextmanager
def _seeded(seed: int):
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def xformers_usable(device: torch.device) -> bool:
    """xformers only on CUDA (it imports on CPU machines but its kernels need a GPU)."""
    if device.type != "cuda":
        return False
    try:
        import xformers.ops  # deferred: optional CUDA extra; noqa: F401
    except Exception:
        return False
    return True


def _maybe_enable_xformers(model: torch.nn.Module, device: torch.device) -> bool:
    """Route timm attention through xformers' memory-efficient kernel on CUDA; else keep torch SDPA."""
    if not xformers_usable(device):
        return False
    import xformers.ops as xops  # deferred: optional CUDA extra
    from timm.models.vision_transformer import Attention  # deferred: slow import

    def forward(self, x, attn_mask=None, is_causal=False):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.unbind(2)
        q, k = self.q_norm(q), self.k_norm(k)
        out = xops.memory_efficient_attention(q, k, v, attn_bias=attn_mask)
        out = self.norm(out.reshape(B, N, C)) if hasattr(self, "norm") else out.reshape(B, N, C)
        return self.proj_drop(self.proj(out))

    n = 0
    for mod in model.modules():
        if type(mod) is Attention:
            mod.forward = forward.__get__(mod, Attention)
            n += 1
    log.info("xformers memory-efficient attention enabled on %d blocks", n)
    return n > 0
