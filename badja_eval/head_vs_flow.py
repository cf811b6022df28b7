"""Where is the head right and flow not? Per-entry agreement of two BADJA predictions and what a fusion did there.

Issue 26 asks the default to take the head's answer exactly where the head is right and flow is not. These
functions count, over the entries BADJA scores (joint visible, after its query frame), which of two
predictions (``head`` = pure DINO-Tracker, ``flow`` = chained optical flow) lands inside the δseg radius, and
for each of the four cells which share a third (``fused`` = dino-flow) gets right. The *oracle* is the best a
per-entry switch between head and flow could score: right wherever either is (needs the ground truth, so it
is a bound, not a method).
"""
from __future__ import annotations

import numpy as np

from .metrics import badja_eval_mask

CELLS = ("both", "head_only", "flow_only", "neither")


def seg_hits(pred: np.ndarray, gt: np.ndarray, mask_areas: np.ndarray, seg_factor: float = 0.2) -> np.ndarray:
    """(N, S) bool: inside the δseg radius 0.2·√A_t (strict, as ``metrics.badja_metrics``). ``pred``/``gt``
    (N, S, 2) at the evaluation resolution, ``mask_areas`` (S,) at that resolution."""
    dist = np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=-1)
    return dist < seg_factor * np.sqrt(np.asarray(mask_areas, np.float64))[None, :]


def compare(head: np.ndarray, flow: np.ndarray, fused: np.ndarray | None, evaluated: np.ndarray) -> dict:
    """``head``/``flow``/``fused``: (N, S) bool hits; ``evaluated``: (N, S) bool entries that count.
    -> {"count", cell: {"entries", "share" (of count, %), "fused_right" (% of the cell's entries, or None)},
    "head", "flow", "fused", "oracle" (δseg %, over the same entries)}."""
    ev = np.asarray(evaluated, bool)
    h, f = np.asarray(head, bool)[ev], np.asarray(flow, bool)[ev]
    g = None if fused is None else np.asarray(fused, bool)[ev]
    n = int(ev.sum())
    cells = {"both": h & f, "head_only": h & ~f, "flow_only": ~h & f, "neither": ~h & ~f}
    pct = (lambda x: 100.0 * float(x.mean())) if n else (lambda x: float("nan"))
    out: dict = {"count": n}
    for name in CELLS:
        sel = cells[name]
        k = int(sel.sum())
        out[name] = {"entries": k, "share": pct(sel),
                     "fused_right": None if g is None or k == 0 else 100.0 * float(g[sel].mean())}
    out.update(head=pct(h), flow=pct(f), oracle=pct(h | f), fused=None if g is None else pct(g))
    return out


def by_state(head: np.ndarray, fused: np.ndarray, state: np.ndarray, evaluated: np.ndarray,
             names: tuple[str, ...]) -> dict:
    """Per fusion state (``state`` (N, S) int: indices into ``names``, tracker/fusion.py ``STATES``): over the
    evaluated entries in it, {"entries", "share" (of all evaluated, %), "head_right", "fused_right" (% of the
    state's entries), "head_only", "fused_only" (entries only that one gets right)}; states with no entry are
    left out. Where the head beats the fused track, this says which of the rule's decisions to change."""
    ev = np.asarray(evaluated, bool)
    h, g, s = np.asarray(head, bool)[ev], np.asarray(fused, bool)[ev], np.asarray(state)[ev]
    out = {}
    for k, name in enumerate(names):
        sel = s == k
        n = int(sel.sum())
        if n:
            out[name] = {"entries": n, "share": 100.0 * n / len(s), "head_right": 100.0 * float(h[sel].mean()),
                         "fused_right": 100.0 * float(g[sel].mean()), "head_only": int((h & ~g)[sel].sum()),
                         "fused_only": int((~h & g)[sel].sum())}
    return out


def evaluated_entries(visible: np.ndarray, query_frames: np.ndarray | None) -> np.ndarray:
    return badja_eval_mask(visible, query_frames)
