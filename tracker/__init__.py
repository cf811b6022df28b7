"""Point trackers on any FeatureBackend: DINO-Tracker (``dino``), its fusion with optical flow (``dino-flow``, the
default) and the ``flow`` / ``features`` / ``static`` baselines. The public API, one import path per name:

    from tracker import Tracker, TrackerConfig, preset, build_tracker, register_tracker, tracker_names

    tracker = build_tracker("dino-flow", load_backend("dsift"), preset("fast")).fit(video)
    result = tracker.track(queries)          # (N, 3) t, x, y in original pixels -> TrackResult

Layout (imports go one way, top to bottom): the front (``fusion``: dino-flow; ``baselines``; ``commands``: the
CLI; ``api``: the older import path of ``Tracker``) -> ``dino/`` (``tracker``: the DINO-Tracker class ``Tracker``;
model, losses, sampler, training, inference) -> ``preprocess/`` (flow, trajectories, masks, best buddies, the cached
stages) -> the base (``config``, ``resolution``, ``registry``, ``base``, ``eta``, ``memory``: run planning,
``workdirs``) -> ``cosettle``.
"""
from __future__ import annotations

# importing cosettle first (this line) sets OMP_WAIT_POLICY before torch loads (cosettle/__init__.py)
from cosettle.io.tracks import TrackResult

# importing the front modules registers their trackers (tracker/registry.py)
from . import baselines, fusion  # noqa: E402,F401
from .dino.tracker import Tracker  # noqa: E402
from .base import PointTracker  # noqa: E402
from .config import TrackerConfig, preset  # noqa: E402
from .registry import build_tracker, register_tracker, tracker_names  # noqa: E402

__all__ = ["PointTracker", "TrackResult", "Tracker", "TrackerConfig", "build_tracker", "preset",
           "register_tracker", "tracker_names"]
