"""The tracker interface every method implements (DINO-Tracker and the baselines).

    tracker = build_tracker("flow")              # or "dino", backend=load_backend("dsift")
    tracker.fit(video)                           # video: Video / (T,H,W,3) uint8; test-time fitting (eta=: the
                                                 # run's time estimate, tracker/eta.py)
    result = tracker.track(queries)              # queries: (N,3) float (t, x, y), original pixels, or Queries
    result.tracks  (N,T,2) x,y  |  result.visible (N,T)  |  result.confidence (N,T)
    tracker.report()                             # RunReport: stage times, work folder, what the run did

A tracker's output for a query must not depend on the other queries (TAP-Vid rule).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from cosettle.io.tracks import TrackResult


@dataclass
class RunReport:
    """What a tracker's last fit and track did, for the CLI's summary and ``run_info.json``: the CLI prints and
    writes this, and asks a tracker nothing else (no attribute probing)."""

    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per stage, in run order (the ``times``
    #                                of the fit's ``eta``: with the track command's, its own stages are there too)
    work_dir: Path | None = None   # the work folder of a tracker that caches its work (the DINO trackers)
    info: dict[str, Any] = field(default_factory=dict)  # more for run_info.json, by key (JSON-ready values):
    #                                "training_coverage" (DINO-Tracker's supervision), "fusion" (dino-flow's counts)


@runtime_checkable
class PointTracker(Protocol):
    name: str

    def fit(self, video, masks: np.ndarray | None = None, eta=None) -> "PointTracker":
        """Prepare on one video (T frames of (H,W,3) uint8). ``masks``: optional (T,H,W) foreground. ``eta``: the
        run's stage times and time estimate (``tracker.eta.StageTimes`` / ``RunETA``, passed by the track
        command): time stages into it (``eta.timed(name)``), tell it of progress; None: keep your own."""

    def track(self, queries) -> TrackResult:
        """Track (N,3) queries (t, x, y) in original pixels over all frames of the fitted video; a
        ``cosettle.io.queries.Queries`` also names them (``TrackResult.names``)."""

    def report(self) -> RunReport:
        """What the last fit and track did (stage times, work folder, tracker-specific counts)."""


def protocol_gaps(tracker) -> list[str]:
    """What ``tracker`` lacks of the protocol the track command uses (empty: nothing): ``fit`` taking ``eta=``,
    ``track`` and ``report`` -- so a tracker written for the older protocol gets one line naming the gap, not a
    traceback halfway through a run."""
    gaps = [f"{m}()" for m in ("fit", "track", "report") if not callable(getattr(tracker, m, None))]
    if "fit()" not in gaps:
        params = inspect.signature(tracker.fit).parameters.values()
        if not any(p.name == "eta" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            gaps.append("fit(video, masks=None, eta=None)'s eta argument")
    return gaps
