"""Quick BADJA-protocol check of a baseline on DAVIS horsejump-high (not the real evaluator).

    python scripts/check_flow_badja.py [--tracker flow|static|features] [--backend dsift]

Reads the BADJA joints (1920x1080 [row, col]) for horsejump-high, queries the 20 evaluated joints at
clip frame 0 from the ground truth, tracks them over the 50 DAVIS 854x480 frames and prints
delta_seg (dist < 0.2*sqrt(mask area at t)) and delta_3px over frames t >= 1 where the joint is
visible. Sanity check first: the zero-motion prediction must give 7.28 / 0.00 over 151 entries.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

JOINTS = [8, 9, 10, 12, 13, 14, 15, 18, 19, 20, 22, 23, 24, 25, 28, 31, 32, 33, 35, 36]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_gt(shared: Path, seq: str = "horsejump-high", w: int = 854, h: int = 480):
    ann = json.loads((shared / "badja" / "joint_annotations" / f"{seq}.json").read_text())
    frames, gt, vis = [], [], []
    for a in ann:
        frames.append(int(re.search(r"(\d+)\.\w+$", a["image_path"]).group(1)))
        j = np.asarray(a["joints"], np.float64)[JOINTS]  # [row, col] at 1920x1080
        gt.append(np.stack([j[:, 1] * w / 1920, j[:, 0] * h / 1080], axis=1))
        vis.append(np.asarray(a["visibility"], bool)[JOINTS])
    order = np.argsort(frames)
    return np.asarray(frames)[order], np.asarray(gt)[order], np.asarray(vis)[order]


def score(pred, frames, gt, vis, mask_dir: Path, first: int):
    """pred (N, T, 2) over the clip starting at ``first``; returns (delta_seg, delta_3px, count)."""
    import imageio.v3 as iio

    seg = px3 = n = 0
    for f, g, v in zip(frames, gt, vis):
        t = f - first
        if t < 1:
            continue
        area = (iio.imread(mask_dir / f"{f:05d}.png") > 0)
        area = area.any(-1).sum() if area.ndim == 3 else area.sum()
        d = np.linalg.norm(pred[:, t] - g, axis=1)[v]
        seg += int((d < 0.2 * np.sqrt(area)).sum())
        px3 += int((d < 3).sum())
        n += int(v.sum())
    return 100.0 * seg / max(n, 1), 100.0 * px3 / max(n, 1), n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tracker", default="flow", choices=["flow", "static", "features"])
    ap.add_argument("--backend", default="dsift")
    ap.add_argument("--dis-preset", default="medium")
    ap.add_argument("--dis-finest-scale", type=int, default=0,
                    help="DIS pyramid level to stop at (0 = full resolution; the preset's own is 1)")
    ap.add_argument("--shared", type=Path, default=SHARED)
    args = ap.parse_args(argv)

    from cosettle.io.video import read_video
    from tracker import build_tracker

    davis = args.shared / "davis480" / "horsejump-high"
    frames, gt, vis = load_gt(args.shared)
    first, last = int(frames.min()), int(frames.max())
    video = read_video(davis / "JPEGImages").numpy()[first:last + 1]
    T, H, W = video.shape[:3]
    q0 = np.where(frames == first)[0][0]
    queries = np.concatenate([np.zeros((len(JOINTS), 1)), gt[q0]], axis=1)

    zero = np.repeat(gt[q0][:, None], T, axis=1)
    s0 = score(zero, frames, gt, vis, davis / "Annotations", first)
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
    s = score(res.tracks, frames, gt, vis, davis / "Annotations", first)
    print(json.dumps({"tracker": args.tracker, "frames": T, "size": [W, H], "delta_seg": round(s[0], 2),
                      "delta_3px": round(s[1], 2), "entries": s[2], "seconds": round(dt, 1),
                      **({"backend": args.backend} if backend else {}),
                      **({"dis_preset": args.dis_preset, "dis_finest_scale": args.dis_finest_scale}
                         if args.tracker == "flow" else {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
