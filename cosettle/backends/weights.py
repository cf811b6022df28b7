"""Getting encoder weights: timm's hub (online), a local file, or random init -- never a hang offline.

timm's ``pretrained=True`` retries for ~47 s without a network before failing. We check the local
Hugging Face cache and the hub's reachability (3 s) first and fail in seconds with a message naming the
file to download and the ``weights=PATH`` / ``--weights PATH`` way to use it.
"""
from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import UserError, WeightsUnavailable

log = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("COSETTLE_OFFLINE"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def cached_hub_file(repo_id: str, filename: str = "model.safetensors") -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache  # deferred: hub downloads only (optional)
    except ImportError:  # pragma: no cover
        return None
    for fn in (filename, "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        hit = try_to_load_from_cache(repo_id, fn)
        if isinstance(hit, str) and os.path.exists(hit):
            return hit
    return None


def create_pretrained(timm_name: str, **kwargs) -> torch.nn.Module:
    """``timm.create_model(pretrained=True)`` that fails fast (WeightsUnavailable) when offline."""
    import timm  # deferred: slow import

    cfg = timm.models.get_pretrained_cfg(timm_name)
    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    where = f"https://huggingface.co/{repo}" if repo else f"timm's pretrained source for {timm_name}"
    fix = (f"download model.safetensors from {where} and pass weights=PATH (CLI: --weights PATH), "
           "or use weights='random' / a weight-free backend such as 'dsift'")
    cached = bool(repo and cached_hub_file(repo))
    if not cached and not hub_reachable():
        raise WeightsUnavailable(f"pretrained weights for {timm_name} are not cached and the model hub "
                                 "is unreachable (offline)", fix)
    previous = os.environ.get("HF_HUB_OFFLINE")
    if cached:
        os.environ["HF_HUB_OFFLINE"] = "1"  # load from the local cache without any network round trip
    try:
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except Exception as err:  # network errors, missing files, gated repos
        raise WeightsUnavailable(f"could not load pretrained weights for {timm_name}: "
                                 f"{type(err).__name__}: {str(err).splitlines()[0][:160]}", fix) from None
    finally:
        if cached:
            if previous is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = previous


def read_state_dict(path: str | os.PathLike, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (.safetensors, .pth/.pt/.bin).

    ``allow_pickle=False`` loads with ``torch.load(weights_only=True)``: a file from the internet can
    not run code. Checkpoints holding pickled Python objects (e.g. argparse Namespaces) need the
    explicit opt-in.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"weights file not found: {path}", "check the path given as weights/--weights")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:
            raise WeightsUnavailable(f"cannot read safetensors file {path}: {err}", "re-download the file") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=not allow_pickle)
    except Exception as err:
        text = str(err)
        if not allow_pickle and ("Unsupported global" in text or "allowlist this global" in text):
            cls = text.split("GLOBAL ")[1].split(" ")[0] if "GLOBAL " in text else "a Python class"
            raise WeightsUnavailable(
                f"{path} contains pickled Python objects ({cls}) that safe loading refuses",
                "if you trust the file, opt in with allow_pickle=True (CLI: --trust-checkpoint)") from None
        msg = " ".join(text.split())[:160]
        raise WeightsUnavailable(f"cannot read checkpoint {path}: {type(err).__name__}: {msg}",
                                 "re-download the file") from None
    return unwrap_state_dict(obj)


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Find the tensor dict inside common wrappers ('model', 'state_dict', 'teacher') and strip
    DDP's ``module.`` prefix."""
    for key in ("model", "state_dict", "teacher", "model_state"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise WeightsUnavailable("checkpoint does not hold a state dict", "pass a timm/DINOv2 weights file")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def load_into_timm(model: torch.nn.Module, path: str | os.PathLike, allow_pickle: bool = False,
                   filter_fn=None, required: str = "patch_embed.proj.weight") -> None:
    """Load a timm-layout or official-layout file into a timm model.

    ``filter_fn(state, model)`` maps foreign layouts onto timm's (default: the ViT one, which handles
    official DINOv2 files and resamples the pos-embed; DINOv3 passes timm's Eva filter, which maps
    Meta's ``storage_tokens``/``ls1.gamma``/``qkv.bias`` layout). ``required`` must be among the keys.
    """
    if filter_fn is None:
        from timm.models.vision_transformer import checkpoint_filter_fn as filter_fn  # deferred: slow import

    state = read_state_dict(path, allow_pickle)
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    state = filter_fn(state, model)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in state and not k.startswith(("head", "fc."))]
    bad_shape = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad_shape or len(missing) > 0.5 * len(own) or (required and required in missing):
        raise WeightsUnavailable(
            f"{path} does not match the architecture ({len(missing)} missing keys, "
            f"{len(bad_shape)} wrong shapes, e.g. {(missing + bad_shape)[:3]})",
            "pass weights of the same model size/patch as the chosen backend")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        log.warning("weights %s: %d keys missing (kept at init): %s", path, len(result.missing_keys),
                    result.missing_keys[:5])
    log.info("loaded weights from %s", path)


def file_fingerprint(path: str | os.PathLike) -> str:
    """Cheap identity of a weights file for cache keys: absolute path, size, mtime."""
    p = Path(path).resolve()
    st = p.stat()
    return f"{p}:{st.st_size}:{int(st.st_mtime)}"


def create_timm_model(timm_name: str, weights: str, *, seed: int = 0, allow_pickle: bool = False,
                      filter_fn=None, required: str = "patch_embed.proj.weight", **kwargs) -> torch.nn.Module:
    """A timm model with ``weights`` = 'hub' (timm's pretrained, fails fast offline), 'random'
    (seeded init) or a local file (timm or the official layout, mapped by ``filter_fn``)."""
    import timm  # deferred: slow import


    try:
        if weights == "hub":
            return create_pretrained(timm_name, **kwargs)
        state = torch.random.get_rng_state()
        torch.manual_seed(int(seed))
        try:
            model = timm.create_model(timm_name, pretrained=False, **kwargs)
        finally:
            torch.random.set_rng_state(state)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise UserError(f"unknown timm model {timm_name!r}",
                            "see timm.list_models() or cosettle.list_backends()") from None
        raise
    if weights != "random":
        load_into_timm(model, weights, allow_pickle=allow_pickle, filter_fn=filter_fn, required=required)
    return model
