"""Projector files: ``<name>.safetensors`` (weights + the metadata JSON in its header) and a
``<name>.json`` sidecar with the same metadata for humans.

Metadata: base backend name, timm model, encoder layer/depth/norm (the tokens the projector was
trained on), dims, variant, patch size, training input size, mean/std, training config, git SHA.

``load_backend("dinov2_vitb14+cosettle", projector=PATH)`` -> :func:`load_projected_backend`, which
builds the base with the recorded layer/norm (unless overridden) and returns a ``ProjectedBackend``.
``load_backend("+cosettle", projector=PATH)`` (empty base name) uses the recorded base.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Any, Callable

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .backends.projected import ProjectedBackend
from .errors import UserError
from .io.atomic import atomic_path, write_json
from .projector import VARIANTS, Projector
from .provenance import git_sha
from .released import (convert_encoder, ensure_registered, extract_projector_state, is_ijepa, read_checkpoint,
                       split_checkpoint)

log = logging.getLogger(__name__)

FORMAT = "cosettle-projector"
VERSION = 1
DEFAULT_FILE = "projector.safetensors"


def resolve_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / DEFAULT_FILE
    return p


def save_projector(path: str | Path, projector: Projector, metadata: dict[str, Any]) -> Path:
    """Write weights + metadata atomically; returns the .safetensors path."""

    p = Path(path)
    if p.suffix != ".safetensors":
        p = p / DEFAULT_FILE if (p.is_dir() or not p.suffix) else p.with_suffix(".safetensors")
    meta = {"format": FORMAT, "version": VERSION, "variant": projector.variant,
            "in_dim": projector.in_dim, "out_dim": projector.out_dim,
            "num_parameters": projector.num_parameters(), "git_sha": git_sha(),
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    meta.update(metadata)
    state = {k: v.detach().float().cpu().contiguous() for k, v in projector.state_dict().items()}
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp:
        save_file(state, str(tmp), metadata={"cosettle": json.dumps(meta, default=str)})
    write_json(p.with_suffix(".json"), meta)
    return p


def read_metadata(path: str | Path) -> dict[str, Any]:
    p = resolve_path(path)
    if not p.is_file():
        raise UserError(f"projector file not found: {p}", "pass the .safetensors written by train_projector.py "
                        "or import_released.py")
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get("cosettle")
    except Exception as err:
        raise UserError(f"cannot read projector file {p}: {type(err).__name__}",
                        "the file is not a safetensors projector (corrupt or wrong file?)") from None
    if raw is None:
        side = p.with_suffix(".json")
        if not side.is_file():
            raise UserError(f"{p} has no Co-Settle metadata", "write it with cosettle.projector_io.save_projector")
        raw = side.read_text()
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise UserError(f"malformed metadata in projector file {p}", "re-export the projector") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{p} is not a Co-Settle projector file (format {meta.get('format')!r})",
                        "pass a projector written by this toolkit")
    return meta


def load_projector(path: str | Path) -> tuple[Projector, dict[str, Any]]:
    """(Projector in eval mode, metadata) from a projector file."""
    p = resolve_path(path)
    meta = read_metadata(p)
    if meta.get("variant") not in VARIANTS:
        raise UserError(f"unknown projector variant {meta.get('variant')!r} in {p}", "re-export the projector")
    proj = Projector(int(meta["in_dim"]), int(meta["out_dim"]), meta["variant"], init="torch", seed=0)
    try:
        state = load_file(str(p))
        proj.load_state_dict(state, strict=True)
    except Exception as err:
        raise UserError(f"cannot load projector weights from {p}: {str(err).splitlines()[0][:120]}",
                        "the file is corrupt or from another version") from None
    return proj.eval(), meta


def check_recorded_tokens(path: Path, meta: dict[str, Any], kwargs: dict[str, Any], force: bool = False) -> None:
    """An explicit ``layer``/``norm`` that contradicts the projector file's recorded tokens is an
    error (a projector trained on final-layer tokens is meaningless on block-15 tokens), unless
    ``force`` (CLI: --force-layer), which applies it anyway with a warning."""
    problems = []
    rec_layer, depth = meta.get("layer"), meta.get("depth")
    if kwargs.get("layer") is not None and rec_layer is not None:
        asked = int(kwargs["layer"])
        if depth:
            asked %= int(depth)
        if asked != int(rec_layer):
            problems.append(f"layer {kwargs['layer']} (the file records layer {rec_layer})")
    if kwargs.get("norm") is not None and meta.get("norm") is not None and bool(kwargs["norm"]) != bool(meta["norm"]):
        problems.append(f"norm={bool(kwargs['norm'])} (the file records norm={bool(meta['norm'])})")
    if not problems:
        return
    what = " and ".join(problems)
    if not force:
        raise UserError(f"projector {path} was trained on other tokens than the requested {what}",
                        "drop --layer/--norm to use the recorded ones, or pass --force-layer to apply it anyway")
    log.warning("projector %s applied to %s, against its recorded tokens (forced)", path, what)


def _same_at_float32(a, b) -> bool:
    return b is not None and len(a) == len(b) and all(abs(x - float(y)) <= 1e-6 * max(1.0, abs(x)) for x, y in zip(a, b))


def load_projected_backend(base_name: str, path: str | Path, load_base: Callable[..., Any], **backend_kwargs):
    """Base backend (with the layer/norm recorded in the projector's metadata unless given) +
    projector -> ``ProjectedBackend``. ``base_name`` may be empty to use the recorded base. ``load_base``:
    the registry's ``load_backend`` (passed in: the registry calls this function, so importing it here would
    make a circle)."""
    proj, meta = load_projector(path)
    p = resolve_path(path)
    recorded = meta.get("base_backend") or ""
    base_name = base_name or recorded
    if not base_name:
        raise UserError(f"{p} does not record its base backend", "use NAME+cosettle with an explicit NAME")
    if recorded and base_name != recorded:
        log.warning("projector %s was trained on %s, loading it on %s", p, recorded, base_name)
    if base_name.startswith("timm:"):
        ensure_registered(base_name[len("timm:"):])
    force = bool(backend_kwargs.pop("force_layer", False))
    if base_name != "dsift":
        check_recorded_tokens(p, meta, backend_kwargs, force)
        # no layer/norm asked (absent or None, as CLIs pass an unset --layer): the recorded ones
        if meta.get("layer") is not None and backend_kwargs.get("layer") is None:
            backend_kwargs["layer"] = int(meta["layer"])
        if meta.get("norm") is not None and backend_kwargs.get("norm") is None:
            backend_kwargs["norm"] = bool(meta["norm"])
        if meta.get("hypercolumn") and backend_kwargs.get("hypercolumn") is None:  # CNN stage combination
            backend_kwargs["hypercolumn"] = "+".join(str(int(k)) for k in meta["hypercolumn"])
        enc = meta.get("encoder_weights")
        w = meta.get("weights")
        if "weights" in backend_kwargs or base_name != recorded:
            pass
        elif enc:
            backend_kwargs["weights"] = str((p.parent / enc).resolve())  # released file's own encoder
        elif w == "random" or (w and Path(w).is_file()):
            backend_kwargs["weights"] = w  # the encoder weights it was trained on
        elif w and w not in ("hub", "pretrained"):
            log.warning("projector %s was trained with encoder weights %s, which is not available here; "
                        "using the default weights", p, w)
    base = load_base(base_name, **backend_kwargs)
    if base.feat_dim != proj.in_dim:
        raise UserError(f"projector {p} expects {proj.in_dim}-d features, {base_name} gives {base.feat_dim}",
                        f"use it with {recorded or 'its original backend'}")
    if meta.get("mean") and meta.get("std") and "mean" not in backend_kwargs:
        # the normalisation the projector was trained with (authors: ImageNet stats for every encoder); the
        # file holds it at float32 precision, so the base's own values are kept where they agree to that
        # precision: the base then keys the feature cache as the plain backend does, and base vs +Co-Settle
        # share one extraction (cosettle/cache.py)
        mean = tuple(float(v) for v in meta["mean"])
        std = tuple(float(v) for v in meta["std"])
        if not (_same_at_float32(mean, base.mean) and _same_at_float32(std, base.std)):
            base.mean, base.std = mean, std
    out_norm = "layernorm" if meta["variant"] in VARIANTS else "raw"
    return ProjectedBackend(base, proj.to(base.device), out_dim=proj.out_dim, tag="cosettle", output_norm=out_norm)


def import_released(checkpoint: str | Path, out: str | Path, *, allow_pickle: bool = False,
                    with_encoder: bool = True, base: str | None = None, layer: int = -1,
                    norm: bool | None = None) -> tuple[Path, dict[str, Any]]:
    """Convert the authors' ``checkpoint.pth`` into our projector file (+ ``encoder.safetensors`` when
    the checkpoint holds the encoder and ``with_encoder``). Returns (projector path, metadata).

    ``norm`` (whether the projector reads tokens after the encoder's final LayerNorm): None = the
    authors' evaluation path -- un-normed for I-JEPA (its normal passes skip the final norm, spec §7),
    normed for the other seven encoders."""

    ckpt = Path(checkpoint)
    state, args = split_checkpoint(read_checkpoint(ckpt, allow_pickle))
    proj_state, prefix = extract_projector_state(state)
    dim = int(proj_state["net.fc1.weight"].shape[1])
    proj = Projector(dim, int(proj_state["net.fc1.weight"].shape[0]), "linear", init="torch", seed=0)
    proj.load_state_dict(proj_state, strict=True)
    out_p = Path(out)
    if out_p.suffix != ".safetensors":
        out_p = out_p / DEFAULT_FILE
    if norm is None:
        norm = not is_ijepa(state, args, prefix)
    meta: dict[str, Any] = {"source": f"released:{ckpt.name}", "layer": layer, "norm": bool(norm),
                            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                            "released_args": args, "adapter_prefix": prefix,
                            "training": {k: args.get(k) for k in ("model", "temp", "lambda_reg", "asy_pos_ratio",
                                                                  "fusion_net", "blr", "epochs", "input_size",
                                                                  "clip_gap", "batch_size") if k in args}}
    if args.get("fusion_net") not in (None, "linear"):
        raise UserError(f"checkpoint was trained with fusion_net={args['fusion_net']!r}",
                        "only the default 'linear' projector layout is supported")
    if with_encoder:
        has_encoder = any("adapter." not in k for k in state)
        if not has_encoder:
            raise UserError(f"{ckpt} holds no encoder weights", "use --no-encoder with --base NAME")
        timm_name, enc = convert_encoder(state, prefix)
        enc_path = out_p.parent / "encoder.safetensors"
        out_p.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(enc_path) as tmp:
            save_file(enc, str(tmp), metadata={"source": str(ckpt.name), "timm_name": timm_name})
        meta.update(base_backend=base or f"timm:{timm_name}", timm_name=timm_name,
                    encoder_weights=enc_path.name)
        n_blocks = 1 + max(int(k.split(".")[1]) for k in enc if k.startswith("blocks."))
        meta.update(depth=n_blocks, layer=layer % n_blocks,
                    patch_size=int(enc["patch_embed.proj.weight"].shape[-1]))
    else:
        if not base:
            raise UserError("--no-encoder needs --base NAME (the backend the projector belongs to)",
                            "e.g. --base dino_vitb16")
        meta["base_backend"] = base
    return save_projector(out_p, proj, meta), meta
