"""DINO-Tracker preprocessing on any backend: frames, features, masks, flows, trajectories, best buddies.

Everything is at the *work resolution* = the backend's input size (``geometry.input_h x input_w``).

Each stage is a function call (never a subprocess) cached in ``work_dir/<stage>-<key>/``, where the
key hashes the video content and every setting that changes the stage's output (and its inputs'
keys). A stage writes into a temporary folder that is renamed into place only when complete, with a
``meta.json`` listing its files and sizes; a cached stage is loaded only when that check passes, else
it is recomputed. So a killed run leaves no partial stage, and re-running resumes at the first
missing stage. A failing stage raises with its name (the reference's sub-scripts failed silently and
left missing files for the next stage).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F

from cosettle.errors import UserError
from cosettle.frames import as_frames
from cosettle.geometry import Geometry
from cosettle.hashing import array_digest, file_digest, json_digest
from cosettle.provenance import peak_rss_mb

from ..config import PreprocessConfig
from ..eta import StageTimes
from . import best_buddies as bbm
from .flow import make_flow_estimator, write_consecutive_flows
from .lazy_array import NpyArray, NpyWriter
from .masks import check_masks, motion_masks, resize_masks, saliency_masks, save_masks_png, trajectory_foreground
from .trajectories import chain_trajectories
from .trajectory_store import TrajectoryStore

log = logging.getLogger(__name__)

STAGES = ("frames", "features", "flows", "masks", "trajectories", "trajectories_nodirect", "best_buddies")
MASK_SOURCES = ("auto", "user", "saliency", "motion")


@dataclass
class Preprocessed:
    """Frames and features are lazy per-frame readers of the cache files (``NpyArray``: index them like
    arrays; ``np.asarray`` / ``.load()`` reads all), so the clip's arrays are never all in memory."""

    geometry: Geometry
    frames: Any               # (T, input_h, input_w, 3) uint8 (NpyArray or ndarray)
    features: Any             # (T, C, grid_h, grid_w) float32 raw backend features (NpyArray(as_torch) or tensor)
    trajectories: Any         # TrajectoryStore (sparse; .dense() -> (N, T, 2) NaN array) or a dense array
    traj_fg: np.ndarray       # (N,) bool
    masks: np.ndarray         # (T, input_h, input_w) bool
    best_buddies: Any         # {(s, t): {"src", "dst", "cos", "r"}} both orders (precomputed pairs), or a
                              # BestBuddyProvider (bb_on_demand: every pair, computed when asked)
    work_dir: Path
    stats: dict = field(default_factory=dict)  # per stage: cached, seconds, key, counts (flow calls...)


# -- stage cache ---------------------------------------------------------------------------------------
class StageCache:
    """Folders ``<stage>-<key>/`` with a ``meta.json`` (written last) describing their files.

    ``meta.json`` holds each file's size and blake2b digest; a folder whose files do not match them
    (truncated, corrupted in place, written by an older version without digests) costs one log line
    and is recomputed -- never served.
    """

    def __init__(self, work_dir: Path):
        self.root = Path(work_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self._clean_stale()

    def _clean_stale(self):
        # temp folders of dead processes (SIGKILL skips our cleanup): remove them
        for p in self.root.glob(".tmp-*"):
            try:
                pid = int(p.name.rsplit("-", 1)[1])
                os.kill(pid, 0)
                alive = pid != os.getpid()
            except (ValueError, ProcessLookupError, IndexError):
                alive = False
            except PermissionError:
                alive = True
            if not alive:
                shutil.rmtree(p, ignore_errors=True)

    def path(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key}"

    def check(self, folder: Path) -> dict | None:
        meta, why = self._verify(folder)
        if why is not None and folder.exists():
            log.warning("stage cache %s is unusable (%s); recomputing", folder.name, why)
        return meta

    @staticmethod
    def _verify(folder: Path) -> tuple[dict | None, str | None]:
        """-> (meta, None) when every file matches its recorded size and digest, else (None, why)."""
        meta_file = folder / "meta.json"
        if not meta_file.is_file():
            return None, "no meta.json (incomplete)"
        try:
            meta = json.loads(meta_file.read_text())
            digests = meta.get("digests")
            if not isinstance(digests, dict) or set(digests) != set(meta["files"]):
                return None, "no checksums (written by an older version)"
            for fname, size in meta["files"].items():
                if (folder / fname).stat().st_size != size:
                    return None, f"{fname} has the wrong size (truncated)"
                if file_digest(folder / fname) != digests[fname]:
                    return None, f"{fname} does not match its checksum (corrupt)"
        except (OSError, ValueError, KeyError, TypeError) as err:
            return None, f"unreadable ({type(err).__name__})"
        return meta, None

    def run(self, name: str, fields: dict, compute: Callable[[Path], dict], load: Callable[[Path, dict], Any]):
        """-> (result, info). ``compute(folder)`` writes files and returns JSON-able meta."""
        key = json_digest({"stage": name, **fields})
        final = self.path(name, key)
        tic = time.time()
        meta = self.check(final)
        if meta is not None:
            try:
                result = load(final, meta)
                log.info("stage %-22s cached (%s)", name, final.name)
                return result, {**meta.get("stats", {}), "cached": True, "seconds": time.time() - tic,
                                "key": key, "peak_rss_mb": peak_rss_mb()}
            except Exception as err:  # corrupt cache: say so and recompute
                log.warning("stage %s: cached files in %s unreadable (%s); recomputing", name, final, err)
                shutil.rmtree(final, ignore_errors=True)
        elif final.exists():  # check() logged why
            shutil.rmtree(final, ignore_errors=True)
        tmp = self.root / f".tmp-{name}-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            try:
                stats = compute(tmp) or {}
            except UserError as err:
                raise UserError(f"preprocessing stage '{name}': {err.message}", err.fix) from err
            except Exception as err:
                raise RuntimeError(f"preprocessing stage '{name}' failed: {type(err).__name__}: {err}") from err
            files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
            digests = {f: file_digest(tmp / f) for f in files}
            meta = {"stage": name, "key": key, "fields": fields, "stats": stats, "files": files,
                    "digests": digests}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
            try:
                os.rename(tmp, final)
            except OSError:  # another process finished the same stage first: keep theirs
                if self.check(final) is None:
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        result = load(final, self.check(final))
        secs = time.time() - tic
        log.info("stage %-22s computed in %.1fs (%s)", name, secs, final.name)
        return result, {**stats, "cached": False, "seconds": secs, "key": key, "peak_rss_mb": peak_rss_mb()}


class _ReportingCache(StageCache):
    """StageCache whose stages are reported to the run's time-left estimate (``eta``, a ``tracker.eta.RunETA``)."""

    def __init__(self, work_dir: Path, eta: StageTimes):
        super().__init__(work_dir)
        self.eta = eta

    def run(self, name, fields, compute, load):
        self.eta.begin(name)
        result, info = super().run(name, fields, compute, load)
        self.eta.finish(name, info.get("seconds", 0.0), bool(info.get("cached")))
        return result, info


def _save_npy(path: Path, arr: np.ndarray):
    np.save(path, arr, allow_pickle=False)


def cached_stages(work_dir: Path | str) -> dict[str, int]:
    """{stage: bytes} of the stages that have a complete folder (``meta.json`` is written last) in
    ``work_dir``: what a re-run reads instead of computing. For the time estimate only; ``StageCache.run``
    verifies a folder before it loads it."""
    out: dict[str, int] = {}
    for meta in Path(work_dir).glob("*-*/meta.json"):
        name = meta.parent.name.rsplit("-", 1)[0]
        if name in STAGES:
            out[name] = out.get(name, 0) + sum(f.stat().st_size for f in meta.parent.iterdir() if f.is_file())
    return out


# -- helpers -------------------------------------------------------------------------------------------
def resize_frames(frames: np.ndarray, h: int, w: int, chunk: int = 8) -> np.ndarray:
    """uint8 frames -> (T, h, w, 3) uint8 with the backends' resize (antialiased bilinear)."""
    if frames.shape[1:3] == (h, w):
        return frames
    out = np.empty((len(frames), h, w, 3), np.uint8)
    for s in range(0, len(frames), chunk):
        x = torch.from_numpy(frames[s:s + chunk]).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        out[s:s + chunk] = y.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return out


def is_dino_backend(backend) -> bool:
    """A DINO / DINOv2 ViT (any weights, projected or not): the PCA saliency threshold is tuned for it."""
    names = (getattr(backend, "name", ""), getattr(backend, "timm_name", ""))
    return any("dino" in str(n).lower() for n in names)


# -- the pipeline --------------------------------------------------------------------------------------
def preprocess_video(video, backend, config: PreprocessConfig | None = None, work_dir: Path | str = "work",
                     masks: np.ndarray | None = None, progress: bool = True, until: str | None = None,
                     video_digest: str | None = None, eta: StageTimes | None = None) -> Preprocessed:
    """Run (or load from ``work_dir``) every preprocessing stage. See the module docstring.

    ``until="masks"``: only the stages the foreground masks need (frames, then the features for saliency
    masks or the flows for motion masks; nothing more for the user's) and the masks; ``trajectories`` and
    ``best_buddies`` of the result are None. What ``dino-flow``'s flow pre-pass needs before it decides
    whether to train (tracker/fusion_gate.py); a later full run loads these stages from the cache.

    ``video_digest``: the video's content digest when the caller has it (``Tracker.fit``), so the video is
    not hashed again; by default ``as_frames(video).content_digest``. ``eta``: the run's time estimate, told of
    every stage and every frame (pair) of the flows and trajectories (None: nothing is estimated)."""
    cfg = config or PreprocessConfig()
    if until not in (None, "masks"):
        raise ValueError(f"until must be None or 'masks', not {until!r}")
    eta = eta if eta is not None else StageTimes()
    if cfg.threads is None:
        return _preprocess(video, backend, cfg, work_dir, masks, progress, until, video_digest, eta)
    before = torch.get_num_threads()
    torch.set_num_threads(int(cfg.threads))
    try:
        return _preprocess(video, backend, cfg, work_dir, masks, progress, until, video_digest, eta)
    finally:
        torch.set_num_threads(before)


def _preprocess(video, backend, cfg: PreprocessConfig, work_dir, masks, progress, until=None,
                video_digest=None, eta: StageTimes | None = None) -> Preprocessed:
    eta = eta if eta is not None else StageTimes()
    # the one normaliser (a float clip is converted, not refused); a Frames from Tracker.fit is passed through
    # with its digest, so the fit hashes the video once
    video = as_frames(video, min_frames=2, who="the tracker's video")
    frames0 = video.array
    T, H0, W0 = frames0.shape[:3]
    if masks is not None:
        masks = check_masks(masks, T, H0, W0)
    geom = backend.geometry(H0, W0)
    cache = _ReportingCache(Path(work_dir), eta)
    vid_key = video_digest or video.content_digest  # == array_digest(frames0): the stage keys as before
    stats: dict = {"video": {"frames": T, "height": H0, "width": W0, "content": vid_key},
                   "geometry": geom.to_dict()}
    log.info("preprocessing %d frames %dx%d -> work %dx%d (HxW; %s), cache %s", T, H0, W0, geom.input_h,
             geom.input_w, backend.name, cache.root)

    # the foreground masks' source, first: a run ``until`` the masks computes only what they need
    source = cfg.mask_source
    if source not in MASK_SOURCES:
        raise UserError(f"unknown mask_source {source!r}", f"use one of {', '.join(MASK_SOURCES)}")
    if source == "auto":
        # motion masks beat PCA saliency by 9 delta_seg points with dsift on horsejump-high (docs/history.md);
        # the saliency threshold is the reference's, tuned for DINO features
        source = "user" if masks is not None else "saliency" if is_dino_backend(backend) else "motion"
    if source == "user" and masks is None:
        raise UserError("mask_source 'user' but no masks were given", "pass masks, or use auto/saliency/motion")
    if source != "user" and masks is not None:
        log.warning("mask_source %r: ignoring the given masks", source)
    need_features = until is None or source == "saliency"
    need_flows = until is None or source == "motion"

    # 1. frames at the work resolution
    def c_frames(d):
        chunk = 8
        with NpyWriter(d / "frames.npy", (T, geom.input_h, geom.input_w, 3), np.uint8) as wr:
            for s in range(0, T, chunk):  # streamed: one chunk of resized frames in memory
                wr.write(resize_frames(frames0[s:s + chunk], geom.input_h, geom.input_w, chunk))
        return {}

    def l_frames(d, m):
        f = NpyArray(d / "frames.npy")
        if f.shape != (T, geom.input_h, geom.input_w, 3) or f.dtype != np.uint8:
            raise ValueError(f"frames {f.shape} {f.dtype} do not match the video")
        return f

    frames_fields = {"video": vid_key, "size": [geom.input_h, geom.input_w], "v": 1}
    frames, stats["frames"] = cache.run("frames", frames_fields, c_frames, l_frames)

    # 2. raw backend features
    feat_fields = {"video": vid_key, "backend": backend.cache_key(), "geometry": geom.to_dict(), "v": 1}

    def c_feats(d):
        # streamed to disk chunk by chunk: the whole (T,C,h,w) array is never held twice in memory
        shape = (T, backend.feat_dim, geom.grid_h, geom.grid_w)
        with NpyWriter(d / "features.npy", shape, np.float32) as wr:
            for start, f in backend.iter_chunks(frames0, cfg.feature_chunk, progress=progress):
                wr.write(f.float().numpy())
        return {"shape": list(shape)}

    def l_feats(d, m):
        f = NpyArray(d / "features.npy", as_torch=True)  # read per frame on demand
        if tuple(f.shape) != (T, backend.feat_dim, geom.grid_h, geom.grid_w):
            raise ValueError(f"features shape {tuple(f.shape)} does not match the geometry")
        return f

    features = None
    if need_features:
        features, stats["features"] = cache.run("features", feat_fields, c_feats, l_feats)

    # 3. consecutive flows, once (before the masks: motion masks use them)
    estimator = make_flow_estimator(cfg.flow, cfg.dis_preset, cfg.raft_weights, cfg.device, cfg.dis_finest_scale)
    flow_fields = {"frames": stats["frames"]["key"], "estimator": estimator.cache_fields(), "v": 1}

    def c_flows(d):
        write_consecutive_flows(frames, estimator, d / "fwd.npy", d / "bwd.npy", progress=progress, eta=eta)
        return {"flow_calls": estimator.calls}

    def l_flows(d, m):
        fwd, bwd = NpyArray(d / "fwd.npy"), NpyArray(d / "bwd.npy")  # read per frame by every consumer
        if fwd.shape != (T - 1, geom.input_h, geom.input_w, 2) or bwd.shape != fwd.shape:
            raise ValueError(f"flows {fwd.shape} / {bwd.shape} do not match the frames")
        return fwd, bwd

    fwd = bwd = None
    if need_flows:
        (fwd, bwd), stats["flows"] = cache.run("flows", flow_fields, c_flows, l_flows)

    # 4. foreground masks: the user's, PCA saliency of the backend features, or motion (flow residual)
    if source == "user":
        mask_fields = {"user": array_digest(masks), "size": [geom.input_h, geom.input_w], "v": 1}
    elif source == "saliency":
        mask_fields = {"features": stats["features"]["key"], "threshold": cfg.fg_threshold, "seed": cfg.seed,
                       "v": 1}
    else:
        mask_fields = {"source": "motion", "flows": stats["flows"]["key"], "threshold": cfg.motion_threshold,
                       "seed": cfg.seed, "v": 1}

    def c_masks(d):
        if source == "user":
            m, info = resize_masks(masks, geom.input_h, geom.input_w), {"source": "user"}
        elif source == "saliency":
            m, info = saliency_masks(features, geom, cfg.fg_threshold, cfg.seed)
            info["source"] = "pca-saliency"
        else:
            m, info = motion_masks(fwd, bwd, cfg.motion_threshold, seed=cfg.seed)
            info["source"] = "motion"
        save_masks_png(d / "masks", m)
        log.info("masks (%s): foreground %.1f%% of pixels", info["source"], 100 * float(m.mean()))
        return {**info, "fg_fraction": float(m.mean())}

    def l_masks(d, m):
        files = sorted((d / "masks").glob("*.png"))
        if len(files) != T:
            raise ValueError(f"{len(files)} mask files for {T} frames")
        return np.stack([iio.imread(f) > 127 for f in files])

    fg_masks, stats["masks"] = cache.run("masks", mask_fields, c_masks, l_masks)
    if until == "masks":
        return Preprocessed(geom, frames, features, None, np.zeros(0, bool), fg_masks, None, cache.root, stats)

    # 5. trajectories with the direct-flow filter (training supervision) ...
    traj_common = {"flows": stats["flows"]["key"], "fb": cfg.fb_threshold, "min_len": cfg.min_traj_len,
                   "stride": cfg.traj_stride, "v": 2}  # v2: sparse store (same trajectories)

    def c_traj(direct: bool):
        def compute(d):
            calls0 = estimator.calls
            traj, st = chain_trajectories(fwd, bwd, frames, estimator, cfg.fb_threshold, cfg.direct_threshold,
                                          cfg.direct_window, cfg.min_traj_len, cfg.traj_stride, direct, progress,
                                          eta=eta)
            traj.save(d)
            return {"num_trajectories": st.num_trajectories, "num_points": int(len(traj.points)),
                    "flow_calls": estimator.calls - calls0, "per_start": st.per_start}
        return compute

    def l_traj(d, m):
        traj = TrajectoryStore.load(d)
        if traj.num_frames != T:
            raise ValueError(f"trajectories cover {traj.num_frames} frames, expected {T}")
        return traj

    direct_fields = {**traj_common, "direct": cfg.direct_threshold, "window": cfg.direct_window}
    trajectories, stats["trajectories"] = cache.run("trajectories", direct_fields, c_traj(True), l_traj)

    # ... and without it (only to decide which best buddies flow already explains)
    traj_nodirect = None
    if cfg.bb_flow_filter:
        traj_nodirect, stats["trajectories_nodirect"] = cache.run(
            "trajectories_nodirect", {**traj_common, "direct": None}, c_traj(False), l_traj)

    del fwd, bwd  # the flows are on disk; release them before the memory-heavy best-buddy stage

    # 6. best buddies: on demand (every pair, when the trainer draws it) or a precomputed subset
    if cfg.bb_on_demand:
        best_buddies = bbm.BestBuddyProvider(features, geom, traj_nodirect, cfg.bb_box, cfg.bb_iou, cfg.bb_topk,
                                             cfg.bb_flow_filter, cfg.bb_window, cfg.bb_cache_pairs)
        stats["best_buddies"] = {"mode": "on_demand", "ordered_pairs": len(best_buddies), "cached": True,
                                 "seconds": 0.0, "peak_rss_mb": peak_rss_mb()}
        return _finish(geom, frames, features, trajectories, fg_masks, best_buddies, cache, stats, cfg, T)
    pairs = bbm.select_pairs(T, cfg.bb_max_pairs, cfg.bb_window, cfg.seed)
    bb_fields = {"features": stats["features"]["key"],
                 "traj": stats.get("trajectories_nodirect", {}).get("key"), "box": cfg.bb_box,
                 "iou": cfg.bb_iou, "topk": cfg.bb_topk, "pairs": json_digest(pairs), "v": 1}

    def c_bb(d):
        bb, st = bbm.compute_best_buddies(features, geom, pairs, traj_nodirect, cfg.bb_box, cfg.bb_iou,
                                          cfg.bb_topk, cfg.bb_flow_filter, progress)
        bbm.save_best_buddies(d / "best_buddies.npz", bb)
        return st

    best_buddies, stats["best_buddies"] = cache.run("best_buddies", bb_fields, c_bb,
                                                    lambda d, m: bbm.load_best_buddies(d / "best_buddies.npz"))
    return _finish(geom, frames, features, trajectories, fg_masks, best_buddies, cache, stats, cfg, T)


def reference_flow_calls(num_frames: int) -> int:
    """RAFT calls of the reference's preprocessing on ``num_frames`` frames (dino_tracker.md section 8):
    consecutive flows forward and backward, 2 * (T - 1) * 2, plus the direct-flow filter's T * (T - 1)."""
    T = int(num_frames)
    return 2 * (T - 1) * 2 + T * (T - 1)


def _finish(geom, frames, features, trajectories, fg_masks, best_buddies, cache, stats, cfg, T) -> Preprocessed:
    traj_fg = trajectory_foreground(trajectories, fg_masks)
    stats["flow_calls_total"] = sum(int(stats[s].get("flow_calls", 0)) for s in
                                    ("flows", "trajectories", "trajectories_nodirect") if s in stats)
    stats["flow_calls_reference"] = reference_flow_calls(T)
    stats["config"] = asdict(cfg)
    log.info("preprocessing done: %d trajectories (%d fg), %d best-buddy pairs, %d flow calls "
             "(reference: %d)", len(trajectories), int(traj_fg.sum()), len(best_buddies),
             stats["flow_calls_total"], stats["flow_calls_reference"])
    return Preprocessed(geom, frames, features, trajectories, traj_fg, fg_masks, best_buddies,
                        cache.root, stats)
