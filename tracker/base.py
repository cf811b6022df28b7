"""The tracker interface every method implements (DINO-Tracker and the baselines).

    tracker = build_tracker("flow")              # or "dino", backend=load_backend("dsift")
    tracker.fit(video)                           # video: Video / (T,H,W,3) uint8; test-time fitting
    result = tracker.track(queries)              # queries: (N,3) float (t, x, y), original pixels
    result.tracks  (N,T,2) x,y  |  result.visible (N,T)  |  result.confidence (N,T)

A tracker's output for a query must not depend on the other queries (TAP-Vid rule).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from cosettle.io.tracks import TrackResult


@runtime_checkable
class PointTracker(Protocol):
    name: str

    def fit(self, video, masks: np.ndarray | None = None) -> "PointTracker":
        """Prepare on one video (T frames of (H,W,3) uint8). ``masks``: optional (T,H,W) foreground."""

    def track(self, queries: np.ndarray) -> TrackResult:
        """Track (N,3) queries (t, x, y) in original pixels over all frames of the fitted video."""
