"""Benchmark the tracker preprocessing: wall time per stage, peak RSS, flow calls (JSON on stdout).

    python scripts/bench_preprocess.py [--video ../shared/data/davis480/horsejump-high/JPEGImages]
        [--backend dsift] [--work /tmp/bench_prep] [--fresh] [--traj-stride 2] ...

Every PreprocessConfig field is a flag. ``--fresh`` empties the work folder first (cold run); a second
run without it measures the cached (warm) path.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path

from cosettle.cli import ArgumentParser  # one-line argparse errors
from cosettle.config import add_config_args, config_from_args
from cosettle.errors import cli_entry
from cosettle.provenance import peak_rss_mb

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis480" / "horsejump-high" / "JPEGImages"


@cli_entry
def main(argv=None):
    from cosettle.backends.registry import load_backend
    from cosettle.io.video import read_video
    from tracker.config import PreprocessConfig
    from tracker.preprocess.pipeline import preprocess_video

    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--backend", default="dsift")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_prep"))
    ap.add_argument("--fresh", action="store_true", help="delete the work folder first")
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--resolution", type=int, default=None,
                    help="backend input short side (the tracker's 'fast' preset uses 240)")
    ap.add_argument("--progress", action="store_true")
    add_config_args(ap, PreprocessConfig)
    args = ap.parse_args(argv)
    cfg = config_from_args(PreprocessConfig, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    video = read_video(args.video, max_frames=args.max_frames)
    backend = load_backend(args.backend, **({"resolution": args.resolution} if args.resolution else {}))
    tic = time.time()
    pre = preprocess_video(video, backend, cfg, args.work, progress=args.progress)
    total = time.time() - tic
    st = pre.stats
    report = {
        "video": str(args.video), "backend": args.backend, "frames": st["video"]["frames"],
        "work_size": [pre.geometry.input_w, pre.geometry.input_h],
        "grid": [pre.geometry.grid_h, pre.geometry.grid_w],
        "stages": {k: {"seconds": round(st[k]["seconds"], 2), "cached": st[k]["cached"],
                       "peak_rss_mb_so_far": round(st[k]["peak_rss_mb"])}
                   for k in ("frames", "features", "masks", "flows", "trajectories", "trajectories_nodirect",
                             "best_buddies") if k in st},
        "total_seconds": round(total, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "load_average_1min": round(__import__("os").getloadavg()[0], 1),
        "flow_calls": st["flow_calls_total"], "flow_calls_reference": st["flow_calls_reference"],
        "trajectories": int(len(pre.trajectories)), "fg_trajectories": int(pre.traj_fg.sum()),
        "fg_mask_fraction": round(float(pre.masks.mean()), 4),
        "bb_ordered_pairs": len(pre.best_buddies),
        # on-demand best buddies (bb_on_demand) are computed when training draws them: nothing to count here
        "bb_kept": (int(sum(len(v["cos"]) for v in pre.best_buddies.values()) // 2)
                    if isinstance(pre.best_buddies, dict) else None),
        "trajectory_points": int(len(getattr(pre.trajectories, "points", []))),
        "config": {k: v for k, v in st["config"].items()},
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    main()
