"""Peak-memory estimate of a DINO-Tracker run, and the pre-flight check that refuses a run that cannot fit.

The estimate adds the arrays a run holds at its three peaks (sizes from the backend's ``Geometry`` and
the configs, nothing hard-coded):

* always: the process as it is now (``base``: interpreter, torch, the backend's weights), the caller's
  decoded video (T x H0 x W0 x 3 bytes; ``scripts/track.py`` holds it), the masks (T x H x W bool);
* preprocessing: trajectory chaining holds the finished direct-filter store (8 bytes per point), the
  frame-major points of the sweep (12 bytes per point) and the packed store (8); the precomputed
  best-buddy stage holds two K x K affinity matrices (K = feature cells per frame);
* training: both trajectory stores + DeltaDINO's activations on one iteration's frames (calibrated);
* refinement / inference: the refined features of every frame in float16 (2 bytes per value, computed
  and rounded a chunk at a time) plus one block of ``infer_block_frames`` L2-normalised float32 maps,
  plus the per-query-frame tracking buffers (queries x T x C floats, three of them) and the head's
  activations on one chunk of ``infer_chunk_maps`` cost volumes (calibrated).

Points per trajectory store = ``TRAJ_DENSITY`` x T x (lattice points per frame): the chaining keeps
about one live trajectory per lattice point, plus new seeds where flow is inconsistent. The density is
measured (``scripts/bench_scale.py`` reports measured vs estimated peaks); it depends on the video's
motion, so the check leaves a margin (``MARGIN``).
"""
from __future__ import annotations

import logging
import math
import os

from cosettle.errors import UserError
from cosettle.provenance import peak_rss_mb

from .config import PreprocessConfig, train_switch
from .resolution import work_backend

log = logging.getLogger(__name__)

MB = 1024.0 ** 2
TRAJ_DENSITY = 1.5        # trajectory points per lattice point per frame (DAVIS parkour: 7.74 M points, 200 frames, 120x212 lattice -> 1.52)
# Training and head memory, calibrated on two runs: the 50-frame scale run at 424x240 (scripts/bench_scale.py;
# docs/preprocessing.md "Long videos") and the 96x160 run of tests/test_memory.py:
TRAIN_FIXED_MB = 350.0    # autograd / optimiser / allocator overhead of a training step, any size
TRAIN_ACT = 15.2          # x (frames per iteration x work pixels x cnn_width x 4 bytes): DeltaDINO + backward
HEAD_ACT = 4.2            # x (infer_chunk_maps x cells x (head_width + 4) x 4 bytes): head on a chunk of maps
MARGIN = 1.1              # the pre-flight check refuses a run whose estimate x MARGIN exceeds the limit
ENV_LIMIT = "COSETTLE_MAX_MEMORY_MB"


def current_rss_mb() -> float:
    """Resident memory of this process now (Linux /proc; falls back to the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def available_mb() -> float | None:
    """Memory this run may use: ``$COSETTLE_MAX_MEMORY_MB`` when set, else MemAvailable + our RSS."""
    env = os.environ.get(ENV_LIMIT)
    if env:
        try:
            return float(env)
        except ValueError:
            raise UserError(f"{ENV_LIMIT}={env!r} is not a number", f"set it to megabytes, e.g. {ENV_LIMIT}=8000")
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: line.split()[1] for line in f}
        return int(info["MemAvailable"]) / 1024.0 + current_rss_mb()
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _work_geometry(backend, cfg, image_h: int, image_w: int):
    b = work_backend(backend, cfg.resolution, image_h, image_w)
    return b.geometry(image_h, image_w), int(b.feat_dim)


def estimate_peak_memory(num_frames: int, image_h: int, image_w: int, backend, cfg, num_queries: int = 0,
                         base_mb: float | None = None) -> dict:
    """Estimated peak RSS (MB) of ``Tracker(backend, cfg).fit`` + ``track`` on a T x H0 x W0 video."""
    T = int(num_frames)
    g, C = _work_geometry(backend, cfg, image_h, image_w)
    pre = cfg.preprocess if isinstance(cfg.preprocess, PreprocessConfig) else PreprocessConfig(**(cfg.preprocess or {}))
    H, W = g.input_h, g.input_w
    K = g.grid_h * g.grid_w
    s = max(1, int(pre.traj_stride))
    lattice = math.ceil(H / s) * math.ceil(W / s)
    points = TRAJ_DENSITY * T * lattice
    n_stores = 2 if pre.bb_flow_filter else 1
    base = current_rss_mb() if base_mb is None else float(base_mb)
    feat_values = T * C * K
    parts = {
        "base": base,
        "video": T * image_h * image_w * 3 / MB,
        "masks": T * H * W / MB,
        "trajectory_stores": n_stores * points * 8 / MB,
        "chaining": (12 + 8) * points / MB,
        "best_buddy_pair": 0.0 if pre.bb_on_demand and pre.bb_max_pairs == 0 else 2 * K * K * 4 / MB,
        "train": TRAIN_FIXED_MB + TRAIN_ACT * (2 if cfg.separate_fg_bg_frames else 1) * cfg.batch_n_frames * H * W
        * cfg.cnn_width * 4 / MB,
        "head": HEAD_ACT * min(cfg.infer_chunk_maps, max(1, num_queries) * T) * K * (cfg.head_width + 4) * 4 / MB,
        # float16 refined features of the clip + one float32 block of normalised maps
        "refine": (feat_values * 2 + min(T, cfg.infer_block_frames) * C * K * 4) / MB,
        "queries": 3 * num_queries * T * C * 4 / MB,
    }
    always = parts["base"] + parts["video"] + parts["masks"]
    phases = {
        # the direct store is done while the no-direct one is chained (the larger of the two chainings)
        "preprocess": parts["trajectory_stores"] / n_stores * (n_stores - 1) + parts["chaining"]
        + parts["best_buddy_pair"],
        "train": parts["trajectory_stores"] + parts["train"],
        "inference": parts["trajectory_stores"] + parts["refine"] + parts["queries"] + parts["head"],
    }
    phase = max(phases, key=phases.get)
    return {"peak_mb": always + phases[phase], "phase": phase, "parts_mb": {k: round(v, 1) for k, v in parts.items()},
            "phases_mb": {k: round(always + v, 1) for k, v in phases.items()}, "frames": T,
            "work_size": [W, H], "grid": [g.grid_h, g.grid_w], "feat_dim": C}


def frames_that_fit(limit_mb: float, image_h: int, image_w: int, backend, cfg, num_queries: int = 0,
                    base_mb: float | None = None) -> int:
    """Largest frame count whose estimate x MARGIN fits ``limit_mb`` (0 if none)."""
    base = current_rss_mb() if base_mb is None else base_mb
    lo, hi = 0, 1
    while MARGIN * estimate_peak_memory(hi, image_h, image_w, backend, cfg, num_queries, base)["peak_mb"] <= limit_mb:
        lo, hi = hi, hi * 2
        if hi > 10 ** 7:
            return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if MARGIN * estimate_peak_memory(mid, image_h, image_w, backend, cfg, num_queries, base)["peak_mb"] <= limit_mb:
            lo = mid
        else:
            hi = mid
    return lo


def check_memory(num_frames: int, image_h: int, image_w: int, backend, cfg, num_queries: int = 0) -> dict:
    """Raise a one-line UserError before any work when the run's estimated peak memory does not fit."""
    est = estimate_peak_memory(num_frames, image_h, image_w, backend, cfg, num_queries)
    limit = available_mb()
    log.info("estimated peak memory %.0f MB (%s phase; %s MB available)", est["peak_mb"], est["phase"],
             "unknown" if limit is None else f"{limit:.0f}")
    if limit is not None and est["peak_mb"] * MARGIN > limit:
        fit = frames_that_fit(limit, image_h, image_w, backend, cfg, num_queries)
        fix = (f"pass --max-frames {fit} (or --frame-stride {math.ceil(num_frames / max(fit, 1))}), or a smaller "
               f"--resolution" if fit >= 2 else "pass a smaller --resolution")
        raise UserError(f"this run needs about {est['peak_mb'] / 1024:.1f} GB of memory ({num_frames} frames, "
                        f"{est['phase']} peak) but {limit / 1024:.1f} GB is available", fix)
    return est


# -- time -----------------------------------------------------------------------------------------------
# Prior seconds per frame (per frame pair for "fusion", per training iteration for "train") of each stage
# with the defaults (fast preset, dsift, 424x240 work size, stride-2 trajectories, direct window 8). They
# only seed the estimate until this run has timed its own work (tracker/eta.py): re-measured on the
# 2 shared CPU cores at load average ~6 (the demo, 256x192 work size, and the first 50 frames of DAVIS
# cows, 424x240; docs/tracking-cli.md "Time estimate"); the previous table (load ~14) was 3-5x too high.
STAGE_RATES = {"frames": 0.015, "features": 0.06, "flows": 0.035, "masks": 0.03, "trajectories": 0.2,
               "trajectories_nodirect": 0.05, "best_buddies": 0.0, "train": 1.4, "refine": 0.05,
               "track": 0.03}
RATE_PIXELS = 424 * 240
TRAIN_CYC_COST = 1.3      # an iteration with the cycle + refined-BB losses vs one without (demo 1.0, cows 50 frames 2.0)
FUSION_RATE = 0.5         # s per frame pair at 854x480: dino-flow's full-resolution flows + refinement (in track;
                          # demo at 256x192: 1.6 s for 23 pairs, x8.3 pixels; cows 50 frames: 44.7 s at load ~15)
FUSION_PIXELS = 854 * 480
# s per frame to write the outputs (tracks files, overlay video and still): 0.01 + 0.12 at 854x480 scaled with the
# pixels. Measured on the 2 shared cores: the demo (256x192) 0.017 s per frame at load average 5, 0.036-0.045 at 8;
# alone at load 10: 0.09 at 256x192, 0.18 at 368x480, 0.32 at 854x480. Without the overlay: tracks files, 0.002 s
# Idle (the 2 cores alone, CI): the demo writes in 0.22-0.25 s (0.010 s per frame) and loads its cache in 0.12 s, so the
# load-5 rates made a cached demo re-run's first estimate 1.55-2.05x its time there (0.81 s for 0.40-0.53 s). The
# rates below sit between idle and load 5 (demo: 0.014 s per frame written, 0.16 s loaded): about 1.2-1.6x idle
# and 0.8-0.9x at load 7, inside issue 28's 1.5x (+0.2 s) on both.
OUTPUT_FRAME_S, OUTPUT_RATE = 0.004, 0.083
LOAD_RATE = 0.0028        # s per MB to read and verify a cached stage (the demo's 57 MB: 0.12 s idle, 0.16-0.2 s at load 5, 0.3 at 8)
# the number of queries, where the run knows it (the CLI): tracking and writing grow with it. Measured on the demo's
# cached fit (256x192, 24 frames, dino, 1 thread, load average 7-8): track 0.10 s for 4 queries, 0.26 for 16, 1.03 for
# 64, 4.0 for 256, 8.9 for 576 -> 0.04 s + 0.0154 s per query; at 424x240 (scale 1) per frame: 0.0035 s + 0.0013 s
# per query. STAGE_RATES["track"] (0.03 s per frame) is that at about 20 queries, for a plan that does not know them
# (a fit called from Python). Writing (static tracker, 24 frames, --overlay trails): 256x192 0.012-0.019 s per frame
# at 4 queries, 0.053 at 256; 854x480 0.116 at 4, 0.13 at 64, 0.165-0.179 at 256 -> OUTPUT_FRAME_S 0.004 and
# 0.00015 s per query and frame (OUTPUT_FRAME_S was 0.01, which made a cached demo re-run's first estimate 1.5-1.7x
# the time it had left, with the track prior at 0.03 s per frame for its 6 queries, 3.6x their measured time).
TRACK_FRAME_S, TRACK_QUERY_S = 0.0035, 0.0013
OUTPUT_QUERY_S = 0.00015


def time_plan(num_frames: int, image_h: int, image_w: int, backend, cfg, tracker: str = "dino",
              outputs: bool = False, overlay: bool = True, num_queries: int | None = None) -> dict:
    """{stage: (units, prior seconds per unit)} of a DINO-Tracker run, the input of ``tracker.eta.RunETA``.

    Per-frame stages scale with the work size's pixel count; training does not grow with T; the
    ``dino-flow`` fusion adds full-resolution flows per frame pair, scaled with the original size;
    ``outputs``: the CLI's last stage, writing the files (and the ``overlay`` at the original size).
    ``num_queries``: tracking and writing grow with it (None: not known yet, a typical 20 for tracking)."""
    g, _ = _work_geometry(backend, cfg, image_h, image_w)
    scale = g.input_h * g.input_w / RATE_PIXELS
    plan = {k: (float(num_frames), v * scale) for k, v in STAGE_RATES.items() if k != "train"}
    # training in two stages: from cyc_after / rbb_after on, the cycle and refined best-buddy losses run
    # too and an iteration costs more (DAVIS cows, 50 frames at 424x240: 1.35 -> 2.7 s; the demo: no change)
    switch = train_switch(cfg)
    plan["train"] = (float(switch), STAGE_RATES["train"] * scale)
    if cfg.iterations > switch:
        plan["train+cyc"] = (float(cfg.iterations - switch), STAGE_RATES["train"] * TRAIN_CYC_COST * scale)
    # refine and track run after training: keep the stage order of a run
    plan = {k: plan[k] for k in [k for k in plan if k not in ("refine", "track")] + ["refine", "track"]}
    plan = {k: v for k, v in plan.items() if k != "train" or v[0] > 0}
    if num_queries is not None:
        plan["track"] = (float(num_frames), (TRACK_FRAME_S + TRACK_QUERY_S * num_queries) * scale)
    if tracker == "dino-flow":  # the fusion's flows run inside track(): one stage, timed as one
        units, rate = plan["track"]
        fusion = FUSION_RATE * image_h * image_w / FUSION_PIXELS * max(num_frames - 1, 0) / max(num_frames, 1)
        plan["track"] = (units, rate + fusion)
    if outputs:
        per_frame = OUTPUT_FRAME_S + OUTPUT_RATE * image_h * image_w / FUSION_PIXELS if overlay else 0.002
        per_frame += OUTPUT_QUERY_S * (num_queries or 0)
        plan["write outputs"] = (float(num_frames), per_frame)
    return plan


def estimate_time(num_frames: int, image_h: int, image_w: int, backend, cfg, tracker: str = "dino") -> dict:
    """Prior seconds per stage and in total (see ``STAGE_RATES``): the first, rough estimate."""
    out = {k: u * r for k, (u, r) in time_plan(num_frames, image_h, image_w, backend, cfg, tracker).items()}
    out["total"] = sum(out.values())
    return {k: round(v, 1) for k, v in out.items()}

