"""Argument groups shared by every CLI: backend selection and video input.

    parser = ArgumentParser(...)            # one-line errors: "error: ... -- see --help", exit 2
    add_backend_args(parser); add_video_args(parser)
    backend = backend_from_args(args); video = video_from_args(args)
"""
from __future__ import annotations

import argparse
import logging
import math
import sys

import torch

from .backends import list_backends, load_backend
from .errors import EXIT_USER_ERROR, UserError
from .io.video import read_video

log = logging.getLogger(__name__)

MAX_SIDE = 4096  # px per side of a backend input; beyond 4K frames a run only ends in a MemoryError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (``error: <problem> -- see --help``, exit 2), like every
    other bad input, instead of a usage block."""

    def error(self, message: str):  # noqa: D401 - argparse API
        text = " ".join(str(message).split())
        print(f"error: {text} -- see --help", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def positive_int(text: str) -> int:
    try:
        val = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if val < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {val}")
    return val


def positive_float(text: str) -> float:
    try:
        val = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (math.isfinite(val) and val > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return val


def device_arg(text: str) -> str:
    """cpu / cuda / cuda:N / mps, checked against this machine (no traceback later in torch)."""
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}, use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has no usable CUDA GPU, use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available here, use --device cpu")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"device type {dev.type!r} is not supported, use cpu or cuda")
    return text


def _resolution(text: str):
    """'476x854' (H x W) or a short-side int such as '240'; every side in [1, MAX_SIDE]."""
    if text.lower() in ("none", "native", "orig", "original"):
        return None
    try:
        sides = tuple(int(v) for v in text.lower().split("x")) if "x" in text.lower() else (int(text),)
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must be HxW or an int, got {text!r}") from None
    if len(sides) not in (1, 2):
        raise argparse.ArgumentTypeError(f"resolution must be HxW or an int, got {text!r}")
    if min(sides) < 1:
        raise argparse.ArgumentTypeError(f"resolution must be positive, got {text!r} (e.g. 240 or 476x854)")
    if max(sides) > MAX_SIDE:
        raise argparse.ArgumentTypeError(f"resolution {text!r} exceeds {MAX_SIDE} px a side")
    return sides if len(sides) == 2 else sides[0]


def add_backend_args(parser: argparse.ArgumentParser, default: str = "dsift",
                     resolution_default: str = "the video's size, snapped down to the backend's grid") -> None:
    """``resolution_default`` says what applies without --resolution in this CLI (e.g. a preset's)."""
    g = parser.add_argument_group("feature backend")
    g.add_argument("--backend", default=default,
                   help="backend name (see --list-backends), timm:<vit name>, or NAME+cosettle (default: %(default)s)")
    g.add_argument("--weights", default=None,
                   help="'hub' (timm's pretrained, default), 'random', or a local weights file (.safetensors/.pth)")
    g.add_argument("--projector", default=None, help="Co-Settle projector file for NAME+cosettle backends")
    g.add_argument("--stride", type=positive_int, default=None,
                   help="feature stride in input pixels (default: the backend's: dsift 8 = half its 16 px "
                        "patch, ViTs their patch size)")
    g.add_argument("--layer", type=int, default=None, help="ViT block / CNN stage to read (default: the backend's, or the one a projector file records; negative = from the end)")
    g.add_argument("--resolution", type=_resolution, default=None,
                   help=f"backend input size: HxW or short side in px, at most {MAX_SIDE} a side "
                        f"(default: {resolution_default})")
    g.add_argument("--device", type=device_arg, default=None,
                   help="cpu / cuda / cuda:1 (default: cuda if available)")
    g.add_argument("--norm", choices=("true", "false"), default=None,
                   help="ViTs: read tokens after the final LayerNorm (default: the backend's / the projector file's)")
    g.add_argument("--force-layer", action="store_true",
                   help="apply a projector even when --layer/--norm contradict the ones recorded in its file")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="allow pickled Python objects in checkpoint files (only for files you trust)")
    g.add_argument("--list-backends", action="store_true", help="print the backend names and exit")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def backend_kwargs_from_args(args: argparse.Namespace) -> dict:
    kw = {"device": args.device or default_device()}
    for key in ("weights", "stride", "layer", "resolution"):
        val = getattr(args, key, None)
        if val is not None:
            kw[key] = val
    if getattr(args, "norm", None) is not None:
        kw["norm"] = args.norm == "true"
    if getattr(args, "force_layer", False):
        kw["force_layer"] = True
    if getattr(args, "trust_checkpoint", False):
        kw["allow_pickle"] = True
    return kw


def backend_from_args(args: argparse.Namespace, name: str | None = None):
    name = name or args.backend
    _check_timm_name(name)
    _warn_unused_flags(args, name)
    kw = backend_kwargs_from_args(args)
    if "+" not in name:
        kw.pop("force_layer", None)
    if name == "dsift":
        kw.pop("weights", None), kw.pop("layer", None), kw.pop("allow_pickle", None), kw.pop("norm", None)
    return load_backend(name, projector=getattr(args, "projector", None), **kw)


def _check_timm_name(name: str) -> None:
    """``timm:<arch>`` must name a model timm knows (else "not cached, offline" would mislead)."""
    if not name.startswith("timm:"):
        return
    arch = name[5:].split("+", 1)[0]
    if arch.startswith("cosettle_") or ":" in arch or "/" in arch:  # on-demand / hub ids: the registry's
        return
    try:
        import timm  # deferred: slow import
    except ImportError:
        return
    if not timm.is_model(arch.split(".", 1)[0]):
        close = timm.list_models(f"*{arch.split('.', 1)[0][:8]}*")[:3]
        raise UserError(f"no such timm model {arch!r}",
                        f"see timm.list_models(); e.g. {', '.join(close)}" if close else
                        "see timm.list_models(), e.g. timm:vit_small_patch14_dinov2")


def _warn_unused_flags(args: argparse.Namespace, name: str) -> None:
    """Flags the chosen backend cannot use are named, never silently dropped."""
    if name == "dsift":
        for flag, attr in (("--weights", "weights"), ("--layer", "layer")):
            if getattr(args, attr, None) is not None:
                log.warning("%s is ignored: dsift is a weight-free descriptor without layers", flag)
        if getattr(args, "trust_checkpoint", False):
            log.warning("--trust-checkpoint is ignored: dsift loads no checkpoint")
    if getattr(args, "projector", None) and "+" not in name:
        raise UserError(f"--projector is only used by NAME+cosettle backends, not {name!r}",
                        f"use --backend {name}+cosettle --projector FILE, or drop --projector")


def check_grid_size(grid_size: int, height: int, width: int) -> None:
    """An N x N grid must fit the frame (one point per pixel at most): checked before any allocation."""
    if grid_size < 1 or grid_size > min(height, width):
        raise UserError(f"--grid-size {grid_size} does not fit the {height}x{width} (HxW) video",
                        f"use 1..{min(height, width)} (N x N points)")


def print_backends() -> None:
    for name, desc in list_backends().items():
        print(f"{name:22s} {desc}")
    print(f"{'timm:<name>':22s} any timm ViT, e.g. timm:vit_base_patch16_224.augreg_in21k")
    print(f"{'<name>+cosettle':22s} <name> with a Co-Settle projector (--projector PATH)")


def add_video_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    g = parser.add_argument_group("video")
    g.add_argument("--video", required=required, default=None,
                   help="video file (mp4/avi/mov/mkv/webm/gif) or folder of jpg/png frames")
    g.add_argument("--max-frames", type=positive_int, default=None, help="read at most this many frames")
    g.add_argument("--frame-stride", type=positive_int, default=1, help="keep every k-th frame (default 1)")
    g.add_argument("--fps", type=positive_float, default=None,
                   help="override the frame rate, > 0 (default: the file's; frame folders: 24)")


def video_from_args(args: argparse.Namespace):
    if not args.video:
        raise UserError("no video given", "pass --video PATH")
    return read_video(args.video, max_frames=args.max_frames, frame_stride=args.frame_stride, fps=args.fps)
