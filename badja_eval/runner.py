"""Run trackers over evaluation tasks with a per-(sequence, tracker, backend) result cache.

Each result is written atomically to ``<cache>/<tracker>__<backend>/<sequence>.npz`` together with a
fingerprint of everything that determines it (queries, frame count/size, tracker, backend, preset). A
re-run loads matching results instead of recomputing them, so an interrupted run resumes where it
stopped, and a sharded run (``shard=(i, n)``: tasks i, i+n, ...) lets several processes share one cache.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from cosettle.backends.registry import load_backend, split_projected_name
from cosettle.errors import UserError
from cosettle.hashing import file_digest
from cosettle.io.atomic import atomic_path
from cosettle.progress import tqdm
from cosettle.projector_io import resolve_path
from tracker import build_tracker, preset
from tracker.config import TrackerConfig, measured_head_weight_token, measured_snap_token
from tracker.registry import TrackerEntry, tracker_entry

log = logging.getLogger(__name__)

CACHE_VERSION = 1


@dataclass(frozen=True)
class Method:
    """A (tracker, backend) pair; ``backend`` is None for trackers that need none (static, flow)."""

    tracker: str
    backend: str | None = None

    @property
    def label(self) -> str:
        return self.tracker if self.backend is None else f"{self.tracker}/{self.backend}"

    @property
    def base_backend(self) -> str | None:
        """``NAME`` for a projected backend ``NAME+cosettle[:PATH]``, else None."""
        if self.backend and "+cosettle" in self.backend:
            return self.backend.split("+", 1)[0]
        return None


def make_methods(trackers: Iterable[str], backends: Iterable[str]) -> list[Method]:
    """Backend trackers get one method per backend; the others one method each."""
    backends = list(backends)
    out: list[Method] = []
    for t in trackers:
        if _registered(t) is not None and _registered(t).needs_backend:
            if not backends:
                raise UserError(f"tracker {t!r} needs at least one backend", "pass --backends NAME")
            out.extend(Method(t, b) for b in backends)
        else:
            out.append(Method(t, None))
    return out


@dataclass
class Task:
    """One video to track. ``load()`` -> (frames (T,H,W,3) uint8, masks (T,H,W) bool or None)."""

    key: str
    load: Callable[[], tuple[np.ndarray, np.ndarray | None]]
    queries: np.ndarray  # (N, 3) t, x, y in the pixel-centre convention of the loaded frames
    shape: tuple[int, ...]  # (T, H, W) for the fingerprint
    content: str = ""  # identifies the input frames (file names + sizes, or a hash) for the cache
    extra: dict = field(default_factory=dict)


@dataclass
class Prediction:
    tracks: np.ndarray  # (N, T, 2) x, y
    visible: np.ndarray  # (N, T) True = visible
    cached: bool = False
    # the git SHA(s) of the code that trained the fit (the tracker's fit_info.json, e.g. DINO-Tracker's); None
    # for a tracker that trains nothing, or a result cached before fits recorded it
    fit_git: str | None = None


# config fields added after predictions were cached, left out of the cache key while unset, so that those
# entries stay valid: an unset value changes nothing a cached tracker computed (dino-flow's resolved value is
# keyed by the measured table's token instead)
KEYED_ONLY_WHEN_SET = {"fusion_head_weight": None, "fusion_head_gate": "flow-failed"}


def _plain(cfg) -> Any:
    if not dataclasses.is_dataclass(cfg):
        return cfg
    out = dataclasses.asdict(cfg)
    for name, unset in KEYED_ONLY_WHEN_SET.items():
        if name in out and out[name] == unset:
            del out[name]
    return out


def slug(text: str) -> str:
    """A file-name-safe form; long or path-like names get a short hash so they never collide."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")
    if len(s) > 60 or s != text:
        s = s[:50] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return s or "x"


class Runner:
    """``Runner(cache_dir, preset).run(tasks, methods)`` -> {(task.key, method.label): Prediction}.

    ``build_tracker``/``load_backend`` default to the project's factories; tests may pass fakes.
    ``max_new``: stop after computing that many new results (a budgeted run; re-run to continue).
    """

    def __init__(self, cache_dir: str | Path, preset: str = "fast", device: str | None = None,
                 build_tracker: Callable | None = None, load_backend: Callable | None = None,
                 use_masks: bool = True, progress: bool = True, max_new: int | None = None,
                 backend_kwargs: dict | None = None, tracker_overrides: dict | None = None):
        self.cache_dir = Path(cache_dir)
        self.preset = preset
        self.device = device
        self._build_tracker = build_tracker
        self._load_backend = load_backend
        self.use_masks = use_masks
        self.progress = progress
        self.max_new = max_new
        self.backend_kwargs = dict(backend_kwargs or {})  # e.g. weights="random", stride=7 (every backend)
        # {tracker name: {config field: value}}, e.g. {"dino": {"iterations": 200}}
        self.tracker_overrides = {k: dict(v) for k, v in (tracker_overrides or {}).items()}
        self._backends: dict[str, Any] = {}
        self._stamps: dict[str, list] = {}  # backend name -> _file_stamps, computed once per run
        self._loaded: tuple[str, Any] | None = None  # last task's frames, reused across methods
        self.computed = 0

    # -------------------------------------------------------------------------------- factories
    def backend(self, name: str):
        if name not in self._backends:
            load = self._load_backend or load_backend
            kw = {"device": self.device} if self.device else {}
            kw.update(self.backend_kwargs)
            self._backends[name] = load(name, **kw)
        return self._backends[name]

    def tracker_config(self, method: Method):
        """The tracker's config: DINO-Tracker's ``fast``/``paper`` preset, the baselines' defaults, each
        with the user's field overrides (``--tracker-args dino.iterations=200``)."""
        over = dict(self.tracker_overrides.get(method.tracker, {}))
        entry = _registered(method.tracker)
        try:
            if entry is not None and entry.dino_config:
                if self.device:
                    over.setdefault("device", self.device)
                return preset(self.preset, **over)
            if not over:
                return None
            if entry is None or entry.config_class is None:
                raise UserError(f"tracker {method.tracker!r} takes no settings", "drop its --tracker-args")
            return entry.config_class(**over)
        except TypeError as err:  # unknown field names
            raise UserError(f"bad --tracker-args for {method.tracker}: {err}",
                            "use fields of the tracker's config dataclass") from None

    def make_tracker(self, method: Method):
        backend = self.backend(method.backend) if method.backend else None
        if self._build_tracker is not None:  # injected (tests)
            return self._build_tracker(method.tracker, backend, self.tracker_config(method))
        return build_tracker(method.tracker, backend, self.tracker_config(method), progress=self.progress)

    def fusion_tracker(self, method: Method, frames, masks):
        """A ``dino-flow`` tracker with ``method``'s settings (a cached head's: seed, preset, overrides; a tracker
        that is not DINO-Tracker: dino-flow's own), fitted only as far as its foreground masks
        (``fusion_train=never``: the work folder's frames and masks, no training) -- for re-fusing a cached head
        with the tracker's own ``flow_pair``, ``cell_px`` and ``foreground`` (scripts/tune_fusion.py,
        scripts/head_vs_flow.py --states), so the result is run.py's ``dino-flow`` to the joint."""
        cfg = self.tracker_config(method)
        if not isinstance(cfg, TrackerConfig):
            cfg = self.tracker_config(Method("dino-flow", method.backend))
        tracker = build_tracker("dino-flow", self.backend(method.backend), cfg.replace(fusion_train="never"),
                                progress=False)
        return tracker.fit(frames, masks)

    # -------------------------------------------------------------------------------- cache
    def cache_path(self, task: Task, method: Method) -> Path:
        name = method.tracker + "__" + (method.backend or "-")
        return self.cache_dir / slug(name) / f"{slug(task.key)}.npz"

    def fingerprint(self, task: Task, method: Method) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"v": CACHE_VERSION, "key": task.key, "shape": list(task.shape),
                             "content": task.content,
                             "tracker": method.tracker, "backend": method.backend,
                             "preset": self.preset if _is_dino(method.tracker) else None,
                             "masks": self.use_masks}, sort_keys=True).encode())
        if method.backend and self.backend_kwargs:
            h.update(json.dumps(self.backend_kwargs, sort_keys=True, default=str).encode())
        stamps = self._file_stamps(method.backend) if method.backend else []
        if stamps:  # none: keys as before
            h.update(json.dumps(stamps).encode())
        if self.tracker_overrides.get(method.tracker):
            h.update(json.dumps(self.tracker_overrides[method.tracker], sort_keys=True, default=str).encode())
        cfg = self.tracker_config(method)
        if cfg is not None:  # the resolved settings, so a changed preset definition invalidates the entry
            h.update(json.dumps(_plain(cfg), sort_keys=True, default=str).encode())
        if method.tracker == "dino-flow" and getattr(cfg, "fusion_snap_cells", 0.0) is None:
            h.update(measured_snap_token().encode())  # the radius comes from the per-backend table
        if method.tracker == "dino-flow" and getattr(cfg, "fusion_head_weight", 0.0) is None:
            h.update(measured_head_weight_token().encode())  # so does the head's share of a position
        elif method.tracker == "dino-flow" and getattr(cfg, "fusion_head_gate", None) == "flow-failed" \
                and cfg.fusion_head_weight:
            # a set weight with the default gate: predictions cached before the gate existed moved every point
            h.update(json.dumps(["fusion_head_gate", cfg.fusion_head_gate]).encode())
        h.update(np.ascontiguousarray(task.queries, dtype=np.float64).tobytes())
        return h.hexdigest()[:20]

    def _file_stamps(self, backend: str) -> list:
        """What the backend's files hold: the projector's content digest (``NAME+cosettle:PATH``, small
        files) and a local weights file's size and mtime (possibly GBs, so not hashed), so that a
        projector retrained in place or a replaced weights file does not return old predictions."""
        if backend not in self._stamps:
            stamps = []
            # the file load_backend will read (the same precedence: projector= over NAME+cosettle:PATH)
            _, _, proj = split_projected_name(backend, self.backend_kwargs.get("projector"))
            proj_file = resolve_path(proj) if proj else None
            if proj_file is not None and proj_file.is_file():  # a missing file is reported when loaded
                stamps.append(["projector", file_digest(proj_file)])
            weights = self.backend_kwargs.get("weights")
            weights_file = Path(str(weights)).expanduser() if weights else None
            if weights_file is not None and weights_file.is_file():
                st = weights_file.stat()
                stamps.append(["weights", st.st_size, st.st_mtime_ns])
            self._stamps[backend] = stamps
        return self._stamps[backend]

    def load_cached(self, task: Task, method: Method) -> Prediction | None:
        path = self.cache_path(task, method)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["fingerprint"]) != self.fingerprint(task, method):
                    log.info("cache %s is stale (inputs changed); recomputing", path)
                    return None
                fit_git = str(z["fit_git"]) if "fit_git" in z.files else None
                return Prediction(z["tracks"], z["visible"], cached=True, fit_git=fit_git)
        except Exception as err:  # a corrupt cache entry is recomputed, never fatal
            log.warning("ignoring unreadable cache %s (%s)", path, err)
            return None

    def save(self, task: Task, method: Method, pred: Prediction) -> Path:
        path = self.cache_path(task, method)
        extra = {} if pred.fit_git is None else {"fit_git": np.array(pred.fit_git)}  # not part of the fingerprint
        with atomic_path(path) as tmp:
            np.savez_compressed(tmp, tracks=pred.tracks.astype(np.float32), visible=pred.visible,
                                fingerprint=np.array(self.fingerprint(task, method)),
                                layout=np.array("tracks (N,T,2) x,y px, pixel-centre; visible (N,T) True=visible"),
                                **extra)
        return path

    # -------------------------------------------------------------------------------- run
    def run_one(self, task: Task, method: Method) -> Prediction:
        if self._loaded is None or self._loaded[0] != task.key:
            self._loaded = (task.key, task.load())
        frames, masks = self._loaded[1]
        tracker = self.make_tracker(method)
        tracker.fit(frames, masks if self.use_masks else None)
        res = tracker.track(np.asarray(task.queries, dtype=np.float32))
        tracks = np.asarray(res.tracks, dtype=np.float32)
        visible = np.asarray(res.visible, dtype=bool)
        n, T = len(task.queries), task.shape[0]
        if tracks.shape != (n, T, 2) or visible.shape != (n, T):
            raise RuntimeError(f"tracker {method.label} returned tracks {tracks.shape} / visible "
                               f"{visible.shape}, expected ({n}, {T}, 2) / ({n}, {T})")
        return Prediction(tracks, visible, fit_git=fit_git_of(tracker))

    def run(self, tasks: list[Task], methods: list[Method], shard: tuple[int, int] = (0, 1),
            desc: str = "eval") -> dict[tuple[str, str], Prediction]:
        i, n = shard
        mine = [t for k, t in enumerate(tasks) if k % n == i]
        jobs = [(t, m) for t in mine for m in methods]
        out: dict[tuple[str, str], Prediction] = {}

        bar = tqdm(jobs, desc=desc, disable=not self.progress, unit="run")
        for task, method in bar:
            bar.set_postfix_str(f"{task.key} {method.label}"[:60])
            pred = self.load_cached(task, method)
            if pred is None:
                if self.max_new is not None and self.computed >= self.max_new:
                    log.info("stopping after %d new results (--max-new); re-run to continue", self.computed)
                    break
                pred = self.run_one(task, method)
                self.save(task, method, pred)
                self.computed += 1
            out[(task.key, method.label)] = pred
        bar.close()
        self._loaded = None
        return out


def fit_git_of(tracker) -> str | None:
    """The git SHA(s) that trained a fitted tracker (``report().info['fit']['fit_git']``, written by DINO-Tracker
    from its fit_info.json); None for a tracker without a report or a fit record."""
    report = getattr(tracker, "report", None)
    if report is None:
        return None
    fit = (report().info or {}).get("fit") or {}
    return fit.get("fit_git")


def fit_gits(preds: dict[tuple[str, str], Prediction]) -> dict[str, str]:
    """``{"<task>|<method>": fit_git}`` of the predictions whose tracker trained a fit (run_info.json ``fit_git``):
    which code trained each fit the scores come from, whatever commit the evaluation itself ran at. A DINO
    tracker's result without one (cached before fits recorded it) says "not recorded"."""
    return {f"{k}|{lab}": p.fit_git or "not recorded" for (k, lab), p in preds.items()
            if p.fit_git is not None or _is_dino(lab.split("/", 1)[0])}


def _registered(name: str) -> TrackerEntry | None:
    """The registry's entry of a tracker, None for a name it does not know (the tests' injected fakes; the
    command line checks names against the registry before anything runs)."""
    try:
        return tracker_entry(name)
    except UserError:
        return None


def _is_dino(name: str) -> bool:
    entry = _registered(name)
    return entry is not None and entry.dino_config
