#!/usr/bin/env python
"""How the DINO tracker scales with clip length: wall time per stage and peak RSS (JSON on stdout).

    python scripts/bench_scale.py [--sizes 50 200 400 1000] [--iterations 300] [--vit-frames 200]
        [--clip ../shared/data/davis480/parkour/JPEGImages] [--work /tmp/bench_scale]

Each size runs in its own subprocess (so its peak RSS is its own), with the defaults of
``python scripts/track.py`` (dino-flow tracker, ``fast`` preset, dsift backend, 854x480 frames) on a real
DAVIS clip played forward and backward until it has the wanted length (so the motion stays real),
tracking a 10 x 10 grid of frame-0 points (``--grid``). ``--iterations`` overrides the preset's training length
(late losses switched on at half of it); training time does not depend on the clip length.
The report has per-size stage times, the peak RSS, the trajectory counts, the fitted growth exponents
(log-log slope of preprocessing time and of peak RSS against frames), the preprocessing time per frame
(linear fit slope), the load average at each start, and the same for a stride-7 ViT-S/14 backend with
random weights at ``--vit-frames`` frames.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
from cosettle.cli import ArgumentParser  # noqa: E402  (one-line argparse errors)
from tracker.registry import tracker_entry, tracker_names  # noqa: E402

DEFAULT_CLIP = ROOT.parent / "shared" / "data" / "davis480" / "parkour" / "JPEGImages"


def looped_folder(src: Path, n: int, dst: Path) -> Path:
    """A folder of ``n`` symlinks to the clip's frames: 0..L-1, L-2..1, 0..L-1, ... (ping-pong)."""
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(files) < 2:
        raise SystemExit(f"error: {src} has fewer than 2 frames -- pass --clip with a frame folder")
    cycle = files + files[-2:0:-1]
    dst.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (dst / f"{i:05d}{files[0].suffix}").symlink_to(cycle[i % len(cycle)].resolve())
    return dst


def child(args) -> dict:
    """One run in this process: the track.py defaults on the folder, report stage times and peak RSS."""
    import numpy as np

    from cosettle.backends.registry import load_backend
    from cosettle.io.queries import grid_queries
    from cosettle.io.video import read_video
    from cosettle.provenance import peak_rss_mb
    from tracker import build_tracker
    from tracker.config import preset
    from tracker.memory import estimate_peak_memory

    load0 = os.getloadavg()
    t_all = time.perf_counter()
    video = read_video(args.video)
    frames = video.numpy()
    over = {"work_dir": str(args.work)}
    if args.iterations is not None:
        it = int(args.iterations)
        over.update(iterations=it, cyc_after=it // 2, rbb_after=it // 2, checkpoint_every=max(1, it))
    # the fit is what this measures: dino-flow trains in fit() as before its gate (tracker/fusion_gate.py)
    cfg = preset("fast", fusion_train="always", **over)
    if args.direct_window is not None:  # cheaper direct-flow filter (memory runs); not the default
        import dataclasses

        cfg = cfg.replace(preprocess=dataclasses.replace(cfg.preprocess, direct_window=args.direct_window))
    if args.backend == "vit-s7":
        backend = load_backend("dinov2_vits14", weights="random", stride=7)
    else:
        backend = load_backend(args.backend)
    tr = build_tracker(args.tracker, backend=backend, config=cfg, progress=False)
    q = grid_queries(video.height, video.width, args.grid, 0)
    estimate = estimate_peak_memory(len(video), video.height, video.width, backend, cfg, num_queries=len(q.txy))
    tr.fit(frames, masks=None)
    fit_rss = peak_rss_mb()
    t0 = time.perf_counter()
    res = tr.track(q.txy)
    track_s = time.perf_counter() - t0
    prep = getattr(tr, "prep", None) or tr.dino.prep
    st = prep.stats
    stages = {k: round(float(st[k]["seconds"]), 2) for k in
              ("frames", "features", "flows", "masks", "trajectories", "trajectories_nodirect", "best_buddies")
              if k in st}
    traj = prep.trajectories
    rss_after = {k: round(float(st[k]["peak_rss_mb"])) for k in stages if "peak_rss_mb" in st[k]}
    return {"frames": len(video), "backend": backend.name, "load_avg_start": [round(x, 2) for x in load0],
            "load_avg_end": [round(x, 2) for x in os.getloadavg()],
            "work_size": [prep.geometry.input_w, prep.geometry.input_h],
            "grid": [prep.geometry.grid_h, prep.geometry.grid_w],
            "preprocess_stages_s": stages,
            "timings_s": {k: round(v, 2) for k, v in tr.report().timings.items()} | {"track": round(track_s, 2)},
            "total_s": round(time.perf_counter() - t_all, 2), "peak_rss_mb": round(peak_rss_mb()),
            "peak_rss_mb_after_stage": rss_after, "peak_rss_mb_after_fit": round(fit_rss),
            "estimated_peak_mb": round(estimate["peak_mb"]), "estimate": estimate,
            "trajectories": int(len(traj)), "trajectory_points": int(len(getattr(traj, "points", []))),
            "visible": float(np.mean(res.visible)), "iterations": cfg.iterations,
            "direct_window": cfg.preprocess.direct_window, "bb_on_demand": cfg.preprocess.bb_on_demand}


def fit_exponent(xs, ys) -> float | None:
    import numpy as np

    ok = [(x, y) for x, y in zip(xs, ys) if y and y > 0]
    if len(ok) < 2:
        return None
    lx, ly = np.log([x for x, _ in ok]), np.log([y for _, y in ok])
    return round(float(np.polyfit(lx, ly, 1)[0]), 3)


def run_size(args, n: int, backend: str) -> dict:
    tag = f"{backend}-{n}"
    folder = looped_folder(args.clip, n, args.work / f"video-{tag}")
    cmd = [sys.executable, __file__, "--child", "--video", str(folder), "--work", str(args.work / f"work-{tag}"),
           "--backend", backend, "--tracker", args.tracker, "--grid", str(args.grid)] + (
        ["--direct-window", str(args.direct_window)] if args.direct_window is not None else []) + (["--iterations", str(args.iterations)] if args.iterations is not None else [])
    tic = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"frames": n, "backend": backend, "error": p.stderr.strip().splitlines()[-3:],
                "wall_s": round(time.perf_counter() - tic, 1)}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall_s"] = round(time.perf_counter() - tic, 1)
    if not args.keep:
        shutil.rmtree(args.work / f"work-{tag}", ignore_errors=True)
    return out


def main(argv=None) -> int:
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 400, 1000])
    ap.add_argument("--vit-frames", type=int, default=200, help="frames for the ViT-S stride-7 run (0 = skip)")
    ap.add_argument("--iterations", type=int, default=None, help="training iterations (default: the preset's)")
    ap.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_scale"))
    ap.add_argument("--backend", default="dsift")
    dino = [n for n in tracker_names() if tracker_entry(n).dino_config]  # the trackers this benchmark fits
    ap.add_argument("--tracker", default=dino[0], choices=dino, help="default: scripts/track.py's (%(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the work folders")
    ap.add_argument("--grid", type=int, default=10, help="track a grid x grid lattice of frame-0 points")
    ap.add_argument("--direct-window", type=int, default=None,
                    help="PreprocessConfig.direct_window override (default: the preset's 8)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--video", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        import logging

        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
        print(json.dumps(child(args)))
        return 0
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    runs = []
    for n in args.sizes:
        runs.append(run_size(args, n, args.backend))
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    ok = [r for r in runs if "error" not in r]
    xs = [r["frames"] for r in ok]
    pre = [sum(r["preprocess_stages_s"].values()) for r in ok]
    report = {"command": " ".join(["python scripts/bench_scale.py"] + (argv if argv is not None else sys.argv[1:])),
              "clip": str(args.clip), "runs": runs,
              "growth_exponent": {"preprocess_s": fit_exponent(xs, pre),
                                  "peak_rss_mb": fit_exponent(xs, [r["peak_rss_mb"] for r in ok]),
                                  "trajectory_points": fit_exponent(xs, [r["trajectory_points"] for r in ok])}}
    if len(ok) >= 2:
        import numpy as np

        report["preprocess_s_per_frame"] = round(float(np.polyfit(xs, pre, 1)[0]), 4)
        report["peak_rss_mb_per_frame"] = round(float(np.polyfit(xs, [r["peak_rss_mb"] for r in ok], 1)[0]), 3)
    if args.vit_frames:
        report["vit_s_stride7"] = run_size(args, args.vit_frames, "vit-s7")
        print(json.dumps(report["vit_s_stride7"]), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
