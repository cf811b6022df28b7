"""Argument groups shared by every CLI: backend selection and video input.

    add_backend_args(parser); add_video_args(parser)
    backend = backend_from_args(args); video = video_from_args(args)
"""
from __future__ import annotations

import argparse

from .backends import load_backend
from .errors import UserError


def _resolution(text: str):
    """'476x854' (H x W) or a short-side int such as '240'."""
    if text.lower() in ("none", "native", "orig", "original"):
        return None
    if "x" in text.lower():
        h, w = text.lower().split("x")
        try:
            return int(h), int(w)
        except ValueError:
            raise argparse.ArgumentTypeError(f"resolution must be HxW or an int, got {text!r}") from None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must be HxW or an int, got {text!r}") from None


def add_backend_args(parser: argparse.ArgumentParser, default: str = "dsift") -> None:
    g = parser.add_argument_group("feature backend")
    g.add_argument("--backend", default=default,
                   help="backend name (see --list-backends), timm:<vit name>, or NAME+cosettle (default: %(default)s)")
    g.add_argument("--weights", default=None,
                   help="'hub' (timm's pretrained, default), 'random', or a local weights file (.safetensors/.pth)")
    g.add_argument("--projector", default=None, help="Co-Settle projector file for NAME+cosettle backends")
    g.add_argument("--stride", type=int, default=None, help="feature stride in input pixels (default: patch size)")
    g.add_argument("--layer", type=int, default=None, help="ViT block to read (negative = from the end)")
    g.add_argument("--resolution", type=_resolution, default=None,
                   help="backend input size: HxW or short side in px (default: the video's, snapped down)")
    g.add_argument("--device", default=None, help="cpu / cuda / cuda:1 (default: cuda if available)")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="allow pickled Python objects in checkpoint files (only for files you trust)")
    g.add_argument("--list-backends", action="store_true", help="print the backend names and exit")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def backend_kwargs_from_args(args: argparse.Namespace) -> dict:
    kw = {"device": args.device or default_device()}
    for key in ("weights", "stride", "layer", "resolution"):
        val = getattr(args, key, None)
        if val is not None:
            kw[key] = val
    if getattr(args, "trust_checkpoint", False):
        kw["allow_pickle"] = True
    return kw


def backend_from_args(args: argparse.Namespace, name: str | None = None):
    name = name or args.backend
    kw = backend_kwargs_from_args(args)
    if name == "dsift":
        kw.pop("weights", None), kw.pop("layer", None), kw.pop("allow_pickle", None)
    return load_backend(name, projector=getattr(args, "projector", None), **kw)


def print_backends() -> None:
    from .backends import list_backends

    for name, desc in list_backends().items():
        print(f"{name:22s} {desc}")
    print(f"{'timm:<name>':22s} any timm ViT, e.g. timm:vit_base_patch16_224.augreg_in21k")
    print(f"{'<name>+cosettle':22s} <name> with a Co-Settle projector (--projector PATH)")


def add_video_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    g = parser.add_argument_group("video")
    g.add_argument("--video", required=required, default=None,
                   help="video file (mp4/avi/mov/mkv/webm/gif) or folder of jpg/png frames")
    g.add_argument("--max-frames", type=int, default=None, help="read at most this many frames")
    g.add_argument("--frame-stride", type=int, default=1, help="keep every k-th frame")
    g.add_argument("--fps", type=float, default=None, help="override the frame rate (frame folders: 24)")


def video_from_args(args: argparse.Namespace):
    from .io.video import read_video

    if not args.video:
        raise UserError("no video given", "pass --video PATH")
    return read_video(args.video, max_frames=args.max_frames, frame_stride=args.frame_stride, fps=args.fps)
