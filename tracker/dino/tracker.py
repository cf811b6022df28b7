"""``Tracker``: DINO-Tracker on any FeatureBackend (tracker ``dino``; ``tracker/fusion.py`` subclasses it as
``dino-flow``). ``from tracker import Tracker`` (and the older ``tracker.api``) import it from here.

    from cosettle import load_backend
    from tracker import Tracker, preset

    tracker = Tracker(load_backend("dsift"), preset("fast")).fit(video)   # video: Video or (T,H,W,3)
    result = tracker.track(queries)     # (N,3) t,x,y in original pixels -> TrackResult (original px)

``fit`` preprocesses (cached per video), trains or resumes from the last checkpoint, and caches the
refined features. Everything lives in a work folder keyed by the video content and every setting that
changes the result (default ``$COSETTLE_CACHE/tracker/<key>``, ``~/.cache/cosettle`` if unset, or
``$COSETTLE_TRACKER_CACHE/<key>``), so
re-running the same command is instant and an interrupted run resumes.

``fit(video, masks, eta=...)`` takes the run's time estimate (``tracker.eta.RunETA``) and passes it to the
preprocessing, the trainer and the refinement; without one the fit makes its own from the run's plan (it logs
its estimate like the CLI). Its stage times stay in that object: ``report().timings``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cosettle.backends.base import FeatureBackend
from cosettle.cache import cache_home
from cosettle.errors import UserError
from cosettle.frames import Frames, as_frames, frames_to_tensor, video_hw
from cosettle.hashing import array_digest, json_digest
from cosettle.io.atomic import write_text
from cosettle.io.lock import folder_lock
from cosettle.io.queries import as_queries
from cosettle.io.tracks import TrackResult
from cosettle.io.verified import load_verified, save_verified

from ..base import RunReport
from ..config import TrackerConfig, config_dict, preprocess_at, preset, train_switch, training_fields
from ..eta import RunETA, StageTimes
from ..memory import LOAD_RATE, time_plan
from ..preprocess.pipeline import cached_stages, preprocess_video
from ..registry import register_tracker
from ..resolution import work_backend
from .fit_info import FitRecord
from .inference import TrackInference, refined_features
from .train import Trainer, latest_checkpoint

log = logging.getLogger(__name__)

PREPROCESS_LOCK = ".preprocess.lock"  # in the work folder, beside the shared ".lock" of the whole fit


# in a default work folder: the video's fingerprint (the folder's key) and content digest (the stages' key)
VIDEO_DIGESTS = "video.json"


# the tracker's work folders somewhere else than $COSETTLE_CACHE/tracker: scripts/make_results.py --run gives every
# output folder its own (<out>/tracker_cache), so a re-run is never scored from fits cached by older code
TRACKER_CACHE_ENV = "COSETTLE_TRACKER_CACHE"


def cache_root() -> Path:
    """The folder of the default work folders: ``$COSETTLE_TRACKER_CACHE``, else ``$COSETTLE_CACHE/tracker``
    (``~/.cache/cosettle/tracker``). Backend weights and the feature cache stay under ``$COSETTLE_CACHE``."""
    own = os.environ.get(TRACKER_CACHE_ENV)
    return Path(own) if own else cache_home() / "tracker"


def training_key(cfg: TrackerConfig) -> str:
    """The name of the fit's ``train_<key>`` folder: a digest of every setting that changes the trained model
    (the fields not marked ``inference``/``run_setting``/work-folder in tracker/config.py)."""
    keep = set(training_fields(type(cfg)))
    return json_digest({k: v for k, v in config_dict(cfg).items() if k in keep})


class Tracker:
    """DINO-Tracker (test-time trained per video) implementing the ``PointTracker`` protocol."""

    name = "dino"

    def __init__(self, backend: FeatureBackend, config: TrackerConfig | None = None,
                 progress: bool = True, **overrides):
        if not isinstance(backend, FeatureBackend):
            raise UserError(f"Tracker needs a FeatureBackend, got {type(backend).__name__}")
        cfg = config if config is not None else preset("fast")
        if overrides:
            cfg = cfg.replace(**overrides)
        self.backend = backend
        self.cfg = cfg
        self.progress = progress
        # what a fit sets (fusion.py's dino-flow reads them too); None until then
        self.eta: StageTimes = StageTimes()  # the run's estimate and stage times (report().timings)
        self.work_backend: FeatureBackend | None = None  # the backend at the work resolution
        self.geometry_image_hw: tuple[int, int] | None = None  # the video's own size, H x W
        self.prep_cfg = None  # the preprocessing settings at the work resolution
        self.work_dir: Path | None = None
        self.video_digest: str | None = None
        self.prep = None
        self.model = None
        self.infer = None
        self.train_history: list[dict] = []
        self.train_coverage: dict | None = None  # supervision the training received (None: no iteration ran)
        self.fit_record: FitRecord | None = None  # which code trained the fit's checkpoints (fit_info.json)

    # -- fitting ---------------------------------------------------------------------------------
    def _work_dir(self, frames: Frames, masks) -> Path:
        if self.cfg.work_dir:
            return Path(self.cfg.work_dir)
        pre = config_dict_any(self.prep_cfg)
        key = json_digest({"video": frames.digest, "backend": self.work_backend.cache_key(),
                       "resolution": self.work_backend.resolution, "preprocess": pre,
                       "masks": None if masks is None else array_digest(np.asarray(masks) > 0, 64)})
        return cache_root() / key

    def _content_digest(self, frames: Frames) -> str:
        """The preprocessing stages' video key (``frames.content_digest``), hashed once per video: a default
        work folder is keyed by the frames' fingerprint, so the content digest written there by the first fit
        is this video's, and a re-fit reads it instead of hashing the video a second time. (Both keys stay
        what they were before the one normaliser, so cached folders stay valid.)"""
        if self.cfg.work_dir:  # a folder the user named is not keyed by the video: no fingerprint computed
            return frames.content_digest
        side = self.work_dir / VIDEO_DIGESTS
        try:
            known = json.loads(side.read_text())
            content = known.get("content", "")
            if known.get("fingerprint") == frames.digest and re.fullmatch("[0-9a-f]{16}", content):
                return content
        except (OSError, ValueError, AttributeError, TypeError):
            pass  # none yet, or unreadable: hash, and write it
        write_text(side, json.dumps({"fingerprint": frames.digest, "content": frames.content_digest}) + "\n")
        return frames.content_digest

    def fit(self, video, masks: np.ndarray | None = None, eta: StageTimes | None = None) -> "Tracker":
        """Preprocess (cached), train or resume, refine. ``eta``: the run's time estimate, passed on to every
        stage (None: the fit makes its own from its plan and logs it, as the CLI's does)."""
        cfg = self.cfg
        # checked and converted once; its digests (computed once) key the work folder and every stage
        video = as_frames(video, min_frames=2, who=f"the {self.name} tracker's video")
        h, w = video.H, video.W
        self.eta = eta if eta is not None else RunETA(time_plan(len(video), h, w, self.backend, cfg, self.name))
        self.work_backend = work_backend(self.backend, cfg.resolution, h, w)
        self.geometry_image_hw = (h, w)
        self.prep_cfg = preprocess_at(cfg, self.work_backend.geometry(h, w).input_h)
        t0 = time.perf_counter()
        self.work_dir = self._work_dir(video, masks)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        os.utime(self.work_dir)  # "last used" for --cache-info and the LRU cap (tracker/workdirs.py)
        self.video_digest = self._content_digest(video)  # passed down to the preprocessing: not hashed again
        log.info("work folder %s", self.work_dir)
        # locks scoped to what each stage writes (docs/development.md#locks-scoped-to-what-each-stage-writes):
        # the work folder is in use for the whole fit (shared: --clean-cache skips it, other fits may share it)
        with folder_lock(self.work_dir, shared=True):
            self._fit_locked(video, masks, t0)
        return self

    def _fit_locked(self, video, masks, t0: float) -> None:
        cfg = self.cfg
        ckpt_dir = self.work_dir / f"train_{training_key(cfg)}"
        self._first_estimate(ckpt_dir)
        # one writer of the preprocessing stages: a second fit on the same video waits, then reuses them
        with folder_lock(self.work_dir, "work folder's preprocessing", name=PREPROCESS_LOCK):
            self.prep = preprocess_video(video, self.work_backend, self.prep_cfg, self.work_dir, masks=masks,
                                         progress=self.progress, video_digest=self.video_digest, eta=self.eta)
        self.eta.add_time("preprocess", time.perf_counter() - t0)
        # one trainer per training folder (train_<key>: the seed is in the key), so fits of other seeds on
        # the same clip train at the same time; the same settings wait, then reuse the checkpoints
        with folder_lock(ckpt_dir, "training folder"):
            self._train_locked(ckpt_dir)

    def _train_locked(self, ckpt_dir: Path) -> None:
        cfg = self.cfg
        geom = self.prep.geometry
        with self.eta.timed("train"):
            trainer = Trainer(self.prep, cfg, ckpt_dir)
            # fit_info.json beside the checkpoints: the code, versions and threads of every training session
            trainer.record = self.fit_record = FitRecord(ckpt_dir, training_key(cfg), self.work_backend, cfg)
            self.model = trainer.run(progress=self.progress, eta=self.eta)
        self.train_history = trainer.history
        self.train_coverage = trainer.coverage.summary() if trainer.coverage.iterations else None
        t0 = time.perf_counter()
        self.eta.begin("refine")
        last = latest_checkpoint(ckpt_dir)
        cache = ckpt_dir / "refined.pt"
        tag = last.name if last is not None else "untrained"
        refined = _load_refined(cache, tag)
        was_cached = refined is not None
        if refined is None:
            # float16 from the start: the cached values, and what inference reads (as float32 per frame)
            refined = refined_features(self.model, self.prep.frames, self.prep.features, trainer.scale, geom,
                                       progress=self.progress, device=cfg.device, dtype=torch.float16)
            save_verified({"tag": tag, "refined": refined}, cache)
        refine_s = time.perf_counter() - t0
        self.eta.add_time("refine", refine_s)
        self.eta.finish("refine", refine_s, cached=was_cached)
        self.infer = TrackInference(self.model, refined, geom, cfg)

    def _first_estimate(self, ckpt_dir: Path) -> None:
        """The run's first time estimate, once the work folder is known: what is cached there counts as
        done."""
        done = _checkpoint_hint(ckpt_dir)
        cached = cached_stages(self.work_dir)  # {stage: bytes}: a cached stage costs its reading
        refined = ckpt_dir / "refined.pt"
        if done >= self.cfg.iterations and refined.is_file():
            cached["refine"] = refined.stat().st_size
        self.eta.work_found({k: LOAD_RATE * b / 1e6 for k, b in cached.items()}, done, train_switch(self.cfg))

    # -- tracking ----------------------------------------------------------------------------------
    @property
    def geometry(self):
        if self.prep is None:
            raise RuntimeError("call fit(video) before track()")
        return self.prep.geometry

    def track(self, queries, occlusion: str | None = None) -> TrackResult:
        if self.infer is None:
            raise RuntimeError("call fit(video) before track()")
        qs = as_queries(queries)
        q = np.asarray(qs.txy, dtype=np.float64).reshape(-1, 3)
        names = list(qs.names)
        geom = self.geometry
        t = self.prep.frames.shape[0]
        if len(q) and (q[:, 0].min() < 0 or q[:, 0].max() > t - 1):
            raise UserError(f"query frame out of range [0, {t - 1}]")
        q_in = np.concatenate([q[:, :1], geom.image_to_input(q[:, 1:3])], axis=1)
        with self.eta.timed("track"):
            tracks, vis, conf = self.infer.track(q_in, occlusion, progress=self.progress)
        tracks_img = geom.input_to_image(tracks.astype(np.float64)).astype(np.float32)
        # keep the query point exact in its own frame (no round-trip error)
        for i, (tq, x, y) in enumerate(q):
            tracks_img[i, int(round(tq))] = (x, y)
        return TrackResult(tracks_img, vis, conf, q.astype(np.float32), names)

    def report(self) -> RunReport:
        """Stage times, the work folder and the supervision the training received (``PointTracker.report``)."""
        info = {"training_coverage": self.train_coverage} if self.train_coverage else {}
        if self.fit_record is not None:  # the git SHA(s) that trained the fit, and its fit_info.json
            info["fit"] = self.fit_record.summary()
        return RunReport(self.eta.times, self.work_dir, info)


@register_tracker("dino", summary="the pure DINO-Tracker (head only, as in the paper; trains per video, shared "
                  "with dino-flow)", needs_backend=True, dino_config=True, rank=20)
def _build_dino(backend, config, progress, **kwargs) -> Tracker:
    return Tracker(backend, config, progress=progress, **kwargs)


def _checkpoint_hint(ckpt_dir: Path) -> int:
    """The newest checkpoint's iteration from the file names alone (for the time estimate; the trainer
    verifies and loads the checkpoints itself)."""
    its = []
    for p in Path(ckpt_dir).glob("ckpt_*.pt"):
        try:
            its.append(int(p.stem.split("_", 1)[1]))
        except ValueError:
            continue
    return max(its, default=0)


def _load_refined(cache: Path, tag: str) -> torch.Tensor | None:
    """The cached refined features if the file verifies against its checksum and is for ``tag``;
    a truncated or corrupt file costs one log line and is recomputed."""
    if not cache.is_file():
        return None
    try:
        st = load_verified(cache)
        return st["refined"].half() if st.get("tag") == tag else None
    except ValueError as err:  # does not match its checksum
        why = str(err)
    except Exception as err:  # verified bytes that torch still refuses: a foreign file
        why = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    log.warning("cached refined features %s are unusable (%s); recomputing", cache, why)
    return None


def config_dict_any(obj):
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    return dict(obj or {})


def frames_at_work_resolution(video, geometry) -> np.ndarray:
    """(T, input_h, input_w, 3) uint8 frames resized like the backends resize them (tests/tools)."""
    n = video_hw(video)[0]
    out = []
    for s in range(0, n, 8):
        x = frames_to_tensor(video, s, min(n, s + 8))
        if x.shape[-2:] != (geometry.input_h, geometry.input_w):
            x = F.interpolate(x, size=(geometry.input_h, geometry.input_w), mode="bilinear",
                              align_corners=False, antialias=True)
        out.append((x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)
