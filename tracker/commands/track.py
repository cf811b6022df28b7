#!/usr/bin/env python
"""Track points through a video with DINO-Tracker (or a baseline) on any feature backend.

    python scripts/track.py                                   # built-in demo clip, reports its error
    python scripts/track.py --video clip.mp4 --points pts.json [--backend dsift] [--preset fast]
    python scripts/track.py --video frames/ --grid-size 8 --grid-frame 0 --tracker flow

    python scripts/track.py --video clip.mp4 --grid-size 20 --grid-mask mask.png            # grid on the object
    python scripts/track.py --video clip.mp4 --points-from-mask mask.png --num-points 30 --query-frame 40
    python scripts/track.py --cache-info | --clean-cache [--older-than DAYS]

Writes into --out: tracks.npz / tracks.json / tracks.csv (original-video pixels, see
cosettle.io.tracks), overlay.mp4 and overlay.png (first / middle / last frame), config.yaml (the resolved
settings), run_info.json and track.log. Logs and progress bars go to stderr; the summary (files,
points x frames, visible share, time) to stdout (--json: as JSON; --quiet: nothing else on stderr).
Nothing is written there when an input is bad (one ``error:`` line, exit status 2): --out is checked
before any work, and the whole set is written into a hidden staging folder beside it and moved into
place only when every file is complete (the overlay's frame count checked). The DINO tracker's
preprocessing, checkpoints and refined features live in a work folder keyed by the video and the
settings (``--work-dir``; default ~/.cache/cosettle/tracker/...): re-running resumes. After each run
the least recently used work folders are evicted down to the cache cap (default 5 GB, --cache-max-gb).

Points file (--points), frame = 0-based index of the video as read, x/y = pixels (0,0 = the top-left
pixel's centre), name optional:
  pts.json   {"points": [{"frame": 0, "x": 120.5, "y": 80, "name": "nose"},
                         {"frame": 40, "x": 300, "y": 210}]}
  pts.csv    frame,x,y,name
             0,120.5,80,nose
             40,300,210,tail
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np

from cosettle.cli import (ArgumentParser, add_backend_args, add_video_args, backend_from_args, check_grid_size,
                          default_device, print_backends)
from cosettle.config import config_from_dict, dump_yaml, load_yaml_dict, to_dict
from cosettle.demo import make_demo_clip
from cosettle.errors import UserError, cli_entry
from cosettle.frames import as_frames
from cosettle.io.atomic import OutputStage
from cosettle.io.mask_queries import load_mask, mask_grid_queries, points_from_mask
from cosettle.io.masks import load_mask_folder
from cosettle.io.overlay import STYLES, write_overlay, write_still
from cosettle.io.queries import grid_queries, load_queries
from cosettle.io.tracks import save_tracks
from cosettle.io.video import check_fps, read_video
from cosettle.provenance import close_file_logging, setup_logging, write_run_info
from tracker import build_tracker
from tracker.api import cache_root
from tracker.base import protocol_gaps
from tracker.config import config_dict, merge_dict, preset
from tracker.eta import RunETA, StageTimes
from tracker.memory import check_memory, time_plan
from tracker.registry import tracker_entry, tracker_names, trackers_help
from tracker.workdirs import clean, enforce_cap, folder_bytes, human_age, human_bytes, list_work_folders

log = logging.getLogger("track")
CACHE_CAP_ENV = "COSETTLE_CACHE_MAX_GB"
# the work cache's default cap: about ten 141-frame 480p clips (~500 MB of work each); four demo-sized runs left
# 470 MB unannounced before there was a default
DEFAULT_CACHE_MAX_GB = 5.0


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_video_args(p, required=False)
    add_backend_args(p, default="dsift", resolution_default="the DINO preset's: fast 240 short side (never "
                                                            "upsampling), paper the native size")
    g = p.add_argument_group("tracking")
    g.add_argument("--points", default=None, metavar="FILE",
                   help='query points: .json {"points": [{"frame": 0, "x": 120.5, "y": 80, "name": "nose"}, ...]} '
                        "or .csv with the header frame,x,y[,name]; frame 0-based, x/y in pixels (examples above)")
    g.add_argument("--grid-size", type=int, default=None, metavar="N",
                   help="track an N x N grid of points instead (N at most the frame's short side)")
    g.add_argument("--grid-mask", default=None, metavar="MASK.png",
                   help="with --grid-size: keep only the grid points inside this object mask (png of the query "
                        "frame, the video's size)")
    g.add_argument("--points-from-mask", default=None, metavar="MASK.png",
                   help="track --num-points points spread over this object mask (png of the query frame; "
                        "--seed picks the spread, default 0)")
    g.add_argument("--num-points", type=int, default=20, metavar="K",
                   help="points for --points-from-mask (default %(default)s)")
    g.add_argument("--grid-frame", "--query-frame", dest="grid_frame", type=int, default=0, metavar="FRAME",
                   help="frame of the grid / mask points (default 0); tracks run forwards and backwards from it")
    g.add_argument("--tracker", default=tracker_names()[0], choices=tracker_names(),
                   help=f"{trackers_help()} (default: %(default)s)")
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
    g.add_argument("--no-overlay", action="store_true", help="skip overlay.mp4 and overlay.png")
    g.add_argument("--overlay-style", choices=STYLES, default="trails",
                   help="trails: named points, fading trails, a legend; rainbow: colours by query position "
                        "(DINO-Tracker's picture, for grids) (default: %(default)s)")
    g.add_argument("--verbose", action="store_true", help="debug logs on stderr")
    g.add_argument("--quiet", action="store_true", help="no logs or progress bars on stderr (only warnings); "
                                                        "the summary still goes to stdout")
    g.add_argument("--json", action="store_true", help="print the summary on stdout as one JSON object")
    c = p.add_argument_group("work cache (~/.cache/cosettle/tracker, or $COSETTLE_CACHE/tracker, or "
                                  "$COSETTLE_TRACKER_CACHE)")
    c.add_argument("--cache-info", action="store_true", help="list the work folders (size, age) and exit")
    c.add_argument("--clean-cache", action="store_true", help="remove the work folders and exit "
                                                              "(folders of a running job are kept)")
    c.add_argument("--older-than", type=float, default=None, metavar="DAYS",
                   help="with --clean-cache: only folders unused for more than DAYS days")
    c.add_argument("--cache-max-gb", type=float, default=None, metavar="GB",
                   help=f"after a run, evict the least recently used work folders until the cache is at most GB "
                        f"(default ${CACHE_CAP_ENV} if set, else {DEFAULT_CACHE_MAX_GB:g}; inf: no cap)")
    return p


# the built-in demo (24 frames of 256x192) trains briefly so that it finishes in about a minute on 2 cores
DEMO_OVERRIDES = {"iterations": 120, "cyc_after": 60, "rbb_after": 60, "checkpoint_every": 40}


def resolve_config(args, demo: bool = False):
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

    over["device"] = args.device or default_device()  # the backend's default too
    return cfg.replace(**over) if over else cfg


def check_query_args(args) -> None:
    """Query flags that contradict each other: an error before any work (also before the demo clip)."""
    modes = [m for m, on in (("--points", args.points), ("--grid-size", args.grid_size),
                             ("--points-from-mask", args.points_from_mask)) if on]
    if len(modes) > 1:
        raise UserError(f"pass one of --points, --grid-size, --points-from-mask, not {' and '.join(modes)}")
    if args.grid_mask and not args.grid_size:
        raise UserError("--grid-mask needs --grid-size N", "e.g. --grid-size 20 --grid-mask mask.png")
    if not args.video and (args.grid_mask or args.points_from_mask):
        raise UserError("mask queries need --video (the demo clip has its own points)", "pass --video PATH")


def cut_note(args, num_frames: int) -> str | None:
    """Why a query frame can lie beyond the clip as read, and the fix: --max-frames / --frame-stride cut it."""
    notes = []
    if args.max_frames is not None and num_frames >= args.max_frames:
        notes.append(f"--max-frames {args.max_frames} cut the clip to frames 0-{num_frames - 1}")
    if args.frame_stride > 1:
        notes.append(f"--frame-stride {args.frame_stride} keeps every {args.frame_stride}th frame (frame k of the "
                     f"clip as read is frame {args.frame_stride}*k of the source)")
    if not notes:
        return None
    fix = "raise or drop --max-frames" if args.max_frames is not None else ""
    if args.frame_stride > 1:
        fix += (" and " if fix else "") + "give frames of the clip as read (source frame / stride)"
    return "; ".join(notes) + f" -- {fix}"


def get_queries(args, video):
    check_query_args(args)
    note = cut_note(args, len(video))
    if args.points:
        return load_queries(args.points, len(video), video.height, video.width, frame_note=note)
    if args.grid_size or args.points_from_mask:
        if not 0 <= args.grid_frame < len(video):
            msg = f"--query-frame {args.grid_frame} is out of range [0, {len(video) - 1}]"
            if note:
                what, fix = note.split(" -- ")
                raise UserError(f"{msg}: {what}", fix)
            raise UserError(msg)
    if args.grid_size:
        check_grid_size(args.grid_size, video.height, video.width)
        if args.grid_mask:
            mask = load_mask(args.grid_mask, video.height, video.width, "--grid-mask")
            return mask_grid_queries(mask, args.grid_size, args.grid_frame)
        return grid_queries(video.height, video.width, args.grid_size, args.grid_frame)
    if args.points_from_mask:
        mask = load_mask(args.points_from_mask, video.height, video.width, "--points-from-mask")
        return points_from_mask(mask, args.num_points, args.grid_frame, seed=args.seed or 0)
    raise UserError("no query points", "pass --points FILE, --grid-size N or --points-from-mask MASK.png")


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.list_backends:
        print_backends()
        return 0
    if args.older_than is not None and not args.clean_cache:
        raise UserError("--older-than applies to --clean-cache", "e.g. --clean-cache --older-than 30")
    if args.cache_info or args.clean_cache:
        return cache_command(args)
    cache_cap_gb(args)  # a bad cap is an error before any work
    check_query_args(args)
    demo = not args.video

    # --out is validated before any work; every file goes to a staging folder moved into place at the end
    with OutputStage(args.out or ("outputs/demo" if demo else "outputs/track")) as stage:
        quiet_env = os.environ.get("TQDM_DISABLE")
        try:
            return run(args, demo, stage)
        finally:
            close_file_logging()
            if quiet_env is None:  # in-process callers (tests) get their bars back
                os.environ.pop("TQDM_DISABLE", None)


def cache_cap_gb(args) -> float:
    """--cache-max-gb, else $COSETTLE_CACHE_MAX_GB, else ``DEFAULT_CACHE_MAX_GB`` (inf: no cap)."""
    val = args.cache_max_gb
    if val is None and os.environ.get(CACHE_CAP_ENV):
        try:
            val = float(os.environ[CACHE_CAP_ENV])
        except ValueError:
            raise UserError(f"{CACHE_CAP_ENV}={os.environ[CACHE_CAP_ENV]!r} is not a number",
                            f"set it to gigabytes, e.g. {CACHE_CAP_ENV}=20") from None
    if val is None:
        return DEFAULT_CACHE_MAX_GB
    if not val >= 0:  # also nan
        raise UserError(f"the cache cap must be a number of GB >= 0, got {val}",
                        "e.g. --cache-max-gb 20 (inf: no cap)")
    return val


def cache_command(args) -> int:
    """--cache-info / --clean-cache: a table on stdout (JSON with --json)."""

    root = cache_root()
    if args.older_than is not None and not (np.isfinite(args.older_than) and args.older_than >= 0):
        raise UserError(f"--older-than must be a number of days >= 0, got {args.older_than}")
    if args.clean_cache:
        removed, skipped = clean(root, args.older_than)
        freed = sum(f.bytes for f in removed)
        if args.json:
            print(json.dumps({"cache": str(root), "removed": [str(f.path) for f in removed],
                              "kept_in_use": [str(f.path) for f in skipped], "freed_bytes": freed}))
            return 0
        what = "" if args.older_than is None else f" unused for more than {args.older_than:g} days"
        print(f"removed {len(removed)} work folder(s){what} from {root}, freed {human_bytes(freed)}")
        for f in skipped:
            print(f"  kept {f.path} (a run is using it)")
        return 0
    folders = list_work_folders(root)
    total = sum(f.bytes for f in folders)
    if args.json:
        print(json.dumps({"cache": str(root), "total_bytes": total,
                          "folders": [{"path": str(f.path), "bytes": f.bytes, "age_days": round(f.age_days(), 3)}
                                      for f in folders]}))
        return 0
    print(f"{root}: {len(folders)} work folder(s), {human_bytes(total)}")
    for f in reversed(folders):  # most recently used first
        print(f"  {human_bytes(f.bytes):>9s}  used {human_age(f.age_days()):>8s} ago  {f.path.name}")
    if folders:
        print("remove with --clean-cache [--older-than DAYS]; cap with --cache-max-gb GB")
    return 0


def tracker_config(args, entry, demo: bool = False):
    """Every tracker's config through the registry (as the evaluator builds it): DINO-Tracker's preset with the
    flags (``resolve_config``), else the tracker's own ``config_class`` with ``--config``'s keys; None for a
    tracker that takes no settings (then ``--config`` is an error, not silently dropped)."""
    if entry.dino_config:
        return resolve_config(args, demo)
    if entry.config_class is None:
        if args.config is not None:
            raise UserError(f"the {entry.name} tracker takes no settings, but --config {args.config} was given",
                            "drop --config")
        return None
    data = load_yaml_dict(args.config) if args.config is not None else {}
    return config_from_dict(entry.config_class, data, source=f"{args.config} ({entry.name} tracker)")


def run(args, demo: bool, stage) -> int:
    out, tmp = stage.target, stage.dir  # files are written into tmp, reported under out
    if args.fps is not None:
        check_fps(args.fps)
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"  # bars of every stage, also those not passed a progress flag
    setup_logging(args.verbose, tmp / "track.log", quiet=args.quiet)
    entry = tracker_entry(args.tracker)
    is_dino = entry.dino_config  # configured by the DINO-Tracker preset
    # the run's clock, stage times and (DINO trackers) time estimate, in one object passed to the tracker's fit;
    # the estimate is planned once the video and the backend are known
    run_eta = RunETA() if is_dino else StageTimes()
    stages = run_eta.times  # the run's stage times (the project's trackers time theirs into it too)
    cfg = tracker_config(args, entry, demo)  # bad config -> error before anything is written
    gt = None
    if demo:
        with run_eta.timed("demo clip"):
            video_path, points_path, gt = make_demo_clip(tmp / "demo")
        args.video, args.points = str(video_path), str(points_path)
        shown = {"video": str(out / video_path.relative_to(tmp)), "points": str(out / points_path.relative_to(tmp))}
        # the clip is read from the staging folder, which moves to --out at the end: the log names where it stays
        log.info("demo clip made: %d points, kept as %s", len(gt), shown["video"])
    else:
        shown = {"video": str(Path(args.video).resolve()), "points": args.points and str(Path(args.points).resolve())}
    with run_eta.timed("read inputs"):
        video = read_video(args.video, max_frames=args.max_frames, frame_stride=args.frame_stride, fps=args.fps,
                           shown_as=shown["video"] if demo else None)
        queries = get_queries(args, video)
        frame_idx = getattr(video, "frame_indices", None) or range(len(video))
        masks = load_mask_folder(args.masks, frame_idx, video.height, video.width) if args.masks else None
    backend = None
    if entry.needs_backend:
        with run_eta.timed("load backend"):
            backend = backend_from_args(args)
    # the one video check and conversion (cosettle.frames.as_frames), before the memory check; the tracker's
    # fit reuses these frames and their digest
    frames = as_frames(video, min_frames=2 if is_dino else 1, who=f"the {args.tracker} tracker's video")
    if is_dino:  # refuse a run that cannot fit in memory before any work (never an OOM kill halfway)
        check_memory(len(video), video.height, video.width, backend, cfg, num_queries=len(queries))
        # the first estimate is logged by the fit once it has seen what its work folder holds (tracker/eta.py)
        run_eta.set_plan(time_plan(len(video), video.height, video.width, backend, cfg, args.tracker,
                                   outputs=True, overlay=not args.no_overlay, num_queries=len(queries)))

    tracker = build_tracker(args.tracker, backend=backend, config=cfg, progress=not args.quiet)
    gaps = protocol_gaps(tracker)
    if gaps:
        raise UserError(f"the {args.tracker} tracker lacks {', '.join(gaps)} of the tracker protocol",
                        "see tracker/base.py (PointTracker) and docs/development.md#adding-a-tracker")
    log.info("tracking %d points over %d frames (%dx%d HxW) with %s%s", len(queries), len(video), video.height,
             video.width, args.tracker, f" on {backend.name}" if backend else "")
    tracker.fit(frames, masks=masks, eta=run_eta)
    track_before = stages.get("track", 0.0)
    run_eta.begin("track")
    # dino-flow trains inside track() when its gate asks for it (tracker/fusion_gate.py): those stages are timed
    # inside this block, so they show apart and "track" keeps only the tracking's own time
    with run_eta.timed("track"):
        result = tracker.track(queries)  # the Queries object: the result carries their names
    run_eta.finish("track", stages["track"] - track_before)
    report = tracker.report()
    if report.timings is not stages:  # a tracker that keeps its own times (not in the eta passed to its fit)
        stages.update({k: v for k, v in report.timings.items() if k not in stages})

    # --- outputs (only now: a failure above leaves the output folder untouched) ----------------------

    # what was asked (config.yaml; the tracks files' metadata is part of it)
    settings = {"tracker": args.tracker, "backend": backend.name if backend else None,
                "backend_fields": backend.cache_fields() if backend else None,
                "video": shown["video"], "points": shown["points"], "grid_size": args.grid_size,
                "grid_mask": args.grid_mask and str(Path(args.grid_mask).resolve()),
                "points_from_mask": args.points_from_mask and str(Path(args.points_from_mask).resolve()),
                "num_points": args.num_points if args.points_from_mask else None,
                "grid_frame": args.grid_frame, "max_frames": args.max_frames,
                "frame_stride": args.frame_stride, "overlay_style": args.overlay_style,
                "preset": args.preset if is_dino else None,
                "dino": config_dict(cfg) if is_dino else None,
                "tracker_config": to_dict(cfg) if cfg is not None and not is_dino else None}
    run_eta.begin("write outputs")
    with run_eta.timed("write outputs"):
        paths = save_tracks(tmp, result, video.fps, (video.height, video.width),
                            {k: settings[k] for k in ("tracker", "backend", "video", "preset")})
        if not args.no_overlay:
            pixels = frames.array
            paths["overlay"] = write_overlay(tmp / "overlay.mp4", pixels, result, video.fps, style=args.overlay_style)
            paths["still"] = write_still(tmp / "overlay.png", pixels, result, style=args.overlay_style)
    run_eta.finish("write outputs", stages["write outputs"])
    dump_yaml(settings, tmp / "config.yaml")
    paths["config"] = tmp / "config.yaml"
    paths["run_info"] = tmp / "run_info.json"
    paths["log"] = tmp / "track.log"

    # what happened: ONE record, printed on stdout (--json: as is) and written to run_info.json (with the versions)
    record = {"tracker": args.tracker, "backend": backend.name if backend else None,
              "points": len(queries), "frames": len(video), "size_hw": [video.height, video.width],
              "visible_share": round(float(result.visible.mean()) if result.visible.size else 0.0, 4),
              "visible_entries": int(result.visible.sum()),
              "stages_s": {k: round(v, 3) for k, v in stages.items()}}
    if report.work_dir is not None:
        work = Path(report.work_dir)
        record["work_dir"] = str(work.resolve())
        record["work_dir_bytes"] = folder_bytes(work)
        record["cache_dir"] = str(cache_root().resolve())
    if is_dino:  # how the estimate fared (docs/tracking-cli.md "Time estimate"): seconds since the run's start
        record["time_estimates"] = [{"at_s": round(a, 2), "left_s": round(b, 2)} for a, b in run_eta.history]
    if gt is not None:
        record["demo_mean_error_px"] = round(float(np.linalg.norm(result.tracks - gt, axis=-1)[:, 1:].mean()), 3)
    record.update(report.info)  # e.g. training_coverage (DINO-Tracker), fusion (dino-flow)
    record["outputs"] = {k: str(out / Path(p).relative_to(tmp)) for k, p in paths.items()}
    if demo:
        record["outputs"]["demo_clip"] = shown["video"]
    if report.work_dir is not None:
        cap = cache_cap_gb(args)
        removed, now = enforce_cap(cache_root(), cap * 1024 ** 3, keep={Path(report.work_dir)})
        record["cache_evicted"] = [str(f.path) for f in removed]
        record["cache_bytes"] = now
        record["cache_cap_gb"] = cap if np.isfinite(cap) else None  # None: no cap (JSON has no infinity)
    record["total_s"] = round(run_eta.elapsed(), 3)  # the one total: the run's clock, as the estimates' times
    write_run_info(tmp, record)
    log.info("finished in %.1f s; summary on stdout", record["total_s"])
    close_file_logging()  # track.log complete before the set moves
    stage.commit()
    emit_summary(record, args.json)
    return 0


def share_text(part: int, whole: int) -> str:
    """A percentage that never rounds to a claim: "100%" only when every entry is, "0%" only when none is
    (1 of 240 not visible is "99.6%", which "{:.0f}%" printed as "100%")."""
    if whole == 0 or part in (0, whole):
        return f"{100 * part / max(whole, 1):.0f}%"
    pct = 100 * part / whole
    digits = 0
    while round(pct, digits) in (0, 100):  # one more decimal until the number is neither 0 nor 100
        digits += 1
    return f"{pct:.{digits}f}%"


def emit_summary(summary: dict, as_json: bool) -> None:
    """What a person reads, on stdout (logs stay on stderr): files, points x frames, visible share, time."""
    if as_json:
        print(json.dumps(summary))
        return

    s = summary
    lines = [f"done in {s['total_s']:.1f} s  ({s['tracker']} tracker" + (f", backend {s['backend']}" if s["backend"]
                                                                         else "") + ")",
             f"  {s['points']} points x {s['frames']} frames ({s['size_hw'][0]}x{s['size_hw'][1]} HxW), "
             f"{share_text(s['visible_entries'], s['points'] * s['frames'])} visible"]
    if "demo_mean_error_px" in s:
        lines.append(f"  demo: mean error vs ground truth {s['demo_mean_error_px']:.2f} px "
                     f"(frames 1..{s['frames'] - 1})")
    lines.append("  time: " + ", ".join(f"{k} {v:.1f} s" for k, v in s["stages_s"].items()))
    if "work_dir" in s:
        cap = "no cap" if s["cache_cap_gb"] is None else f"cap {s['cache_cap_gb']:g} GB"
        lines.append(f"  work folder    {s['work_dir']} ({human_bytes(s['work_dir_bytes'])}; the cache holds "
                     f"{human_bytes(s['cache_bytes'])}, {cap} (--cache-max-gb); see --cache-info, --clean-cache)")
    if s.get("cache_evicted"):
        lines.append(f"  cache cap: evicted {len(s['cache_evicted'])} old work folder(s), cache now "
                     f"{human_bytes(s['cache_bytes'])}")
    for k, pth in s["outputs"].items():
        lines.append(f"  {k:<14s} {pth}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
