#!/usr/bin/env python
"""Extract dense features of a video with any backend (the feature pipeline on its own).

    python scripts/extract_features.py --video clip.mp4 --backend dinov2_vits14 --stride 7 --out feats/

Writes ``features.npy`` (T, C, h, w) float16, ``geometry.json``, ``run_info.json`` and, with
``--pca-video``, ``features_pca.mp4`` (first three principal components as RGB, to eyeball features).
With ``--points pts.json`` it also checks the points against the video and writes each point's grid
coordinates to ``points_grid.json``.
"""
from __future__ import annotations

import argparse
import logging
import time

import cv2
import numpy as np

from cosettle.cache import FeatureCache
from cosettle.cli import (ArgumentParser, add_backend_args, add_video_args,  # one-line argparse errors
                          backend_from_args, positive_int, print_backends, video_from_args)
from cosettle.errors import cli_entry
from cosettle.io.atomic import OutputStage, write_json
from cosettle.io.queries import load_queries
from cosettle.io.video import check_fps, write_video
from cosettle.provenance import setup_logging, write_run_info

log = logging.getLogger("extract_features")


def pca_rgb(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """(T,C,h,w) -> (T,h,w,3) uint8: projection on the top-3 principal components (sign fixed so the
    component's largest-magnitude loading is positive), min-max scaled over the clip."""
    T, C, h, w = features.shape
    x = features.transpose(0, 2, 3, 1).reshape(-1, C).astype(np.float32)
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(len(x), size=min(len(x), 20000), replace=False)]
    mean = sample.mean(0)
    _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
    comps = vt[:3]
    comps *= np.sign(comps[np.arange(3), np.abs(comps).argmax(1)])[:, None]
    proj = (x - mean) @ comps.T
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    proj = np.clip((proj - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
    return (proj.reshape(T, h, w, 3) * 255).astype(np.uint8)


@cli_entry
def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_video_args(p, required=False)
    add_backend_args(p)
    p.add_argument("--points", default=None, help="optional points file (JSON/CSV) to validate and map to the grid")
    p.add_argument("--out", default="outputs/features", help="output folder (default: %(default)s)")
    p.add_argument("--cache-dir", default=None, help="feature cache folder (default: ~/.cache/cosettle/features)")
    p.add_argument("--no-cache", action="store_true", help="always recompute")
    p.add_argument("--chunk-size", type=positive_int, default=None, help="frames per forward pass")
    p.add_argument("--pca-video", action="store_true", help="also write features_pca.mp4")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.list_backends:
        print_backends()
        return 0
    setup_logging(args.verbose)
    # --out is validated before any work; the files are staged beside it and moved in once all are written
    with OutputStage(args.out) as stage:
        return run(args, stage)


def run(args, stage) -> int:
    if args.fps is not None:
        check_fps(args.fps)
    video = video_from_args(args)
    queries = None
    if args.points:
        queries = load_queries(args.points, len(video), video.height, video.width)
    backend = backend_from_args(args)
    geom = backend.geometry(video.height, video.width)
    log.info("%s on %d frames: %s", backend.name, len(video), geom)
    t0 = time.time()
    if args.no_cache:
        feats = backend.extract(video, chunk_size=args.chunk_size, progress=True).features
    else:
        feats = FeatureCache(args.cache_dir).get_or_compute(backend, video, args.chunk_size, progress=True).features
    seconds = time.time() - t0
    arr = feats.to(dtype=feats.dtype).numpy().astype(np.float16)
    out, tmp = stage.target, stage.dir
    np.save(tmp / "features.npy", arr)
    write_json(tmp / "geometry.json", geom.to_dict())
    if queries is not None:
        g = geom.pixel_to_grid(queries.xy)
        write_json(tmp / "points_grid.json", {"points": [
            {"name": n, "frame": int(t), "x": float(x), "y": float(y), "grid_x": float(gx), "grid_y": float(gy)}
            for n, (t, x, y), (gx, gy) in zip(queries.names, queries.txy, g)]})
    if args.pca_video:

        rgb = pca_rgb(arr.astype(np.float32))
        frames = [np.concatenate([np.asarray(video[t]), cv2.resize(rgb[t], (video.width, video.height),
                                                                  interpolation=cv2.INTER_NEAREST)], axis=1)
                  for t in range(len(video))]
        write_video(tmp / "features_pca.mp4", frames, video.fps)
    write_run_info(tmp, {"backend": backend.name, "backend_fields": backend.cache_fields(),
                         "geometry": geom.to_dict(), "frames": len(video), "seconds": round(seconds, 3)})
    stage.commit()
    print(f"features {tuple(arr.shape)} ({backend.name}, {seconds:.1f}s) -> {out}/features.npy")
    return 0


if __name__ == "__main__":
    main()
