#!/usr/bin/env python
"""Track points through a video with DINO-Tracker (or a baseline) on any feature backend.

    python scripts/track.py                                   # built-in demo clip, reports its error
    python scripts/track.py --video clip.mp4 --points pts.json [--backend dsift] [--preset fast]
    python scripts/track.py --video frames/ --grid-size 8 --grid-frame 0 --tracker flow

Writes into --out: tracks.npz / tracks.json / tracks.csv (original-video pixels, see
cosettle.io.tracks), overlay.mp4, config.yaml (the resolved settings), run_info.json and track.log.
Nothing is written there when an input is bad (one ``error:`` line, exit status 2): --out is checked
before any work, and the whole set is written into a hidden staging folder beside it and moved into
place only when every file is complete (the overlay's frame count checked). The DINO tracker's
preprocessing, checkpoints and refined features live in a work folder keyed by the video and the
settings (``--work-dir``; default ~/.cache/cosettle/tracker/...): re-running resumes.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP threads crawl on shared CPUs

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from cosettle.cli import (ArgumentParser, add_backend_args, add_video_args, backend_from_args,  # noqa: E402
                          check_grid_size, print_backends)
from cosettle.config import dump_yaml, load_yaml_dict  # noqa: E402
from cosettle.errors import UserError, cli_entry  # noqa: E402
from cosettle.provenance import close_file_logging, setup_logging, write_run_info  # noqa: E402

log = logging.getLogger("track")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_video_args(p, required=False)
    add_backend_args(p, default="dsift", resolution_default="the DINO preset's: fast 240 short side (never "
                                                            "upsampling), paper the native size")
    g = p.add_argument_group("tracking")
    g.add_argument("--points", default=None, help="query points, JSON or CSV (frame, x, y[, name])")
    g.add_argument("--grid-size", type=int, default=None,
                   help="track an N x N grid of points instead (N at most the frame's short side)")
    g.add_argument("--grid-frame", type=int, default=0, help="frame of the grid points (default 0)")
    g.add_argument("--tracker", default="dino-flow", choices=("dino-flow", "dino", "flow", "features", "static"),
                   help="dino-flow: DINO-Tracker fused with full-resolution optical flow (default); dino: the "
                        "pure method (head only, as in the paper); or a baseline (default: %(default)s)")
    g.add_argument("--preset", default="fast", choices=("fast", "paper"),
                   help="DINO-Tracker settings: fast (CPU) or paper (the original) (default: %(default)s)")
    g.add_argument("--config", type=Path, default=None, help="YAML with tracker config keys (over the preset)")
    g.add_argument("--iterations", type=int, default=None, help="training iterations (over the preset)")
    g.add_argument("--occlusion", choices=("fb", "anchors"), default=None,
                   help="occlusion rule: fb (O(N*T), default) or anchors (the paper's, O(N*T^2))")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: the preset's)")
    g.add_argument("--masks", default=None, help="optional folder of foreground masks (png, one per frame)")
    g.add_argument("--work-dir", default=None, help="DINO-Tracker work folder (default: content-keyed cache)")
    g.add_argument("--out", default=None, help="output folder (default: outputs/track, demo: outputs/demo)")
    g.add_argument("--no-overlay", action="store_true", help="skip overlay.mp4")
    g.add_argument("--verbose", action="store_true")
    return p


# the built-in demo (24 frames of 256x192) trains briefly so that it finishes in about a minute on 2 cores
DEMO_OVERRIDES = {"iterations": 120, "cyc_after": 60, "rbb_after": 60, "checkpoint_every": 40}


def resolve_config(args, demo: bool = False):
    from tracker.config import merge_dict, preset

    cfg = preset(args.preset)
    if demo and args.preset == "fast":
        cfg = cfg.replace(**DEMO_OVERRIDES)
    if args.config is not None:
        cfg = merge_dict(cfg, load_yaml_dict(args.config))
    over = {}
    if args.iterations is not None:
        if args.iterations < 0:
            raise UserError(f"--iterations must be >= 0, got {args.iterations}")
        over["iterations"] = args.iterations
    if args.seed is not None:
        over["seed"] = args.seed
    if args.occlusion is not None:
        over["occlusion"] = args.occlusion
    if args.resolution is not None:
        over["resolution"] = args.resolution
    if args.work_dir is not None:
        over["work_dir"] = args.work_dir
    from cosettle.cli import default_device

    over["device"] = args.device or default_device()  # the backend's default too
    return cfg.replace(**over) if over else cfg


def load_masks(folder, video) -> np.ndarray:
    import imageio.v3 as iio

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"mask folder not found: {folder}", "pass a folder of png masks, one per frame")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    idx = getattr(video, "frame_indices", None) or list(range(len(video)))
    if len(files) < max(idx) + 1:
        raise UserError(f"{folder} has {len(files)} masks, the video needs {max(idx) + 1}",
                        "one mask per frame of the source")
    out = []
    for i in idx:
        m = np.asarray(iio.imread(files[i]))
        m = m[..., 0] if m.ndim == 3 else m
        if m.dtype == bool:  # 1-bit PNG masks decode to bool
            m = m.astype(np.uint8) * 255
        if m.shape != (video.height, video.width):
            raise UserError(f"mask {files[i]} is {m.shape[1]}x{m.shape[0]}, video is {video.width}x{video.height}")
        out.append(m > 127)  # thresholded (JPEG ringing must not count as foreground)
    return np.stack(out)


def get_queries(args, video):
    from cosettle.io.queries import grid_queries, load_queries

    if args.points and args.grid_size:
        raise UserError("pass either --points or --grid-size, not both")
    if args.points:
        return load_queries(args.points, len(video), video.height, video.width)
    if args.grid_size:
        if not 0 <= args.grid_frame < len(video):
            raise UserError(f"--grid-frame {args.grid_frame} is out of range [0, {len(video) - 1}]")
        check_grid_size(args.grid_size, video.height, video.width)
        return grid_queries(video.height, video.width, args.grid_size, args.grid_frame)
    raise UserError("no query points", "pass --points FILE or --grid-size N")


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.list_backends:
        print_backends()
        return 0
    demo = not args.video
    from cosettle.io.atomic import OutputStage

    # --out is validated before any work; every file goes to a staging folder moved into place at the end
    with OutputStage(args.out or ("outputs/demo" if demo else "outputs/track")) as stage:
        try:
            return run(args, demo, stage)
        finally:
            close_file_logging()


def run(args, demo: bool, stage) -> int:
    from cosettle.io.video import check_fps, read_video

    out, tmp = stage.target, stage.dir  # files are written into tmp, reported under out
    if args.fps is not None:
        check_fps(args.fps)
    setup_logging(args.verbose, tmp / "track.log")
    stages: dict[str, float] = {}
    t_all = time.perf_counter()
    cfg = resolve_config(args, demo)  # bad config -> error before anything is written
    gt = None
    if demo:
        from cosettle.demo import make_demo_clip

        t0 = time.perf_counter()
        video_path, points_path, gt = make_demo_clip(tmp / "demo")
        args.video, args.points = str(video_path), str(points_path)
        shown = {"video": str(out / video_path.relative_to(tmp)), "points": str(out / points_path.relative_to(tmp))}
        stages["demo clip"] = time.perf_counter() - t0
        log.info("demo clip %s with %d points", shown["video"], len(gt))
    else:
        shown = {"video": str(args.video), "points": args.points}
    t0 = time.perf_counter()
    video = read_video(args.video, max_frames=args.max_frames, frame_stride=args.frame_stride, fps=args.fps)
    queries = get_queries(args, video)
    masks = load_masks(args.masks, video) if args.masks else None
    stages["read inputs"] = time.perf_counter() - t0
    backend = None
    is_dino = args.tracker in ("dino", "dino-flow")
    if is_dino or args.tracker == "features":
        t0 = time.perf_counter()
        backend = backend_from_args(args)
        stages["load backend"] = time.perf_counter() - t0
    if is_dino and len(video) < 2:
        raise UserError(f"the {args.tracker} tracker needs at least 2 frames", "use a longer video")
    if is_dino:  # refuse a run that cannot fit in memory before any work (never an OOM kill halfway)
        from tracker.memory import begin_run, check_memory

        est = check_memory(len(video), video.height, video.width, backend, cfg, num_queries=len(queries))
        begin_run(est["time_s"])  # each finished preprocessing stage then logs an overall ETA

    from tracker import build_tracker

    tracker = build_tracker(args.tracker, backend=backend, config=cfg if is_dino else None)
    frames = video.numpy()
    log.info("tracking %d points over %d frames (%dx%d) with %s%s", len(queries), len(video), video.width,
             video.height, args.tracker, f" on {backend.name}" if backend else "")
    t0 = time.perf_counter()
    tracker.fit(frames, masks=masks)
    fit_s = time.perf_counter() - t0
    timings = dict(getattr(tracker, "timings", {}) or {})
    if timings:
        stages.update({k: v for k, v in timings.items() if k != "track"})
    else:
        stages["fit"] = fit_s
    t0 = time.perf_counter()
    result = tracker.track(queries.txy)
    result.names = list(queries.names)
    stages["track"] = time.perf_counter() - t0

    # --- outputs (only now: a failure above leaves the output folder untouched) ----------------------
    from cosettle.io.tracks import save_tracks, write_overlay

    t0 = time.perf_counter()
    meta = {"tracker": args.tracker, "backend": backend.name if backend else None,
            "video": shown["video"], "preset": args.preset if is_dino else None}
    paths = save_tracks(tmp, result, video.fps, (video.height, video.width), meta)
    if not args.no_overlay:
        paths["overlay"] = write_overlay(tmp / "overlay.mp4", frames, result, video.fps)
    stages["write outputs"] = time.perf_counter() - t0
    from tracker.config import config_dict

    resolved = {"tracker": args.tracker, "backend": backend.name if backend else None,
                "backend_fields": backend.cache_fields() if backend else None,
                "video": shown["video"], "points": shown["points"], "grid_size": args.grid_size,
                "grid_frame": args.grid_frame, "max_frames": args.max_frames,
                "frame_stride": args.frame_stride, "dino": config_dict(cfg) if is_dino else None}
    dump_yaml(resolved, tmp / "config.yaml")
    paths["config"] = tmp / "config.yaml"
    extra = {"stages_s": {k: round(v, 3) for k, v in stages.items()},
             "total_s": round(time.perf_counter() - t_all, 3), "frames": len(video), "points": len(queries),
             "work_dir": str(getattr(tracker, "work_dir", "") or "")}
    if getattr(tracker, "train_coverage", None):  # supervision the DINO-Tracker training received
        extra["training_coverage"] = tracker.train_coverage
    if getattr(tracker, "fusion_stats", None) is not None:
        extra["fusion"] = tracker.fusion_stats.to_dict()
    err = None
    if gt is not None:
        err = float(np.linalg.norm(result.tracks - gt, axis=-1)[:, 1:].mean())
        extra["demo_mean_error_px"] = round(err, 3)
    paths["run_info"] = write_run_info(tmp, extra)
    # summary
    lines = ["", f"done in {time.perf_counter() - t_all:.1f} s  ({args.tracker} tracker"
             + (f", backend {backend.name}" if backend else "") + ")"]
    for k, v in stages.items():
        lines.append(f"  {k:<14s} {v:7.1f} s")
    if getattr(tracker, "work_dir", None):
        lines.append(f"  work folder    {tracker.work_dir}")
    for k, pth in paths.items():
        lines.append(f"  {k:<14s} {out / Path(pth).relative_to(tmp)}")
    lines.append(f"  {'log':<14s} {out / 'track.log'}")
    vis = float(result.visible.mean()) if result.visible.size else 0.0
    lines.append(f"  {len(queries)} points x {len(video)} frames, {100 * vis:.0f}% visible")
    if err is not None:
        lines.append(f"  demo: mean error vs ground truth {err:.2f} px (frames 1..{len(video) - 1})")
    log.info("\n".join(lines))
    close_file_logging()  # track.log complete before the set moves
    stage.commit()
    return 0


if __name__ == "__main__":
    main()
