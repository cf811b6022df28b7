#!/usr/bin/env python
"""Benchmark DINO-Tracker on DAVIS horsejump-high (BADJA protocol), JSON to stdout and --out.

    python scripts/bench_tracker.py [--tracker dino-flow] [--backend dsift] [--preset fast] [--masks davis]

``--tracker dino-flow`` (the default of ``scripts/track.py``) scores both the fused tracker and the pure
head (``dino``) of the same fitted model; ``--tracker dino`` skips the fusion.
Reports: wall time per stage (preprocessing sub-stages, training, feature refinement, fusion), peak RSS,
the training's supervision coverage, the share of frame steps where a tracker jumps > 50 px farther
than the ``flow`` baseline moved while flow sees the point,
optical-flow calls made vs the reference's O(T^2) count, occlusion-inference time for 100 points with
both rules (fb and anchors), and BADJA delta_seg / delta_3px of the tracker (both rules) and of the
``static`` and ``flow`` baselines. Protocol (evaluation.md): the 20 evaluated joints queried at clip
frame 0 from the ground truth, scored on frames t >= 1 where visible, at 854x480;
delta_seg = dist < 0.2 sqrt(mask area at t), delta_3px = dist < 3 px.

``--size 481x853`` resizes the clip first (an odd size; predictions are scaled back to 854x480 by the
pure ratio for scoring). ``--masks davis`` gives the tracker the DAVIS foreground masks (as the
reference's sample data does for this clip); ``--masks saliency`` / ``--masks motion`` make it
compute its own: PCA saliency of the features, or motion masks (flow residual to the dominant motion).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP threads crawl on shared CPUs

import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from badja_eval.badja import load_sequence  # noqa: E402
from badja_eval.metrics import badja_metrics  # noqa: E402
from cosettle.cli import ArgumentParser  # noqa: E402  (one-line argparse errors)
from cosettle.provenance import peak_rss_mb  # noqa: E402
from tracker.registry import tracker_entry, tracker_names  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_clip(shared: Path):
    """frames (T,480,854,3), masks (T,480,854), joints (20,T,2) x,y at 854x480, visible (20,T), queries."""
    seq = load_sequence(shared, "horsejump-high")
    return seq.load_frames(), seq.load_masks(), seq.joints, seq.visible, seq.query_points()


def badja_score(pred, joints, vis, masks) -> dict:
    """pred/joints (20,T,2) at 854x480; the evaluator's metric (frames t >= 1 where visible)."""
    areas = masks.reshape(len(masks), -1).sum(1)
    m = badja_metrics(pred, joints, vis, areas)
    return {"delta_seg": round(m["delta_seg"], 2), "delta_3px": round(m["delta_3px"], 2), "count": m["count"]}


def jump_share(pred, flow, flow_visible, px: float = 50.0) -> float:
    """Share of steps t -> t+1 (flow sees the point at both) where the tracker moves > ``px`` farther
    than flow does: a point jumping while flow follows it smoothly."""
    d_pred = np.diff(np.asarray(pred, np.float64), axis=1)
    d_flow = np.diff(np.asarray(flow, np.float64), axis=1)
    both = flow_visible[:, 1:] & flow_visible[:, :-1]
    far = np.linalg.norm(d_pred - d_flow, axis=-1) > px
    return round(float(far[both].mean()), 4) if both.any() else 0.0


def main(argv=None):
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    dino = [n for n in tracker_names() if tracker_entry(n).dino_config]  # the trackers this benchmark fits
    ap.add_argument("--tracker", default=dino[0], choices=dino)
    ap.add_argument("--backend", default="dsift", help="dsift, or e.g. dinov2_vits14 (random weights here)")
    ap.add_argument("--weights", default="random", help="weights for ViT backends (default: random)")
    ap.add_argument("--stride", type=int, default=None)
    ap.add_argument("--preset", default="fast", choices=("fast", "paper"))
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--resolution", default=None, help="override the preset's internal short side")
    ap.add_argument("--size", default="854x480", help="resize the clip to WxH first (e.g. 853x481)")
    ap.add_argument("--masks", default="davis", choices=("davis", "saliency", "motion"))
    ap.add_argument("--points", type=int, default=100, help="points for the occlusion timing (0: skip)")
    ap.add_argument("--work-dir", default=None, help="reuse a work folder (default: a fresh temp folder)")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)

    import cv2
    import torch

    from cosettle.backends.registry import load_backend
    from tracker import build_tracker
    from tracker.config import preset

    t_all = time.perf_counter()
    frames, masks, joints, vis, q = load_clip(args.shared)
    T, H0, W0 = frames.shape[:3]
    W, H = (int(v) for v in args.size.lower().split("x"))
    sx, sy = W / W0, H / H0
    if (H, W) != (H0, W0):
        frames = np.stack([cv2.resize(f, (W, H), interpolation=cv2.INTER_AREA) for f in frames])
        masks_in = np.stack([cv2.resize(m.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST) > 0
                             for m in masks])
    else:
        masks_in = masks
    q_in = q.astype(np.float64).copy()
    q_in[:, 1] *= sx
    q_in[:, 2] *= sy

    kw = {}
    if args.backend != "dsift":
        kw["weights"] = args.weights
        kw["stride"] = args.stride or 7
    elif args.stride:
        kw["stride"] = args.stride
    backend = load_backend(args.backend, **kw)
    over = {}
    if args.iterations is not None:
        over["iterations"] = args.iterations
    if args.resolution is not None:
        over["resolution"] = None if args.resolution == "none" else int(args.resolution)
    if args.seed is not None:
        over["seed"] = args.seed
    tmp = None
    if args.work_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_tracker_")
        over["work_dir"] = tmp.name
    else:
        over["work_dir"] = args.work_dir
    # the fit is what this measures: dino-flow trains in fit() as before its gate (tracker/fusion_gate.py)
    over["fusion_train"] = "always"
    cfg = preset(args.preset, **over)
    if args.masks != "davis":
        cfg.preprocess.mask_source = args.masks
    tracker = build_tracker(args.tracker, backend, cfg, progress=False)
    tracker.fit(frames, masks=masks_in if args.masks == "davis" else None)
    fit_timings = dict(tracker.report().timings)
    geom = tracker.geometry
    prep_stats = getattr(tracker.prep, "stats", {}) or {}
    stages = {f"preprocess/{k}": round(v["seconds"], 2) for k, v in prep_stats.items()
              if isinstance(v, dict) and "seconds" in v}
    stages.update({k: round(v, 2) for k, v in tracker.report().timings.items()})

    def to_eval(tracks):
        out = np.asarray(tracks, np.float64).copy()
        out[..., 0] /= sx
        out[..., 1] /= sy
        return out

    results, preds = {}, {}
    head = getattr(tracker, "track_head", tracker.track)  # the pure head of the same fit
    for rule in ("fb", "anchors"):
        t0 = time.perf_counter()
        r = head(q_in, occlusion=rule)
        preds[f"dino_{rule}"] = to_eval(r.tracks)
        results[f"dino_{rule}"] = badja_score(preds[f"dino_{rule}"], joints, vis, masks)
        results[f"dino_{rule}"]["seconds"] = round(time.perf_counter() - t0, 2)
    if args.tracker == "dino-flow":
        t0 = time.perf_counter()
        r = tracker.track(q_in)
        preds["dino-flow"] = to_eval(r.tracks)
        results["dino-flow"] = badja_score(preds["dino-flow"], joints, vis, masks)
        results["dino-flow"]["seconds"] = round(time.perf_counter() - t0, 2)
        results["dino-flow"]["fusion"] = tracker.fusion_stats.to_dict()
    rss_dino = peak_rss_mb()
    fit_s = sum(v for k, v in fit_timings.items() if k != "track")
    # occlusion timing: 100 points (the 20 joints + a grid on frame 0's foreground)
    rng = np.random.default_rng(0)
    yy, xx = np.nonzero(masks_in[0])
    pick = rng.choice(len(xx), size=max(0, args.points - len(q_in)), replace=False)
    q100 = np.concatenate([q_in, np.stack([np.zeros(len(pick)), xx[pick], yy[pick]], 1)])[: args.points]
    occ = {}
    for rule in ("fb", "anchors") if args.points > 0 else ():
        tracker.infer.stats["head_evals"] = 0
        t0 = time.perf_counter()
        r = head(q100, occlusion=rule)
        occ[rule] = {"seconds": round(time.perf_counter() - t0, 2), "head_evals": tracker.infer.stats["head_evals"],
                     "visible_fraction": round(float(r.visible.mean()), 3)}
    jumps = {}
    if not args.no_baselines:
        for name in ("static", "flow"):
            t0 = time.perf_counter()
            r = build_tracker(name, progress=False).fit(frames).track(q_in)
            results[name] = badja_score(to_eval(r.tracks), joints, vis, masks)
            results[name]["seconds"] = round(time.perf_counter() - t0, 2)
            if name == "flow":
                jumps = {k: jump_share(p, to_eval(r.tracks), r.visible) for k, p in preds.items()}
    report = {
        "clip": "horsejump-high", "frames": T, "size": f"{W}x{H}", "backend": backend.name,
        "backend_fields": {k: v for k, v in backend.cache_fields().items() if k in ("weights", "layer", "stride", "resolution")},
        "preset": args.preset, "iterations": cfg.iterations, "masks": args.masks,
        "geometry": str(geom), "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "stages_s": stages, "fit_total_s": round(fit_s, 1),
        "load_average_1_5_15": [round(v, 1) for v in os.getloadavg()],
        "peak_rss_mb_after_dino": round(rss_dino, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
        "masks_fg_fraction": (prep_stats.get("masks") or {}).get("fg_fraction"),
        "flow_calls": prep_stats.get("flow_calls_total"),
        "flow_calls_reference_O_T2": prep_stats.get("flow_calls_reference", T * (T - 1) + 4 * (T - 1)),
        "occlusion_100_points": occ, "badja": results,
        "jump_share_vs_flow_50px": jumps,
        "training_coverage": tracker.report().info.get("training_coverage"),
        "total_s": round(time.perf_counter() - t_all, 1),
        "command": "python scripts/bench_tracker.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        from cosettle.io.atomic import write_text

        write_text(args.out, text + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
