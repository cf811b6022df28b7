#!/usr/bin/env python
"""Time of the default ``dino-flow`` against ``flow`` where its training gate skips training, and which
clips' queries make it train (tracker/fusion_gate.py; docs/tracking.md#when-the-default-trains-fusion_train).

    python scripts/bench_fusion_gate.py --clips demo,blackswan,badja:cows --out runs/gate/bench.json

Per clip, in this order and in one process: the ``flow`` baseline (fit + track, timed), then the default
(``fusion_train: auto``, a fresh work folder: fit + the flow pre-pass that ``track`` runs first, timed). When
the pre-pass decides to train, the training is not run unless ``--train`` (it is the fit as before the gate:
see the tracker's own time) and the JSON says how many queries needed the head and why; when it does not,
the pre-pass result is what ``track`` returns, so its time is the default's whole time.

Clips: ``demo`` (the built-in demo clip and its 6 points, no masks, as ``scripts/track.py`` runs it: through
its mp4), ``demo-frames`` (the same clip as rendered, no video codec between), a DAVIS
mask-only clip name (``--num-points`` queries inside its eroded frame-0 mask, the evaluator's sampler), or
``badja:NAME`` (the 20 BADJA joints at clip frame 0). ``--masks davis`` gives the tracker the DAVIS masks
(the evaluators' protocol); ``auto`` lets it make its own (motion masks for dsift). Results are written
after every clip and a re-run skips the clips already in ``--out`` (resumable).
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP threads crawl on shared CPUs

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from badja_eval.badja import load_sequence  # noqa: E402
from badja_eval.davis_masks import MaskBenchConfig, clip_rng, load_clip, sample_queries  # noqa: E402
from cosettle.backends.registry import load_backend  # noqa: E402
from cosettle.cli import ArgumentParser  # noqa: E402  (one-line argparse errors)
from cosettle.demo import make_demo_clip, render_demo  # noqa: E402
from cosettle.io.atomic import atomic_path  # noqa: E402
from cosettle.io.video import read_video  # noqa: E402
from cosettle.provenance import run_info  # noqa: E402
from tracker import build_tracker  # noqa: E402
from tracker.config import preset  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def load(name: str, data_root: Path, num_points: int, max_frames: int | None):
    """-> frames (T,H,W,3) uint8, DAVIS masks (T,H,W) or None, queries (N,3) t,x,y."""
    if name == "demo":  # what scripts/track.py tracks with no --video: the rendered clip, through its mp4
        with tempfile.TemporaryDirectory(prefix="bench_gate_demo_") as tmp:
            video, _, gt = make_demo_clip(tmp)
            frames = read_video(video).numpy()
        return frames, None, np.concatenate([np.zeros((len(gt), 1), np.float32), gt[:, 0]], axis=1)
    if name == "demo-frames":  # the same clip as rendered (no video codec between)
        frames, queries, _ = render_demo()
        return frames, None, queries
    if name.startswith("badja:"):
        seq = load_sequence(data_root, name.split(":", 1)[1])
        frames, masks, q = seq.load_frames(), seq.load_masks(), seq.query_points()
    else:
        clip = load_clip(data_root, name, max_frames)
        frames, masks = clip.load_frames(), clip.load_masks()
        q = sample_queries(masks[0], num_points, MaskBenchConfig().scaled(clip.size_hw).erode_px, clip_rng(0, name))
    return frames[:max_frames], masks[:max_frames], q  # load_clip cut already; BADJA clips are whole


def bench_one(name: str, args) -> dict:
    frames, masks, q = load(name, args.data_root, args.num_points, args.max_frames)
    given = masks if args.masks == "davis" else None
    t0 = time.perf_counter()
    flow = build_tracker("flow", progress=False).fit(frames).track(q)
    flow_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="bench_gate_") as work:
        t0 = time.perf_counter()
        tr = build_tracker("dino-flow", load_backend("dsift"), preset("fast", work_dir=work), progress=False)
        tr.fit(frames, given)
        res, gate = tr.prepass(q)
        default_s = time.perf_counter() - t0
        out = {"frames": int(frames.shape[0]), "size_hw": list(frames.shape[1:3]), "queries": int(len(q)),
               "masks": args.masks if masks is not None else "auto", "flow_s": round(flow_s, 2),
               "gate": gate.to_dict(), "stages_s": {k: round(v, 2) for k, v in tr.report().timings.items()},
               "fusion_flow_calls": tr.fusion_stats.flow_calls,
               "load_average_1min": round(os.getloadavg()[0], 2)}
        if not gate.train:
            out.update(default_s=round(default_s, 2), ratio=round(default_s / flow_s, 2),
                       positions_equal_flow=bool(np.array_equal(res.tracks, flow.tracks)),
                       visible_share=round(float(res.visible.mean()), 4))
        else:
            out["gate_s"] = round(default_s, 2)  # fit up to the masks + pre-pass, before the training
            if args.train:
                t0 = time.perf_counter()
                res = tr.track(q)
                out["train_and_fuse_s"] = round(time.perf_counter() - t0, 2)
                out["default_s"] = round(default_s + out["train_and_fuse_s"], 2)
                out["ratio"] = round(out["default_s"] / flow_s, 2)
    return out


def main(argv=None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", default="demo", help="comma-separated: demo, DAVIS clip names, badja:NAME")
    p.add_argument("--data-root", type=Path, default=SHARED, help="shared data folder (default: %(default)s)")
    p.add_argument("--num-points", type=int, default=5, help="queries per DAVIS clip (default: %(default)s)")
    p.add_argument("--max-frames", type=int, default=None, help="first frames only (default: whole clips)")
    p.add_argument("--masks", choices=("davis", "auto"), default="davis",
                   help="DAVIS masks to the tracker, or its own automatic ones (default: %(default)s)")
    p.add_argument("--train", action="store_true", help="also train where the gate asks for it (slow)")
    p.add_argument("--out", type=Path, required=True, help="JSON results (resumed: clips in it are skipped)")
    args = p.parse_args(argv)
    report = json.loads(args.out.read_text()) if args.out.is_file() else {"clips": {}}
    report["run_info"] = run_info()  # git SHA, versions, torch threads, command
    for name in [c for c in args.clips.split(",") if c]:
        if name in report["clips"]:
            continue
        report["clips"][name] = bench_one(name, args)
        print(name, json.dumps(report["clips"][name]), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
