"""Sweep the flow-guided fusion settings of ``dino-flow`` over cached DINO-Tracker predictions (JSON).

The expensive part of ``dino-flow`` -- training DINO-Tracker on each video -- does not depend on the
fusion settings, so this tool takes the pure ``dino`` predictions that ``badja_eval/run.py`` cached, computes
each video's full-resolution flows once, and scores every (snap_cells, fb_px) setting with the benchmark's
own scorer. It is the development protocol for the ``dino-flow`` defaults: run it on horsejump-high
(BADJA), the synthetic levels and the DAVIS mask-only clips, and choose settings that hold on all three.

    python badja_eval/run.py --benchmark badja --trackers flow,dino --out runs/eval/badja   # caches dino
    python scripts/tune_fusion.py --benchmark badja --out runs/eval/badja --snap 1,2,3,4 --fb 1,1.5,2.5
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosettle.errors import UserError, cli_entry  # noqa: E402

log = logging.getLogger("tune_fusion")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def build_parser() -> argparse.ArgumentParser:
    from badja_eval import run as ev

    p = ev.build_parser()
    p.description = __doc__.split("\n")[0]
    p.add_argument("--snap", type=_floats, default=[1.0, 2.0, 3.0, 4.0, 6.0],
                   help="fusion_snap_cells values to try")
    p.add_argument("--fb", type=_floats, default=[1.0, 1.5, 2.5], help="fusion_fb_px values to try")
    p.add_argument("--refine", type=_floats, default=[0.0],
                   help="template refinement after a re-detection: min NCC values to try (0 = off)")
    p.add_argument("--dino-tracker", default="dino", help="cached tracker whose predictions are fused")
    p.add_argument("--json", dest="json_out", help="also write the JSON here")
    return p


def _cell_px(backend, h: int, w: int, resolution) -> float:
    from tracker.api import with_resolution, work_resolution

    g = with_resolution(backend, work_resolution(resolution, h, w)).geometry(h, w)
    return float(g.stride) * h / g.input_h


def _tasks(cfg):
    from badja_eval import run as ev

    if cfg.benchmark == "badja":
        return ev.badja_tasks(cfg)
    if cfg.benchmark == "davis-masks":
        from badja_eval import davis_masks

        return davis_masks.build_tasks(cfg, progress=False)
    pickles = ev.synthetic_pickles(cfg) if cfg.benchmark == "synthetic" else [Path(cfg.pickle)]
    return ev.tapvid_tasks(cfg, pickles)


def sweep(cfg, snaps, fbs, dino_tracker="dino", refines=(0.0,)):
    from badja_eval.runner import Method, Prediction, Runner
    from cosettle.io.tracks import TrackResult
    from tracker.config import preset
    from tracker.flow import make_flow_estimator
    from tracker.flow_guided import FusionStats, TemplateRefiner, fuse_tracks

    tasks, scorers, groups = _tasks(cfg)
    runner = Runner(Path(cfg.out) / "cache", cfg.preset, cfg.device, use_masks=cfg.masks, progress=False,
                    backend_kwargs=cfg.backend_args, tracker_overrides=cfg.tracker_args)
    tcfg = preset(cfg.preset)
    est = make_flow_estimator("dis", tcfg.fusion_dis_preset, None, "cpu", 0)
    settings = list(itertools.product(snaps, fbs, refines))
    scores: dict = {s: {} for s in settings}
    counts: dict = {s: FusionStats() for s in settings}
    for backend_name in cfg.backends:
        method = Method(dino_tracker, backend_name)
        backend = runner.backend(backend_name)
        for task in tasks:
            pred = runner.load_cached(task, method)
            if pred is None:
                raise UserError(f"no cached {method.label} prediction for {task.key} in {cfg.out}",
                                f"run badja_eval/run.py --benchmark {cfg.benchmark} --trackers {dino_tracker} first")
            frames, _ = task.load()
            T, h, w = frames.shape[:3]
            pairs = [(est(frames[t], frames[t + 1]), est(frames[t + 1], frames[t])) for t in range(T - 1)]
            cell = _cell_px(backend, h, w, tcfg.resolution)
            dino = TrackResult(pred.tracks, pred.visible, pred.visible.astype(np.float32), task.queries)
            for s in settings:
                ref = TemplateRefiner(frames, task.queries, search_px=cell, min_ncc=s[2]) if s[2] > 0 else None
                tr, vis, _ = fuse_tracks(dino, lambda t: pairs[t], T, s[0] * cell, s[1], stats=counts[s],
                                         refine=ref)
                scores[s][(backend_name, task.key)] = scorers[task.key](Prediction(tr, vis))
            log.info("%s: %d settings scored", task.key, len(settings))
    rows = []
    for s in settings:
        per = scores[s]
        keys = sorted({k for v in per.values() for k in v if isinstance(v[k], (int, float))})
        mean = {k: float(np.mean([v[k] for v in per.values() if k in v])) for k in keys}
        rows.append({"snap_cells": s[0], "fb_px": s[1], "refine_ncc": s[2], "mean": mean, "fusion": counts[s].to_dict(),
                     "per_video": {f"{b}/{k}": v for (b, k), v in per.items()}})
    return {"benchmark": cfg.benchmark, "tracker": dino_tracker, "preset": cfg.preset, "rows": rows}


@cli_entry
def main(argv=None):
    from badja_eval import run as ev
    from cosettle.provenance import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    cfg = ev.resolve(args)
    out = sweep(cfg, args.snap, args.fb, args.dino_tracker, args.refine)
    text = json.dumps(out, indent=1, default=float)
    if args.json_out:
        from cosettle.io.atomic import write_text

        write_text(args.json_out, text)
    print(text)
    return 0


if __name__ == "__main__":
    main()
