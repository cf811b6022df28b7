"""Sweep the flow-guided fusion settings of ``dino-flow`` over cached DINO-Tracker predictions (JSON).

The expensive part of ``dino-flow`` -- training DINO-Tracker on each video -- does not depend on the
fusion settings, so this tool takes the pure ``dino`` predictions that ``badja_eval/run.py`` cached, computes
each video's full-resolution flows once, and scores every setting (snap cells, forward-backward px, drift
frames, verification NCC and search cells, what a failed drift re-detection does, the head's share of a
position where flow and head agree and which points it moves) with the benchmark's own
scorer, wrong-visible included. It is
the development protocol for the ``dino-flow`` defaults: run it on BOTH labelled clips (horsejump-high,
cows) for several tracker seeds (one ``--out`` per seed), and keep a setting only if it holds on both.

    python badja_eval/run.py --sequences horsejump-high,cows --trackers flow,dino \
        --tracker-args dino.seed=0 --out runs/eval/badja_s0                       # caches dino, seed 0
    python scripts/tune_fusion.py --sequences horsejump-high,cows --tracker-args dino.seed=0 \
        --out runs/eval/badja_s0 --snap 3,6 --verify-cells 1,2

The flows, the feature cell and the foreground come from a ``dino-flow`` tracker fitted as far as its masks
(``fusion_train=never``: the work folder's cached frames and masks, no training), so a setting scores here
what ``badja_eval/run.py --trackers dino-flow`` scores with it, to the joint. (Until 2026-12 this tool read
the task's masks at the video's resolution instead of the tracker's work-resolution masks: one joint apart
on 5 of 24 DINOv2+Co-Settle fits.)
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
from pathlib import Path

import numpy as np

from cosettle.errors import UserError, cli_entry
from tracker.config import HEAD_GATES

log = logging.getLogger("tune_fusion")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _choices(*allowed: str):
    """An argparse type: a comma-separated list of some of ``allowed``."""
    def parse(text: str) -> list[str]:
        bad = [v for v in text.split(",") if v and v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown value(s) {','.join(bad)}: use {' and/or '.join(allowed)}")
        return [v for v in text.split(",") if v]
    return parse


def build_parser() -> argparse.ArgumentParser:
    from badja_eval import run as ev

    p = ev.build_parser()
    p.description = __doc__.split("\n")[0]
    p.add_argument("--snap", type=_floats, default=[3.0, 6.0], help="fusion_snap_cells values to try")
    p.add_argument("--fb", type=_floats, default=[1.5], help="fusion_fb_px values to try")
    p.add_argument("--drift", type=_floats, default=[1.0], help="fusion_drift_frames values to try")
    p.add_argument("--verify-ncc", type=_floats, default=[0.5], help="fusion_verify_ncc values to try")
    p.add_argument("--verify-cells", type=_floats, default=[2.0], help="fusion_verify_cells values to try")
    p.add_argument("--head-weight", type=_floats, default=[0.0],
                   help="fusion_head_weight values to try (the head's share of a position where flow and head agree)")
    p.add_argument("--head-gate", type=_choices(*HEAD_GATES), default=["flow-failed"],
                   help="fusion_head_gate values to try: flow-failed (the weight moves only points whose flow failed a "
                        "check earlier) and/or always")
    p.add_argument("--drift-fail", type=_choices("lost", "flow"), default=["lost"],
                   help="what a drift candidate that fails verification does: lost (the rule) and/or flow")
    p.add_argument("--dino-tracker", default="dino", help="cached tracker whose predictions are fused")
    p.add_argument("--json", dest="json_out", help="also write the JSON here")
    return p


def _tasks(cfg):
    from badja_eval import run as ev

    if cfg.benchmark == "badja":
        return ev.badja_tasks(cfg)
    if cfg.benchmark == "davis-masks":
        from badja_eval import davis_masks

        return davis_masks.build_tasks(cfg, progress=False)
    pickles = ev.synthetic_pickles(cfg) if cfg.benchmark == "synthetic" else [Path(cfg.pickle)]
    return ev.tapvid_tasks(cfg, pickles)


SETTING_KEYS = ("snap_cells", "fb_px", "drift_frames", "verify_ncc", "verify_cells", "drift_fail", "head_weight",
                "head_gate")


def sweep(cfg, grid: dict, dino_tracker="dino"):
    """``grid``: {setting key: list of values} (keys of SETTING_KEYS)."""
    from badja_eval.runner import Method, Prediction, Runner
    from cosettle.io.tracks import TrackResult
    from tracker.fusion import FusionStats

    tasks, scorers, groups = _tasks(cfg)
    runner = Runner(Path(cfg.out) / "cache", cfg.preset, cfg.device, use_masks=cfg.masks, progress=False,
                    backend_kwargs=cfg.backend_args, tracker_overrides=cfg.tracker_args)
    settings = [dict(zip(SETTING_KEYS, vals)) for vals in itertools.product(*(grid[k] for k in SETTING_KEYS))]
    scores: list[dict] = [{} for _ in settings]
    counts = [FusionStats() for _ in settings]
    for task in tasks:
        frames, masks = task.load()
        T = frames.shape[0]
        pairs = None  # the flows depend on the video only: computed once, for every backend
        for backend_name in cfg.backends:
            method = Method(dino_tracker, backend_name)
            pred = runner.load_cached(task, method)
            if pred is None:
                raise UserError(f"no cached {method.label} prediction for {task.key} in {cfg.out}",
                                f"run badja_eval/run.py --benchmark {cfg.benchmark} --trackers {dino_tracker} first")
            fusion = runner.fusion_tracker(method, frames, masks if cfg.masks else None)
            if pairs is None:
                flow_pair = fusion.flow_pair()
                pairs = [flow_pair(t) for t in range(T - 1)]
            dino = TrackResult(pred.tracks, pred.visible, pred.visible.astype(np.float32), task.queries)
            for k, s in enumerate(settings):  # through the tracker's own fuse_head: what run.py's dino-flow does
                cfg_k = fusion.cfg.replace(
                    fusion_snap_cells=s["snap_cells"], fusion_fb_px=s["fb_px"],
                    fusion_drift_frames=int(s["drift_frames"]), fusion_verify_ncc=s["verify_ncc"],
                    fusion_verify_cells=s["verify_cells"], fusion_head_weight=s["head_weight"],
                    fusion_head_gate=s["head_gate"])
                tr, vis, _ = fusion.fuse_head(dino, pairs.__getitem__, counts[k], cfg=cfg_k,
                                              drift_fail=s["drift_fail"])
                scores[k][(backend_name, task.key)] = scorers[task.key](Prediction(tr, vis))
            log.info("%s %s: %d settings scored", backend_name, task.key, len(settings))
    rows = []
    for s, per, st in zip(settings, scores, counts):
        keys = sorted({k for v in per.values() for k in v if isinstance(v[k], (int, float))})
        mean = {k: float(np.mean([v[k] for v in per.values() if k in v])) for k in keys}
        rows.append({**s, "mean": mean, "fusion": st.to_dict(),
                     "per_video": {f"{b}/{k}": v for (b, k), v in per.items()}})
    return {"benchmark": cfg.benchmark, "tracker": dino_tracker, "preset": cfg.preset, "rows": rows}


@cli_entry
def main(argv=None):
    from badja_eval import run as ev
    from cosettle.provenance import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    cfg = ev.resolve(args)
    grid = {"snap_cells": args.snap, "fb_px": args.fb, "drift_frames": args.drift, "verify_ncc": args.verify_ncc,
            "verify_cells": args.verify_cells, "drift_fail": args.drift_fail, "head_weight": args.head_weight,
            "head_gate": args.head_gate}
    out = sweep(cfg, grid, args.dino_tracker)
    text = json.dumps(out, indent=1, default=float)
    if args.json_out:
        from cosettle.io.atomic import write_text

        write_text(args.json_out, text)
    print(text)
    return 0


if __name__ == "__main__":
    main()
