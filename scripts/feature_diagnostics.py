#!/usr/bin/env python
"""Does a projector help? Cycle accuracy, inter/intra-video distances and effective rank of a base
backend and its Co-Settle projection, side by side (JSON + a short table).

    python scripts/feature_diagnostics.py --backend dinov2_vitb14 --projector runs/b14 --videos clips/
    python scripts/feature_diagnostics.py --backend dino_vitb16 --videos a.mp4 b.mp4 --max-frames 40

--videos takes video files, frame folders, folders of either, or a list file (as the trainer's --data).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cosettle.cli import ArgumentParser  # one-line argparse errors
from cosettle.errors import UserError, cli_entry
from cosettle.provenance import setup_logging


@cli_entry
def main(argv=None):
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", required=True, help="base backend (NAME or NAME+cosettle)")
    ap.add_argument("--projector", default=None, help="projector file/folder; omit to score the base only")
    ap.add_argument("--videos", nargs="+", required=True,
                    help="video files, frame folders, folders of either, or a list file (score held-out clips)")
    ap.add_argument("--weights", default=None, help="encoder weights (hub, PATH or random)")
    ap.add_argument("--layer", type=int, default=None,
                    help="ViT block / CNN stage of the base (default: the backend's, or the projector file's)")
    ap.add_argument("--max-frames", type=int, default=40, help="read at most this many frames per clip (default: %(default)s)")
    ap.add_argument("--max-clips", type=int, default=None, help="score at most this many clips (default: all)")
    ap.add_argument("--size", type=int, default=224, help="center-crop size (after resizing the short side)")
    ap.add_argument("--precision", default="auto", help="auto (bf16 on CPUs that have it, fp16 CUDA) | fp32 | bf16 | fp16")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)

    from cosettle.backends.registry import load_backend, split_projected_name
    from cosettle.data import discover_clips
    from cosettle.diagnostics import diagnose, format_table, prepare_frames
    from cosettle.io.atomic import write_json
    from cosettle.io.video import read_video

    t0 = time.perf_counter()
    name, named_projected, projector = split_projected_name(args.backend, args.projector)
    projector = projector or args.projector  # a plain NAME with --projector is scored projected too
    if named_projected and not projector:
        raise UserError(f"{args.backend} needs --projector PATH")
    kw = {"precision": args.precision, "resolution": (args.size, args.size)}
    if args.weights:
        kw["weights"] = args.weights
    if args.layer is not None:
        kw["layer"] = args.layer
    projected = None
    if projector:
        projected = load_backend(f"{name}+cosettle", projector=projector, **kw)
        base = projected.base
    else:
        base = load_backend(name, **kw)
    clips = discover_clips(args.videos, flag="--videos")[: args.max_clips]
    frames = [prepare_frames(read_video(c.path, max_frames=args.max_frames).numpy(), args.size) for c in clips]
    results = diagnose(frames, base, projected)
    report = {"backend": base.name, "projector": projector, "clips": len(frames),
              "frames_per_clip": [len(f) for f in frames], "size": args.size, "results": results,
              "seconds": round(time.perf_counter() - t0, 2)}
    print(format_table(results), file=sys.stderr)
    print(json.dumps(report))
    if args.out:
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    main()
