"""Where the head is right and flow is not, on BADJA: per entry, from the predictions the evaluator cached.

    python badja_eval/run.py --sequences horsejump-high,cows --trackers flow,dino,dino-flow \
        --tracker-args dino.seed=0,dino-flow.seed=0 --out runs/eval/badja_s0
    python scripts/head_vs_flow.py --sequences horsejump-high,cows \
        --tracker-args dino.seed=0,dino-flow.seed=0 --out runs/eval/badja_s0

Prints JSON: per clip and backend the four cells (both right, head only, flow only, neither) with the share of
each that ``dino-flow`` gets right, and the oracle (right wherever the head or flow is). Nothing is computed
but the comparison: every prediction must be in the folder's cache (same arguments as the evaluator run).

``--states`` adds, per clip and backend, what the fusion rule did at each entry (tracker/fusion.py ``STATES``:
flow with the head agreeing / far / unseen, broken flow kept, re-detected, lost, still lost) and how often the
head and the fused track are right in each: the cached head is re-fused with the ``dino-flow`` settings of
``--tracker-args`` (per-backend values resolved as the tracker does) on the tracker's own flows and masks, and
``states_match_cache`` says whether that re-fusion equals the cached ``dino-flow`` prediction.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from badja_eval import run as ev
from badja_eval.badja import EVAL_HW, load_sequence, resize_mask, to_eval_resolution
from badja_eval.head_vs_flow import by_state, compare, evaluated_entries, seg_hits
from badja_eval.runner import Method, Runner
from cosettle.errors import UserError, cli_entry
from cosettle.io.atomic import write_text
from cosettle.io.tracks import TrackResult
from cosettle.provenance import setup_logging
from tracker.fusion import STATES, FusionStats

log = logging.getLogger("head_vs_flow")


def build_parser():
    p = ev.build_parser()
    p.description = __doc__.split("\n")[0]
    p.add_argument("--head", default="dino", help="cached tracker taken as the head (default dino)")
    p.add_argument("--fused", default="dino-flow", help="cached fused tracker ('' for none)")
    p.add_argument("--states", action="store_true",
                   help="also count head and fused right per fusion state (re-fuses the cached head; computes flow)")
    p.add_argument("--json", dest="json_out", help="also write the JSON here")
    return p


def fusion_states(runner, task, head_method, fused_method, frames, masks, pairs: list):
    """Re-fuse the cached head of ``head_method`` with ``fused_method``'s (dino-flow's) settings, through the
    tracker's own ``fuse_head`` -> (fused tracks (N, T, 2), per-entry state (N, T) int8). ``pairs``: the video's
    flow pairs, filled on the first call (they do not depend on the backend) and reused after."""
    pred = runner.load_cached(task, head_method)
    fusion = runner.fusion_tracker(fused_method, frames, masks)
    if not pairs:
        flow_pair = fusion.flow_pair()
        pairs.extend(flow_pair(t) for t in range(frames.shape[0] - 1))
    head = TrackResult(pred.tracks, pred.visible, pred.visible.astype(np.float32), task.queries)
    st = FusionStats()
    tracks, _, _ = fusion.fuse_head(head, pairs.__getitem__, st)
    return tracks, st.state


def report(cfg, head: str = "dino", fused: str | None = "dino-flow", states: bool = False) -> dict:
    if cfg.benchmark != "badja":
        raise UserError(f"head_vs_flow needs BADJA ground truth, not --benchmark {cfg.benchmark}", "use --benchmark badja")
    tasks, _, _ = ev.badja_tasks(cfg)
    runner = Runner(Path(cfg.out) / "cache", cfg.preset, cfg.device, use_masks=cfg.masks, progress=False,
                    backend_kwargs=cfg.backend_args, tracker_overrides=cfg.tracker_args)

    def cached(task, method):
        pred = runner.load_cached(task, method)
        if pred is None:
            raise UserError(f"no cached {method.label} prediction for {task.key} in {cfg.out}",
                            f"run badja_eval/run.py with --trackers flow,{head}{',' + fused if fused else ''} "
                            "and the same arguments first")
        return pred.tracks

    rows = []
    for task in tasks:
        seq = load_sequence(cfg.data_root, task.key)
        areas = [resize_mask(m, EVAL_HW).sum() for m in seq.load_masks()]
        gt = to_eval_resolution(seq.joints, seq.size_hw, EVAL_HW)
        ev_mask = evaluated_entries(seq.visible, task.queries[:, 0])

        def hits(tracks):
            return seg_hits(to_eval_resolution(tracks, seq.size_hw, EVAL_HW), gt, areas)

        flow = hits(cached(task, Method("flow", None)))
        frames_masks = task.load() if states else None
        pairs: list = []  # this video's flows, for every backend's re-fusion
        for backend in cfg.backends:
            h = hits(cached(task, Method(head, backend)))
            g = hits(cached(task, Method(fused, backend))) if fused else None
            row = {"sequence": task.key, "backend": backend, **compare(h, flow, g, ev_mask)}
            if states:
                frames, masks = frames_masks
                tracks, state = fusion_states(runner, task, Method(head, backend),
                                              Method(fused or "dino-flow", backend), frames,
                                              masks if cfg.masks else None, pairs)
                refused = hits(tracks)
                row["states"] = by_state(h, refused, state, ev_mask, STATES)
                row["states_match_cache"] = None if g is None else bool((refused == g)[ev_mask].all())
            rows.append(row)
    return {"head": head, "fused": fused or None, "tracker_args": cfg.tracker_args, "rows": rows}


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    out = report(ev.resolve(args), args.head, args.fused or None, args.states)
    text = json.dumps(out, indent=1)
    if args.json_out:
        write_text(args.json_out, text)
    print(text)
    return 0


if __name__ == "__main__":
    main()
