#!/usr/bin/env python
"""Evaluate trackers x backends on BADJA, TAP-Vid pickles or the synthetic TAP benchmark.

    python badja_eval/run.py                                   # BADJA, every sequence with frames under ../shared/data
                                                               # (static, flow, dino-flow; names the ones skipped)
    python badja_eval/run.py --data-root DIR --sequences horsejump-high --trackers static,flow,dino \\
        --backends dsift,dsift+cosettle:proj.safetensors --preset fast --out runs/eval/badja
    python badja_eval/run.py --benchmark tapvid --pickle tapvid_davis.pkl --query-mode strided
    python badja_eval/run.py --benchmark synthetic --difficulty easy,medium,hard
    python badja_eval/run.py --benchmark davis-masks --split tune --trackers static,flow   # 16 DAVIS clips
    python badja_eval/run.py --benchmark davis-vos --backends dsift,dsift+cosettle:proj.safetensors  # J&F, 18 clips

Results are cached per (sequence, tracker, backend) under ``<out>/cache``: re-running the same command
after an interruption resumes. ``--workers N`` splits the sequences over N processes; ``--shard i/n``
runs one slice only (e.g. on different machines sharing ``<out>``), then a plain run writes the report.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from badja_eval import davis_masks, davis_vos, tapvid
from badja_eval.badja import evaluate_badja, list_sequences, load_sequence, skipped_sequences
from badja_eval.davis_masks import protocol as masks_protocol
from badja_eval.metrics import mean_over_videos
from badja_eval.report import build_rows, format_table, write_report
from badja_eval.runner import Runner, Task, fit_gits, make_methods
from badja_eval.synthetic import DIFFICULTIES, generate_benchmark
from cosettle.cli import device_arg
from cosettle.errors import UserError, cli_entry
from cosettle.io.atomic import check_output_dir
from cosettle.provenance import setup_logging
from tracker.registry import tracker_entry, tracker_names, trackers_help

log = logging.getLogger("badja_eval")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO.parent / "shared" / "data"  # the project's shared data, seen from a checkout
# what an error without data says: where each dataset comes from, and the benchmark that needs none
DATA_SOURCES = ("BADJA = joint annotations from github.com/benjiebob/BADJA + DAVIS 480p frames and masks from "
                "davischallenge.org, as DIR/badja/joint_annotations/<seq>.json and DIR/davis480/<seq>/; TAP-Vid: "
                "tapvid_davis.pkl from storage.googleapis.com/dm-tapnet/tapvid_davis.zip (--benchmark tapvid "
                "--pickle); see docs/evaluation.md#where-the-data-comes-from. Offline, no download (about 20 s): "
                "python badja_eval/run.py --benchmark synthetic --trackers static,flow --num-videos 1")
BENCHMARKS = ("badja", "tapvid", "synthetic", "davis-masks", "davis-vos")
QUERY_MODES = {"badja": ("clip0", "first-visible"), "tapvid": ("first", "strided"),
               "synthetic": ("first", "strided"), "davis-masks": ("frame0",), "davis-vos": ("mask0",)}
HEADERS = {"delta_seg": "δseg", "delta_3px": "δ3px", "false_visible": "wrong-visible↓", "average_jaccard": "AJ",
           "average_pts_within_thresh": "δavg", "occlusion_accuracy": "OA"}
for _k in ("delta_seg", "delta_3px", "average_jaccard", "average_pts_within_thresh", "occlusion_accuracy"):
    HEADERS["gain_" + _k] = "Δ" + HEADERS[_k]
METRICS = {"badja": ("delta_seg", "delta_3px", "false_visible", "visible"),
           "tapvid": ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")}
METRICS["synthetic"] = METRICS["tapvid"]
METRICS["davis-masks"] = ("in_mask", "in_mask_all", "visible", "jump")  # badja_eval/davis_masks.py
HEADERS.update(in_mask="in-mask", in_mask_all="in-mask(all)", visible="visible", jump="jump↓")
# the baselines and the project's default tracker; dino-flow trains per sequence (fast preset: about 8 min
# per sequence on 2 CPU cores), so the run states it up front
DEFAULT_TRACKERS = ("static", "flow", "dino-flow")
@dataclass
class EvalConfig:
    """The resolved settings of a run (written to ``<out>/config.yaml``)."""

    benchmark: str = "badja"
    data_root: str | None = None
    sequences: list[str] = field(default_factory=list)
    trackers: list[str] = field(default_factory=lambda: list(DEFAULT_TRACKERS))
    backends: list[str] = field(default_factory=lambda: ["dsift"])
    backend_args: dict = field(default_factory=dict)
    tracker_args: dict = field(default_factory=dict)
    preset: str = "fast"
    out: str | None = None
    query_mode: str | None = None
    pickle: str | None = None
    trust_pickle: bool = False
    resolution: str = "256"
    difficulty: list[str] = field(default_factory=lambda: ["easy", "medium", "hard"])
    num_videos: int = 3
    num_frames: int = 24
    seed: int = 0
    masks: bool = True
    device: str | None = None
    workers: int = 1
    shard: str | None = None
    max_new: int | None = None
    num_points: int = 20
    max_frames: int | None = None
    split: str = "all"
    flow_cache: str | None = None
    topk: int = 5  # davis-vos (badja_eval/davis_vos.py)
    queue: int = 7
    neighborhood: int = 12
    feature_cache: str | None = None


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line + exit 2, like every other user error
        raise UserError(message, "see --help")


def _csv(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _kv(text: str) -> dict:
    out = {}
    for item in _csv(text):
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(val)
    return out


def _tracker_kv(text: str) -> dict:
    out: dict = {}
    for key, val in _kv(text).items():
        name, dot, fld = key.partition(".")
        if not dot or not fld:
            raise argparse.ArgumentTypeError(f"expected TRACKER.FIELD=VALUE, got {key!r}")
        out.setdefault(name, {})[fld] = val
    return out


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="badja_eval/run.py", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmark", choices=BENCHMARKS, default="badja")
    p.add_argument("--data-root", help=f"BADJA data root (default: {DEFAULT_DATA_ROOT} when it exists)")
    p.add_argument("--sequences", type=_csv, default=[], help="comma list (BADJA sequences / video names)")
    p.add_argument("--trackers", type=_csv, default=list(DEFAULT_TRACKERS),
                   help="comma list (default: %s). Every tracker: %s" % (",".join(DEFAULT_TRACKERS), trackers_help()))
    p.add_argument("--backends", type=_csv, default=["dsift"],
                   help="backends for dino/features, e.g. dsift,dsift+cosettle:PATH (gain = projected - base)")
    p.add_argument("--backend-args", type=_kv, default={},
                   help="keyword arguments for every backend, e.g. weights=random,stride=7")
    p.add_argument("--tracker-args", type=_tracker_kv, default={},
                   help="tracker config overrides TRACKER.FIELD=VALUE, e.g. dino.iterations=200,flow.fb_threshold=2")
    p.add_argument("--preset", choices=("fast", "paper"), default="fast", help="DINO-Tracker preset")
    p.add_argument("--out", help="output folder (default runs/eval/<benchmark>)")
    p.add_argument("--query-mode", help="badja: clip0 (default) | first-visible; tapvid/synthetic: first (default) | strided")
    p.add_argument("--pickle", help="TAP-Vid pickle (--benchmark tapvid)")
    p.add_argument("--trust-pickle", action="store_true", help="allow arbitrary objects in the pickle (unsafe)")
    p.add_argument("--resolution", choices=("256", "full"), default="256",
                   help="TAP-Vid inference size: 256x256 (standard) or the pickle's size (separate category)")
    p.add_argument("--difficulty", type=_csv, default=["easy", "medium", "hard"], help="synthetic levels")
    p.add_argument("--num-videos", type=int, default=3, help="synthetic videos per level")
    p.add_argument("--num-frames", type=int, default=24, help="synthetic frames per video")
    p.add_argument("--seed", type=int, default=0, help="synthetic generator seed")
    p.add_argument("--num-points", type=int, default=20, help="davis-masks: query points per clip")
    p.add_argument("--max-frames", type=int, help="davis-masks: cut every clip to its first N frames")
    p.add_argument("--split", choices=("all", "tune", "heldout"), default="all",
                   help="davis-masks: clips to tune defaults on, the held-out ones, or all (+ a mean per split)")
    p.add_argument("--flow-cache", help="davis-masks: folder of the cached DIS flows (default <out>/flow; share it "
                                        "between runs)")
    p.add_argument("--topk", type=int, default=5, help="davis-vos: labels from the top-k most similar source cells")
    p.add_argument("--queue", type=int, default=7, help="davis-vos: previous frames used besides the first frame")
    p.add_argument("--neighborhood", type=int, default=12,
                   help="davis-vos: sources within ±N cells of the target (0 = whole frame)")
    p.add_argument("--feature-cache", help="davis-vos: feature cache folder (default $COSETTLE_CACHE/features)")
    p.add_argument("--no-masks", dest="masks", action="store_false", help="do not pass BADJA/DAVIS masks to fit()")
    p.add_argument("--device", type=device_arg,  # checked against this machine (cuda without a GPU, tpu)
                   help="torch device for backends/trackers (default: theirs)")
    p.add_argument("--workers", type=int, default=1, help="split sequences over N processes")
    p.add_argument("--shard", help="run only slice i/n of the sequences and exit (no report)")
    p.add_argument("--max-new", type=int, help="stop after N newly computed results (resume later)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--verbose", action="store_true")
    return p


def resolve(args: argparse.Namespace) -> EvalConfig:
    cfg = EvalConfig(**{k: v for k, v in vars(args).items() if k in EvalConfig.__dataclass_fields__})
    if cfg.query_mode is None:
        cfg.query_mode = QUERY_MODES[cfg.benchmark][0]
    if cfg.query_mode not in QUERY_MODES[cfg.benchmark]:
        raise UserError(f"query mode {cfg.query_mode!r} does not apply to {cfg.benchmark}",
                        f"use one of {', '.join(QUERY_MODES[cfg.benchmark])}")
    bad = [t for t in cfg.trackers if t not in tracker_names()]
    if bad or not cfg.trackers:
        raise UserError(f"unknown tracker(s) {bad or cfg.trackers}", f"choose from {', '.join(tracker_names())}")
    if cfg.workers < 1:
        raise UserError(f"--workers must be >= 1, got {cfg.workers}")
    if cfg.num_videos < 1 or cfg.num_frames < 2:
        raise UserError("--num-videos must be >= 1 and --num-frames >= 2")
    if cfg.out is None:
        cfg.out = str(Path("runs") / "eval" / cfg.benchmark)

    check_output_dir(cfg.out)  # a file / a path under a file / an unwritable folder: error before any work
    cfg.masks = cfg.masks and cfg.benchmark in ("badja", "davis-masks")  # the benchmarks with masks for fit()
    if cfg.benchmark in ("badja", "davis-masks", "davis-vos"):
        if cfg.data_root is None:
            if not DEFAULT_DATA_ROOT.is_dir():
                raise UserError(f"no --data-root given and the default {DEFAULT_DATA_ROOT} does not exist",
                                f"pass --data-root DIR. {DATA_SOURCES}")
            cfg.data_root = str(DEFAULT_DATA_ROOT)
        if not Path(cfg.data_root).is_dir():
            raise UserError(f"data root not found: {cfg.data_root}", f"check --data-root. {DATA_SOURCES}")
    if cfg.benchmark == "tapvid" and not cfg.pickle:
        raise UserError("--benchmark tapvid needs --pickle FILE", f"e.g. --pickle tapvid_davis.pkl. {DATA_SOURCES}")
    return cfg


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return (0, 1)
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"bad --shard {text!r}", "use i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"bad --shard {text!r}: need 0 <= i < n", "e.g. 0/4")
    return i, n


# ------------------------------------------------------------------------------------------- benchmarks
def badja_tasks(cfg: EvalConfig):
    root = Path(cfg.data_root)
    found = list_sequences(root)
    names = cfg.sequences or found
    if not cfg.sequences:  # "every sequence": say which annotated ones are not evaluated, and why

        for line in skipped_lines(skipped_sequences(root), len(found)):
            print(line)
    if not names:
        raise UserError(f"no BADJA sequences with frames under {root}", DATA_SOURCES)
    tasks, scorers = [], {}
    for name in names:
        seq = load_sequence(root, name)  # raises UserError naming any missing file
        q = seq.query_points(cfg.query_mode)
        content = ";".join(f"{p.name}:{p.stat().st_size}" for p in seq.frame_paths + seq.mask_paths)
        tasks.append(Task(name, lambda s=seq: (s.load_frames(), s.load_masks()), q,
                          (seq.num_frames, *seq.size_hw), hashlib.sha1(content.encode()).hexdigest()))
        scorers[name] = (lambda pred, s=seq, qf=q[:, 0]: evaluate_badja(s, pred.tracks, qf,
                                                                         pred_visible=pred.visible))
    return tasks, scorers, {n: n for n in names}


def skipped_lines(skipped: dict[str, str], n_found: int) -> list[str]:
    """stdout lines: the annotated sequences not evaluated, grouped by reason (one line per reason)."""
    if not skipped:
        return []
    total = n_found + len(skipped)
    lines = [f"BADJA: evaluating {n_found} of {total} annotated sequences; skipped {len(skipped)}:"]
    by_why: dict[str, list[str]] = {}
    for seq, why in skipped.items():
        key = "frames missing" if why.startswith("frames missing") else why
        by_why.setdefault(key, []).append(seq)
    for why, seqs in by_why.items():
        if why == "frames missing":
            for seq in seqs:
                lines.append(f"  skipped {seq}: {skipped[seq]}")
        else:
            lines.append(f"  skipped {', '.join(seqs)}: {why}")
    return lines


def tapvid_tasks(cfg: EvalConfig, pickles: list[Path]):
    tasks, scorers, groups = [], {}, {}
    loaded = [(pk, v) for pk in pickles for v in tapvid.load_pickle(pk, trust=cfg.trust_pickle)]
    if len({v.name for _, v in loaded}) != len(loaded):  # several list-layout shards: names per file
        loaded = [(pk, dataclasses.replace(v, name=f"{pk.stem}/{v.name}")) for pk, v in loaded]
    videos = [v for _, v in loaded]
    if cfg.sequences:
        known = {v.name for v in videos}
        missing = [s for s in cfg.sequences if s not in known]
        if missing:
            raise UserError(f"videos {missing} not in {', '.join(str(p) for p in pickles)}",
                            f"available: {', '.join(sorted(known)[:10])}{' ...' if len(known) > 10 else ''}")
        videos = [v for v in videos if v.name in cfg.sequences]
    for v in videos:
        t = tapvid.prepare(v, cfg.query_mode, cfg.resolution)
        if len(t.queries_ours) == 0:
            log.warning("video %s has no visible points; skipped", v.name)
            continue
        tasks.append(Task(v.name, lambda t=t: (t.load_frames(), None), t.queries_ours,
                          (v.num_frames, *t.inf_hw), f"{v.digest()}@{t.inf_hw}"))
        scorers[v.name] = (lambda pred, t=t: tapvid.score(t, pred.tracks, pred.visible))
        # synthetic videos are named <difficulty>_<index>: their rows are per difficulty level
        groups[v.name] = v.name.rsplit("_", 1)[0] if cfg.benchmark == "synthetic" else v.name
    return tasks, scorers, groups


def synthetic_pickles(cfg: EvalConfig) -> list[Path]:
    bad = [d for d in cfg.difficulty if d not in DIFFICULTIES]
    if bad or not cfg.difficulty:
        raise UserError(f"unknown difficulty {bad or cfg.difficulty}", f"choose from {', '.join(DIFFICULTIES)}")
    out = []
    for d in cfg.difficulty:
        path = Path(cfg.out) / "data" / f"synthetic_{d}_s{cfg.seed}_n{cfg.num_videos}_f{cfg.num_frames}.pkl"
        if not path.is_file():  # deterministic in its name's parameters, so an existing file is reused
            generate_benchmark(path, d, cfg.num_videos, cfg.seed, cfg.num_frames)
        out.append(path)
    return out


# ------------------------------------------------------------------------------------------- main
def spawn_workers(argv: list[str], n: int) -> None:
    """Run shards 0..n-1 as subprocesses of this script (sharing the cache), then return."""
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv, "--shard", f"{k}/{n}",
                               "--workers", "1", "--quiet"]) for k in range(n)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise UserError(f"worker exit codes {codes}", "see the messages above; re-run to resume")


@cli_entry
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)

    setup_logging(args.verbose)
    cfg = resolve(args)
    shard = parse_shard(cfg.shard)
    if cfg.benchmark == "davis-vos":  # no trackers: its own loop over backends x clips (badja_eval/davis_vos.py)
        return davis_vos.run(cfg, progress=not args.quiet)

    methods = make_methods(cfg.trackers, cfg.backends)
    if cfg.benchmark == "badja":
        tasks, scorers, groups = badja_tasks(cfg)
    elif cfg.benchmark == "davis-masks":
        tasks, scorers, groups = davis_masks.build_tasks(cfg, progress=not args.quiet)
    else:
        pickles = synthetic_pickles(cfg) if cfg.benchmark == "synthetic" else [Path(cfg.pickle)]
        tasks, scorers, groups = tapvid_tasks(cfg, pickles)
    if not tasks:
        raise UserError("nothing to evaluate", "check --sequences / the pickle")
    if shard == (0, 1):
        print(what_runs(cfg, len(tasks)))
    out = Path(cfg.out)
    runner = Runner(out / "cache", cfg.preset, cfg.device, use_masks=cfg.masks,
                    progress=not args.quiet, max_new=cfg.max_new, backend_kwargs=cfg.backend_args,
                    tracker_overrides=cfg.tracker_args)
    for b in sorted({m.backend for m in methods if m.backend}):  # fail fast on a bad backend name/file
        runner.backend(b)
    for m in methods:  # ... and on bad tracker settings
        runner.tracker_config(m)
    if cfg.workers > 1 and cfg.shard is None:
        strip = _strip_flag(argv, "--workers")
        spawn_workers(strip, min(cfg.workers, len(tasks)))
    preds = runner.run(tasks, methods, shard, desc=cfg.benchmark)
    if shard[1] > 1:
        print(f"shard {shard[0]}/{shard[1]}: {len(preds)} results in {out / 'cache'}")
        return 0
    missing = [(t.key, m.label) for t in tasks for m in methods if (t.key, m.label) not in preds]
    if missing:
        print(f"stopped with {len(missing)} of {len(tasks) * len(methods)} results missing "
              f"(--max-new {cfg.max_new}); re-run the same command to continue")
        return 0
    per_video = {f"{k}|{lab}": scorers[k](p) for (k, lab), p in preds.items()}
    scores = _group(per_video, groups, methods, METRICS[cfg.benchmark])
    seq_order = list(dict.fromkeys(groups[t.key] for t in tasks))
    metrics = METRICS[cfg.benchmark]
    rows = build_rows(scores, seq_order, methods, metrics)
    if cfg.benchmark == "davis-masks":  # + mean[tune] / mean[heldout] rows
        rows += davis_masks.split_mean_rows(scores, seq_order, methods, metrics)
    proto = protocol(cfg, len(tasks))
    print(proto)
    print(format_table(rows, metrics, HEADERS))
    paths = write_report(out, rows, metrics, benchmark=cfg.benchmark, config=asdict(cfg), per_video=per_video,
                         headers=HEADERS, protocol=proto,
                         extra_info={"query_mode": cfg.query_mode, "preset": cfg.preset,
                                     "newly_computed": runner.computed,
                                     # the code that trained each fit (fit_info.json), which may be older
                                     # than git_sha when the tracker reused a cached fit
                                     "fit_git": fit_gits(preds)})
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def what_runs(cfg: EvalConfig, n_videos: int) -> str:
    """One stdout line before the work: trackers, backends, videos, and the training cost if any."""
    trained = [t for t in cfg.trackers if tracker_entry(t).dino_config]  # trained per sequence
    cost = ""
    if trained:
        fits = n_videos * len(cfg.backends)  # dino and dino-flow share one fit per video and backend
        cost = (f"; {'/'.join(trained)} train{'s' if len(trained) == 1 else ''} once per video and backend "
                f"({fits} fit(s), ~8 min each on 2 CPU cores with the fast preset; cached in "
                f"{Path(cfg.out) / 'cache'}; --trackers static,flow skips training)")
    return (f"{cfg.benchmark}: trackers {', '.join(cfg.trackers)} on {n_videos} video(s)"
            + (f", backends {', '.join(cfg.backends)}" if trained or "features" in cfg.trackers else "") + cost)


def protocol(cfg: EvalConfig, n_videos: int) -> str:
    """One line that states how the numbers were made (publish it next to them)."""
    if cfg.benchmark == "davis-masks":
        return masks_protocol(cfg, n_videos)
    if cfg.benchmark == "badja":
        q = ("all 20 joints queried at clip frame 0" if cfg.query_mode == "clip0"
             else "each joint queried at its first visible frame")
        return (f"BADJA: {q}; visible joints scored on frames after the query; 854x480; "
                f"δseg = d < 0.2·sqrt(mask area), δ3px = d < 3 px; mean over {n_videos} video(s)")
    size = "256x256 frames" if cfg.resolution == "256" else "frames at the pickle's size (separate category)"
    what = "TAP-Vid" if cfg.benchmark == "tapvid" else (
        f"synthetic (seed {cfg.seed}, {cfg.num_videos} video(s)/level x {cfg.num_frames} frames; "
        f"rows = mean per level)")
    return (f"{what}: '{cfg.query_mode}' queries; inference on {size}; metrics at 256x256; "
            f"mean over {n_videos} video(s)")


def _group(per_video: dict, groups: dict, methods, metrics) -> dict:
    """Per-video scores -> per-row scores. BADJA/TAP-Vid: one row per video. Synthetic: one row per
    difficulty level, the simple mean over its videos (the per-video values stay in results.json)."""
    rows: dict[tuple[str, str], list] = {}
    for key, val in per_video.items():
        vid, lab = key.split("|", 1)
        rows.setdefault((groups[vid], lab), []).append(val)
    return {k: (v[0] if len(v) == 1 else mean_over_videos(v, metrics)) for k, v in rows.items()}


def _strip_flag(argv: list[str], flag: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == flag:
            skip = True
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    main()
