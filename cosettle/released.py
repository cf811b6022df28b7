"""Importing the authors' released Co-Settle ``checkpoint.pth`` files (spec §8).

A released file is ``{'model': full state dict (frozen encoder + projector), 'optimizer', 'epoch',
'scaler', 'args': argparse.Namespace}`` (the MAE file may be a plain state dict). The projector lives
under ``adapter.adapter.adapter_linear.*`` / ``adapter.adapter.adapter_layer_norm1.*`` (CLIP: a
``visual.`` prefix). ``args`` is a pickled Python object, so reading it needs an explicit opt-in.

The encoder weights in the same file are mapped into a timm ``VisionTransformer`` whose architecture is
read off the tensors (patch size, width, depth, registers, LayerScale, CLS token, PE layout) and named
``cosettle_vit_p16_d768_l12_h12_m400_g14_r4_cls_ls_qkvb`` (registered with timm on demand), so the
authors' DINOv2 ViT-B/16 with 4 registers -- which timm has no name for -- loads from that one file.
"""
from __future__ import annotations

import argparse
import logging
import math
import re
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

log = logging.getLogger(__name__)

ADAPTER_KEYS = {
    "adapter.adapter.adapter_linear.weight": "net.fc1.weight",
    "adapter.adapter.adapter_linear.bias": "net.fc1.bias",
    "adapter.adapter.adapter_layer_norm1.weight": "net.norm.weight",
    "adapter.adapter.adapter_layer_norm1.bias": "net.norm.bias",
}
_ENCODER_PREFIXES = ("module.", "backbone.", "encoder.", "visual_encoder.", "model.")
_NAME_RE = re.compile(r"^cosettle_vit_p(\d+)_d(\d+)_l(\d+)_h(\d+)_m(\d+)_g(\d+)x(\d+)_r(\d+)"
                      r"(_cls)?(_ls)?(_qkvb)?(_nec)?$")


# -- reading ---------------------------------------------------------------------------------------
def _refused_global(msg: str) -> str | None:
    """The class named when the restricted unpickler refused a pickled Python object, else None
    (corrupt/foreign files also fail under weights_only, with text that mentions weights_only)."""
    if "Unsupported global" not in msg:
        return None
    return msg.split("GLOBAL ")[1].split(" ")[0] if "GLOBAL " in msg else "a Python object"


def read_checkpoint(path: str | Path, allow_pickle: bool = False) -> dict[str, Any]:
    """Load a released ``checkpoint.pth``. Safe (``weights_only=True``) unless ``allow_pickle``.

    ``--trust-checkpoint`` is advised only when the file IS a pickle whose Python objects the
    restricted loader refused. With the opt-in we first admit only ``argparse.Namespace``, and fall
    back to full unpickling (logged) only if that fails; a file even that cannot read is a one-line
    error.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}", "check the path")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        msg = str(err)
        cls = _refused_global(msg)
        if cls is None:
            first = " ".join(msg.split())[:120]
            raise UserError(f"cannot read checkpoint {path}: {type(err).__name__}: {first}",
                            "is it a PyTorch checkpoint.pth (not truncated)?") from None
        if not allow_pickle:
            raise UserError(f"{path} holds pickled Python objects ({cls}; the authors' files hold their argparse "
                            "args), which safe loading refuses", "if you trust the file, opt in with "
                            "--trust-checkpoint (allow_pickle=True)") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:
        pass
    log.warning("unpickling %s with full pickle: only for files you trust", path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as err:
        first = " ".join(str(err).split())[:120]
        raise UserError(f"cannot read checkpoint {path} even with full unpickling: {type(err).__name__}: {first}",
                        "the file is corrupt or not a PyTorch checkpoint") from None


def split_checkpoint(obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, args as a plain dict) of a loaded checkpoint."""
    args: dict[str, Any] = {}
    state = obj
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        state = obj["model"]
        a = obj.get("args")
        if isinstance(a, argparse.Namespace):
            a = vars(a)
        if isinstance(a, dict):
            args = {k: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v)) for k, v in a.items()}
    if not isinstance(state, dict):
        raise UserError("checkpoint does not hold a state dict", "pass a Co-Settle checkpoint.pth")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return state, args


def extract_projector_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Our Projector's state dict (variant ``linear``) and the key prefix it was found under."""
    anchor = "adapter.adapter.adapter_linear.weight"
    hits = [k for k in state if k.endswith(anchor)]
    if not hits:
        raise UserError("no Co-Settle projector in this checkpoint (no '...adapter.adapter.adapter_linear.weight')",
                        "pass one of the authors' ckpts/ours/*/checkpoint.pth files")
    prefix = sorted(hits, key=len)[0][: -len(anchor)]
    others = [k for k in state if k.startswith(prefix + "adapter.") and k[len(prefix):] not in ADAPTER_KEYS]
    if others:
        raise UserError(f"unsupported projector layout in checkpoint (extra keys, e.g. {others[0]})",
                        "only the authors' default 'linear' projector (Linear-Tanh-LayerNorm) is supported")
    out = {}
    for theirs, ours in ADAPTER_KEYS.items():
        if prefix + theirs not in state:
            raise UserError(f"checkpoint lacks {prefix + theirs}", "the file is incomplete")
        out[ours] = state[prefix + theirs].float()
    return out, prefix


def is_ijepa(state: dict[str, torch.Tensor], args: dict[str, Any], adapter_prefix: str = "") -> bool:
    """Whether a released file is the I-JEPA one: its ``args.model`` says so, or (no args) its encoder
    has no CLS token -- I-JEPA is the only one of the authors' 8 encoders without one."""
    model = str(args.get("model", "")).lower().replace("-", "").replace("_", "")
    if model:
        return "ijepa" in model
    enc = {k: v for k, v in state.items() if "adapter." not in k}
    if not enc:
        return False
    try:
        s = encoder_state(state, adapter_prefix)
    except Exception:  # pragma: no cover - unknown layouts: assume normed
        return False
    return "patch_embed.proj.weight" in s and "cls_token" not in s and "visual.class_embedding" not in s


# -- encoder ---------------------------------------------------------------------------------------
def encoder_state(state: dict[str, torch.Tensor], adapter_prefix: str = "") -> dict[str, torch.Tensor]:
    """The encoder tensors of a full Co-Settle state dict, with wrapper prefixes removed."""
    s = {k: v for k, v in state.items() if "adapter." not in k}
    if any(k.startswith("visual.") for k in s) or adapter_prefix == "visual.":
        return {k: v for k, v in s.items() if k.startswith("visual.")}  # CLIP: timm converts 'visual.*'
    if any(k.startswith("module.momentum_encoder.") for k in s):  # MoCo v3 (the authors use it)
        s = {k[len("module.momentum_encoder."):]: v for k, v in s.items() if k.startswith("module.momentum_encoder.")}
    changed = True
    while changed:
        changed = False
        for p in _ENCODER_PREFIXES:
            if s and all(k.startswith(p) for k in s):
                s = {k[len(p):]: v for k, v in s.items()}
                changed = True
        if "patch_embed.proj.weight" not in s:
            for p in _ENCODER_PREFIXES:  # a prefixed sub-model next to other stuff (e.g. BLIP text)
                sub = {k[len(p):]: v for k, v in s.items() if k.startswith(p)}
                if "patch_embed.proj.weight" in sub:
                    s, changed = sub, True
                    break
    # DINOv2 chunked blocks: blocks.<chunk>.<i>.* -> blocks.<i>.*
    s = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in s.items()}
    return s


def encoder_arch(s: dict[str, torch.Tensor]) -> dict[str, Any]:
    """timm VisionTransformer kwargs read off the tensors of a (timm- or DINOv2-layout) ViT."""
    if "patch_embed.proj.weight" not in s or "blocks.0.norm1.weight" not in s:
        raise UserError("the checkpoint's encoder is not a ViT in a layout we can map "
                        f"(first keys: {list(s)[:3]})", "import the projector only (--no-encoder) and pick --base")
    w = s["patch_embed.proj.weight"]
    dim, patch = int(w.shape[0]), int(w.shape[-1])
    depth = 1 + max(int(m.group(1)) for k in s if (m := re.match(r"blocks\.(\d+)\.", k)))
    mlp = int(s["blocks.0.mlp.fc1.weight"].shape[0]) if "blocks.0.mlp.fc1.weight" in s else 4 * dim
    cls = "cls_token" in s
    reg = int(s["register_tokens"].shape[1]) if "register_tokens" in s else (
        int(s["reg_token"].shape[1]) if "reg_token" in s else 0)
    dinov2 = "mask_token" in s
    P = int(s["pos_embed"].shape[1]) if "pos_embed" in s else 0
    if dinov2 and reg:  # timm turns DINOv2+registers into a no-embed-class model
        nec, grid_tokens = True, P - 1
    elif cls and math.isqrt(P) ** 2 == P and P > 1:
        nec, grid_tokens = True, P
    else:
        nec, grid_tokens = False, P - (1 if cls else 0)
    g = math.isqrt(max(grid_tokens, 1))
    if g * g != grid_tokens:
        raise UserError(f"cannot infer the position-embedding grid from {P} tokens", "unsupported encoder")
    return dict(patch_size=patch, embed_dim=dim, depth=depth, num_heads=max(1, dim // 64),
                mlp_ratio=mlp / dim, img_size=g * patch, grid=g, reg_tokens=reg, class_token=cls,
                init_values=1e-5 if "blocks.0.ls1.gamma" in s else None,
                qkv_bias="blocks.0.attn.qkv.bias" in s, no_embed_class=nec)


def arch_name(a: dict[str, Any]) -> str:
    name = (f"cosettle_vit_p{a['patch_size']}_d{a['embed_dim']}_l{a['depth']}_h{a['num_heads']}"
            f"_m{round(a['mlp_ratio'] * 100)}_g{a['grid']}x{a['grid']}_r{a['reg_tokens']}")
    name += "_cls" * a["class_token"] + "_ls" * (a["init_values"] is not None)
    name += "_qkvb" * a["qkv_bias"] + "_nec" * a["no_embed_class"]
    return name


def ensure_registered(timm_name: str) -> bool:
    """Register a ``cosettle_vit_...`` architecture name with timm (no-op for other names)."""
    import timm  # deferred: slow import
    from timm.models import register_model  # deferred: slow import
    from timm.models.vision_transformer import VisionTransformer  # deferred: slow import

    m = _NAME_RE.match(timm_name.split(".")[0])
    if not m:
        return False
    if timm.is_model(timm_name):
        return True
    p, d, L, h, mr, gh, gw, r = (int(x) for x in m.groups()[:8])
    cls, ls, qkvb, nec = (bool(x) for x in m.groups()[8:])
    arch = dict(patch_size=p, embed_dim=d, depth=L, num_heads=h, mlp_ratio=mr / 100, img_size=(gh * p, gw * p),
                reg_tokens=r, class_token=cls, init_values=1e-5 if ls else None, qkv_bias=qkvb,
                no_embed_class=nec, global_pool="token" if cls else "avg", fc_norm=False)

    def entry(pretrained: bool = False, **kwargs):
        for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(k, None)
        if pretrained:
            raise UserError(f"{timm_name} has no hub weights", "pass weights=PATH")
        return VisionTransformer(**{**arch, **kwargs})

    entry.__name__ = entry.__qualname__ = timm_name
    entry.__module__ = __name__
    register_model(entry)
    return True


def convert_encoder(state: dict[str, torch.Tensor], adapter_prefix: str = "") -> tuple[str, dict[str, torch.Tensor]]:
    """(timm model name, timm state dict) for the encoder inside a released checkpoint."""
    import timm  # deferred: slow import
    from timm.models.vision_transformer import checkpoint_filter_fn  # deferred: slow import

    s = encoder_state(state, adapter_prefix)
    if "visual.class_embedding" in s:
        width = int(s["visual.class_embedding"].shape[0])
        patch = int(s["visual.conv1.weight"].shape[-1])
        if (width, patch) != (768, 16):
            raise UserError(f"CLIP encoder of width {width}, patch {patch}: only ViT-B/16 is mapped",
                            "import the projector only (--no-encoder)")
        name = "vit_base_patch16_clip_quickgelu_224"
    else:
        name = arch_name(encoder_arch(s))
        ensure_registered(name)
    model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True)
    mapped = checkpoint_filter_fn(dict(s), model)
    own = model.state_dict()
    mapped = {k: v for k, v in mapped.items() if k in own}
    missing = [k for k in own if k not in mapped]
    bad = [k for k, v in mapped.items() if tuple(v.shape) != tuple(own[k].shape)]
    if missing or bad:
        raise UserError(f"encoder weights do not map onto {name} ({len(missing)} missing, {len(bad)} wrong "
                        f"shapes, e.g. {(missing + bad)[:3]})", "import the projector only (--no-encoder)")
    model.load_state_dict(mapped, strict=True)
    return name, {k: v.contiguous() for k, v in model.state_dict().items()}
