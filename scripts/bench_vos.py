#!/usr/bin/env python
"""Speed and memory of davis-vos label propagation (badja_eval/vos_propagation.py) on one clip. JSON on stdout.

Features come from the feature cache (extracted first when missing; that time is reported apart), then the clip
is propagated frame by frame from its first annotation -- soft labels, upsampling, arg-max, as the benchmark
does -- without scoring or writing masks. ``--random C`` times the propagation on random features of C channels
at the backend's grid instead (no extraction; same cost: the work does not depend on the values).

    python scripts/bench_vos.py --clip ../shared/data/davis480/parkour                       # dsift, 480p
    python scripts/bench_vos.py --clip ../shared/data/davis480/parkour --backend-args resolution=240
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from badja_eval.davis_vos import read_annotation
from badja_eval.vos_propagation import PropagationConfig, propagate_clip
from cosettle.backends.registry import load_backend
from cosettle.cache import FeatureCache
from cosettle.cli import ArgumentParser  # one-line argparse errors
from cosettle.errors import UserError, cli_entry
from cosettle.io.video import read_video
from cosettle.provenance import git_sha, peak_rss_mb

import torch  # noqa: E402  after cosettle, which sets OMP_WAIT_POLICY before torch loads OpenMP (idle threads sleep)


def _kv(text: str) -> dict:
    out = {}
    for item in [s for s in text.split(",") if s.strip()]:
        k, sep, v = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
        out[k.strip()] = yaml.safe_load(v)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="scripts/bench_vos.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", required=True, help="a DAVIS clip folder with JPEGImages/ and Annotations/")
    p.add_argument("--backend", default="dsift")
    p.add_argument("--backend-args", type=_kv, default={}, help="e.g. resolution=240")
    p.add_argument("--max-frames", type=int, help="only the first N frames")
    p.add_argument("--random", type=int, metavar="C", help="random features with C channels (no extraction)")
    p.add_argument("--feature-cache", help="feature cache folder (default $COSETTLE_CACHE/features)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--queue", type=int, default=7)
    p.add_argument("--neighborhood", type=int, default=12)
    p.add_argument("--tile", type=int, default=PropagationConfig.tile)
    return p


@cli_entry
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    clip = Path(args.clip)
    if not (clip / "JPEGImages").is_dir() or not (clip / "Annotations").is_dir():
        raise UserError(f"{clip} has no JPEGImages/ and Annotations/", "pass a DAVIS clip folder")
    video = read_video(clip / "JPEGImages", max_frames=args.max_frames)
    masks = sorted((clip / "Annotations").glob("*.png"))
    labels0 = read_annotation(masks[0])
    backend = load_backend(args.backend, **args.backend_args)
    geom = backend.geometry(video.height, video.width)
    T = len(video)
    cfg = PropagationConfig(topk=args.topk, n_last=args.queue, radius=args.neighborhood, tile=args.tile).check()
    extract_s = 0.0
    if args.random:
        g = torch.Generator().manual_seed(0)
        frames = (torch.randn(args.random, geom.grid_h, geom.grid_w, generator=g) for _ in range(T))
        channels = args.random
    else:
        cache = FeatureCache(args.feature_cache) if args.feature_cache else FeatureCache()
        t0 = time.perf_counter()
        feats = cache.get_or_compute(backend, video, progress=False)
        extract_s = time.perf_counter() - t0
        frames = (feats.features[t].float() for t in range(T))
        channels = int(feats.features.shape[1])
    t0 = time.perf_counter()
    n = 0
    with torch.inference_mode():
        for pred in propagate_clip(frames, labels0, geom, cfg):
            n += 1
    prop_s = time.perf_counter() - t0
    out = {"clip": clip.name, "frames": T, "propagated_frames": n, "image_hw": [video.height, video.width],
           "backend": args.backend, "backend_args": args.backend_args, "input_hw": [geom.input_h, geom.input_w],
           "grid_hw": [geom.grid_h, geom.grid_w], "stride": geom.stride, "channels": channels,
           "features": "random" if args.random else "feature cache",
           "feature_cache_s": round(extract_s, 2), "propagation_s": round(prop_s, 2),
           "propagation_s_per_frame": round(prop_s / max(n, 1), 4),
           "propagation_s_per_100_frames": round(100 * prop_s / max(n, 1), 1),
           "settings": {"topk": cfg.topk, "queue": cfg.n_last, "neighborhood": cfg.radius, "tile": cfg.tile},
           "peak_rss_mb": round(peak_rss_mb(), 1), "torch_threads": torch.get_num_threads(),
           "load_average": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__,
           "numpy": np.__version__, "python": platform.python_version(), "git": git_sha()}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
