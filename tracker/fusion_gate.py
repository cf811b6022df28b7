"""``dino-flow`` trains only when the trained head can change the answer (``fusion_train: auto``).

Why: where flow holds, the default's positions are flow's to the digit, and users paid 5-25x flow's time
for them (issue 26: a teddy and an apple, 333 s and 477 s against flow's 13 s and 62 s).

What the head can change, read from the rule of one step (``fuse_step`` in tracker/fusion.py):

* a step whose flow is *consistent* (forward-backward error < ``fusion_fb_px``, inside the frame) is
  followed whatever the head says, unless it is a *drift* candidate; a drift candidate needs consistent
  flow carrying a point queried on the foreground off the foreground for ``fusion_drift_frames`` steps in
  a row (and a head that sees the point far away). So along a query whose every step is consistent and
  which never stays off the foreground that long, the positions are flow's and every frame is visible,
  whatever the head predicts;
* the head matters only at an *inconsistent* step (keep-when-the-head-agrees, or a verified break
  re-detection; everything after such a step depends on it), at a drift re-detection, and in the
  confidence (the larger of flow's and the head's where flow is followed).

So the same rule run with a head that sees nothing (:func:`blind_head`; the fusion's own ``fuse_tracks``,
not a copy) is a flow-only pre-pass that finds those queries: with no head to keep or re-detect, an
inconsistent step makes the point lost, i.e. the pre-pass marks a frame not visible exactly where such a
step happened on the way from the query, and the off-foreground runs are read from its positions with the
fusion's own foreground test (:func:`off_foreground_runs`). When no query has either, the trained rule
would give the same positions and visibility, and training is skipped; only the confidence differs
(flow's own, ``1 / (1 + (err / fusion_fb_px)^2)``, instead of the larger of flow's and the head's). When
some query has one, the tracker trains and runs the rule with the trained head exactly as before.
``fusion_train: always`` trains without a pre-pass (the path before the gate); ``never`` returns the
pre-pass: flow's positions, not visible after an inconsistent step (clamped to the frame), no training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from cosettle.io.tracks import TrackResult

from .config import FUSION_TRAIN


def blind_head(queries, num_frames: int) -> TrackResult:
    """A head prediction that sees no point in any frame (zero confidence): ``fuse_tracks`` with it follows
    consistent flow and makes a point lost at the first inconsistent step (no candidate, nothing kept)."""
    q = np.asarray(queries, np.float32).reshape(-1, 3)
    n = len(q)
    return TrackResult(np.zeros((n, num_frames, 2), np.float32), np.zeros((n, num_frames), bool),
                       np.zeros((n, num_frames), np.float32), q)


def reuse_flows(flow_pair: Callable[[int], tuple], query_frames: np.ndarray) -> Callable[[int], tuple]:
    """``flow_pair`` that keeps the pairs both passes of ``fuse_tracks`` read (t from the earliest query
    frame to the last one minus 1: forwards, then backwards) until their second read, so the pre-pass
    computes each pair once, as the ``flow`` baseline does (same memory as that baseline at most)."""
    tq = np.asarray(query_frames).round().astype(int)
    both = set(range(int(tq.min()), int(tq.max()))) if len(tq) else set()
    kept: dict[int, tuple] = {}

    def pair(t: int):
        if t in kept:
            return kept.pop(t)  # the second and last read
        out = flow_pair(t)
        if t in both:
            kept[t] = out
        return out
    return pair


def off_foreground_runs(tracks: np.ndarray, queries, foreground: Callable[[int, np.ndarray], np.ndarray] | None
                        ) -> np.ndarray:
    """(N,) int: the longest run of consecutive frames, walking away from the query frame (forwards, then
    backwards, each from 0), in which a query made on the foreground sits off it; 0 for queries not on the
    foreground at their query frame, and for all when ``foreground`` is None (the fusion then never drifts)."""
    q = np.asarray(queries, np.float64).reshape(-1, 3)
    n, T = tracks.shape[:2]
    longest = np.zeros(n, np.int64)
    if foreground is None or n == 0:
        return longest
    tq = q[:, 0].round().astype(int)
    on_fg = np.zeros(n, bool)
    for t in np.unique(tq):  # as fuse_tracks decides which queries can drift
        on_fg[tq == t] = foreground(int(t), q[tq == t, 1:3])
    for frames, moved in ((range(T), lambda t: tq < t), (range(T - 1, -1, -1), lambda t: tq > t)):
        run = np.zeros(n, np.int64)
        for t in frames:
            idx = np.nonzero(moved(t) & on_fg)[0]
            if len(idx):
                off = ~np.asarray(foreground(t, tracks[idx, t]), bool)
                run[idx] = np.where(off, run[idx] + 1, 0)
                longest[idx] = np.maximum(longest[idx], run[idx])
    return longest


@dataclass
class GateDecision:
    """Which queries the trained head could change, and whether the tracker trains."""

    mode: str                 # fusion_train: auto | always | never
    broke: np.ndarray         # (N,) bool: an inconsistent flow step (fb error or out of frame) on the way
    left_fg: np.ndarray       # (N,) bool: carried off the foreground for fusion_drift_frames steps in a row

    @property
    def need(self) -> np.ndarray:
        return self.broke | self.left_fg

    @property
    def train(self) -> bool:
        return self.mode == "always" or (self.mode == "auto" and bool(self.need.any()))

    def message(self) -> str:
        n, k = len(self.need), int(self.need.sum())
        why = (f"{int(self.broke.sum())} with inconsistent flow, "
               f"{int((self.left_fg & ~self.broke).sum())} more carried off the foreground")
        if self.mode == "never":
            return (f"fusion_train=never: no training; flow's positions and confidence, not visible after flow "
                    f"broke ({k} of {n} queries would have needed re-detection checks: {why})")
        if k == 0:
            return (f"all {n} queries: flow consistent in every frame and never carried off the foreground -> "
                    "no training needed (flow's positions, flow's confidence)")
        return f"{k} of {n} queries need re-detection checks ({why}) -> training"

    def to_dict(self) -> dict:
        return {"mode": self.mode, "queries": int(len(self.need)), "need_head": int(self.need.sum()),
                "broke": int(self.broke.sum()), "left_foreground": int(self.left_fg.sum()),
                "trained": self.train}


def decide(mode: str, prepass_visible: np.ndarray, prepass_tracks: np.ndarray, queries,
           foreground: Callable[[int, np.ndarray], np.ndarray] | None, drift_frames: int) -> GateDecision:
    """The decision from the blind-head pre-pass (see the module docstring)."""
    if mode not in FUSION_TRAIN:
        raise ValueError(f"fusion_train must be one of {FUSION_TRAIN}, not {mode!r}")
    broke = ~np.asarray(prepass_visible, bool).all(axis=1)
    left = off_foreground_runs(np.asarray(prepass_tracks), queries, foreground) >= int(drift_frames)
    return GateDecision(mode, broke, left)
