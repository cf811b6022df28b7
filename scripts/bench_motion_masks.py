"""Automatic motion masks against the DAVIS masks of the shared clips (JSON): recall, precision, IoU.

    python scripts/bench_motion_masks.py --sequences cows,blackswan,goat --max-frames 60
    python scripts/bench_motion_masks.py --window 1        # the consecutive-pair rule, for comparison

Frames are resized to the tracker's dsift work size (424x240 by default), flows are DIS ``medium`` at its
default pyramid (as the tracker's ``flows`` stage), and ``tracker.preprocess.masks.motion_masks`` runs with its
defaults (or a fixed ``--window``). Scores are pooled over each clip's frames.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np

from cosettle.errors import UserError, cli_entry
from cosettle.io.atomic import write_text
from tracker.preprocess.flow import make_flow_estimator
from tracker.preprocess.masks import motion_masks

DEFAULT_SHARED = Path(__file__).resolve().parents[2] / "shared"


def load_clip(folder: Path, size_wh: tuple[int, int], max_frames: int | None):
    frames = sorted((folder / "JPEGImages").glob("*.jpg"))[:max_frames]
    masks = sorted((folder / "Annotations").glob("*.png"))[:max_frames]
    if len(frames) < 2 or len(frames) != len(masks):
        raise UserError(f"{folder} needs >= 2 frames and one mask per frame",
                        "expected JPEGImages/*.jpg and Annotations/*.png")
    rgb = np.stack([cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), size_wh,
                               interpolation=cv2.INTER_AREA) for p in frames])
    truth = np.stack([cv2.resize((cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8), size_wh,
                                 interpolation=cv2.INTER_NEAREST) > 0 for p in masks])
    return rgb, truth


def score(pred: np.ndarray, truth: np.ndarray) -> dict:
    inter, union = float((pred & truth).sum()), float((pred | truth).sum())
    return {"true_share": float(truth.mean()), "mask_share": float(pred.mean()),
            "recall": inter / max(float(truth.sum()), 1.0), "precision": inter / max(float(pred.sum()), 1.0),
            "iou": inter / max(union, 1.0)}


@cli_entry
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shared", default=str(DEFAULT_SHARED), help="the shared folder (holds data/davis480)")
    p.add_argument("--sequences", default="cows,horsejump-high,blackswan,goat",
                   help="comma list of davis480 clips")
    p.add_argument("--max-frames", type=int, default=60)
    p.add_argument("--size", default="424x240", help="work size WxH")
    p.add_argument("--window", type=int, default=None, help="fixed chained window (default: growing rule)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        size = tuple(int(v) for v in args.size.lower().split("x"))
        assert len(size) == 2 and min(size) > 0
    except (ValueError, AssertionError):
        raise UserError(f"bad --size {args.size!r}", "use WxH, e.g. 424x240") from None
    root = Path(args.shared) / "data" / "davis480"
    est = make_flow_estimator("dis", "medium", None, "cpu", None)
    rows = {}
    for name in [s for s in args.sequences.split(",") if s]:
        if not (root / name).is_dir():
            raise UserError(f"no clip {name!r} under {root}", "see ../shared/data/README.md for the clips")
        frames, truth = load_clip(root / name, size, args.max_frames)
        fwd = np.stack([est(frames[t], frames[t + 1]) for t in range(len(frames) - 1)])
        bwd = np.stack([est(frames[t + 1], frames[t]) for t in range(len(frames) - 1)])
        t0 = time.perf_counter()
        pred, info = motion_masks(fwd, bwd, window=args.window)
        rows[name] = {**score(pred, truth), "window": info["window"], "frames": len(frames),
                      "seconds": round(time.perf_counter() - t0, 2)}
    mean = {k: float(np.mean([r[k] for r in rows.values()])) for k in ("recall", "precision", "iou")}
    out = {"size_wh": list(size), "window": args.window, "max_frames": args.max_frames,
           "opencv": cv2.__version__, "clips": rows, "mean": mean}
    text = json.dumps(out, indent=1)
    if args.out:
        write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    main()
