"""Quick BADJA-protocol check of a baseline on DAVIS horsejump-high (not the real evaluator).

    python scripts/check_flow_badja.py [--tracker flow|static|features] [--backend dsift]

Reads the BADJA joints (1920x1080 [row, col]) for horsejump-high, queries the 20 evaluated joints at
clip frame 0 from the ground truth, tracks them over the 50 DAVIS 854x480 frames and prints
delta_seg (dist < 0.2*sqrt(mask area at t)) and delta_3px over frames t >= 1 where the joint is
visible. Sanity check first: the zero-motion prediction must give 7.28 / 0.00 over 151 entries.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from badja_eval.badja import evaluate_badja, load_sequence
from cosettle.cli import ArgumentParser  # one-line argparse errors
from tracker.registry import tracker_entry, tracker_names

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main(argv=None):
    ap = ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tracker", default="flow",
                    choices=[n for n in tracker_names() if not tracker_entry(n).dino_config])  # no training here
    ap.add_argument("--backend", default="dsift")
    ap.add_argument("--dis-preset", default="medium")
    ap.add_argument("--dis-finest-scale", type=int, default=0,
                    help="DIS pyramid level to stop at (0 = full resolution; the preset's own is 1)")
    ap.add_argument("--shared", type=Path, default=SHARED)
    args = ap.parse_args(argv)

    from tracker import build_tracker

    seq = load_sequence(args.shared, "horsejump-high")
    video = seq.load_frames()
    masks = seq.load_masks()
    T, H, W = video.shape[:3]
    queries = seq.query_points()

    zero = np.repeat(queries[:, None, 1:3], T, axis=1)
    m0 = evaluate_badja(seq, zero, masks=masks)
    s0 = (m0["delta_seg"], m0["delta_3px"], m0["count"])
    print(f"zero-motion sanity: delta_seg {s0[0]:.2f} delta_3px {s0[1]:.2f} over {s0[2]} entries "
          "(expected 7.28 / 0.00 / 151)")
    if abs(s0[0] - 7.28) > 0.01 or s0[1] != 0 or s0[2] != 151:
        print("scorer sanity check FAILED")
        return 1

    kw = {}
    backend = None
    if args.tracker == "flow":
        kw["dis_preset"] = args.dis_preset
        kw["dis_finest_scale"] = args.dis_finest_scale
    if args.tracker == "features":
        from cosettle.backends.registry import load_backend

        backend = load_backend(args.backend)
    tic = time.time()
    tr = build_tracker(args.tracker, backend=backend, **kw).fit(video)
    res = tr.track(queries)
    dt = time.time() - tic
    m = evaluate_badja(seq, res.tracks, masks=masks)
    s = (m["delta_seg"], m["delta_3px"], m["count"])
    print(json.dumps({"tracker": args.tracker, "frames": T, "size": [W, H], "delta_seg": round(s[0], 2),
                      "delta_3px": round(s[1], 2), "entries": s[2], "seconds": round(dt, 1),
                      **({"backend": args.backend} if backend else {}),
                      **({"dis_preset": args.dis_preset, "dis_finest_scale": args.dis_finest_scale}
                         if args.tracker == "flow" else {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
