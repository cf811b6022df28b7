#!/usr/bin/env python
"""Count the walk of ``Tracker.fit`` from the video: the project functions a fit runs ("rooms"), the files they sit
in and the ``return`` statements in them -- what a reader follows to see where the video goes (issue 27).

    python scripts/count_fit_walk.py    # JSON: rooms, files, returns of a fresh fit, a cached re-fit, the video's walk

Measured by running, not by reading: a profiler hook records every function of ``cosettle/`` and ``tracker/``
entered while ``Tracker(...).fit(video)`` runs (comprehensions, lambdas and nested helper functions count with the
function that defines them), on a 6-frame 64x96 clip with dsift, 4 training iterations, in a temporary work
folder: once fresh, then again with everything cached (the walk through every seam, without the work), and
``video``: the cached re-fit's functions that receive the video itself (an argument is the caller's array or its
``Frames``) -- where the video goes, the issue's "walk from the video". ``returns`` counts the ``return`` statements in the source of those functions (nested functions included).
"""
from __future__ import annotations

import ast
import inspect
import json
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

from cosettle.backends.registry import load_backend
from tracker import Tracker, preset

REPO = Path(__file__).resolve().parents[1]


def clip(h=64, w=96, t=6, dx=3, dy=1) -> np.ndarray:
    rng = np.random.default_rng(0)
    tex = (rng.random((h + 8 * t, w + 8 * t, 3)) * 255).astype(np.uint8)
    return np.stack([tex[i * dy: i * dy + h, i * dx: i * dx + w] for i in range(t)])


def _is_video(value, video: np.ndarray) -> bool:
    """The caller's video itself, or the one normaliser's wrapper of it (cosettle.frames.Frames)."""
    return value is video or getattr(value, "__dict__", {}).get("array") is video


def walk(fit, video: np.ndarray | None = None) -> dict:
    """``video`` given: only the functions that receive the video (an argument is it or its Frames)."""
    roots = tuple(str(REPO / p) + "/" for p in ("cosettle", "tracker"))
    seen: dict = {}

    def hook(frame, event, arg):
        if event == "call":
            co = frame.f_code
            if co.co_filename.startswith(roots) and not co.co_name.startswith("<"):
                if video is not None:
                    args = [frame.f_locals.get(n) for n in co.co_varnames[:co.co_argcount + co.co_kwonlyargcount]]
                    if not any(_is_video(a, video) for a in args):
                        return
                seen.setdefault((co.co_filename, co.co_firstlineno), co)

    sys.setprofile(hook)
    try:
        fit()
    finally:
        sys.setprofile(None)
    # a nested function counts with the function that defines it
    outer = {}
    for (f, line), co in seen.items():
        outer[(f, line)] = co
    tops = {k: co for k, co in outer.items()
            if not any(k != o and o[0] == k[0] and _inside(k, o, outer) for o in outer)}
    returns = 0
    for co in tops.values():
        try:
            src = textwrap.dedent(inspect.getsource(co))
            returns += sum(isinstance(n, ast.Return) for n in ast.walk(ast.parse(src)))
        except (OSError, SyntaxError):
            pass
    return {"rooms": len(tops), "files": len({f for f, _ in tops}), "returns": returns,
            "functions": sorted(f"{Path(f).relative_to(REPO)}:{co.co_name}" for (f, _), co in tops.items())}


def _inside(k, o, codes) -> bool:
    """Function k is nested in function o (its code object is among o's constants)."""
    return any(c is codes[k] for c in codes[o].co_consts if inspect.iscode(c))


def main() -> int:
    video = clip()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = preset("fast", iterations=4, cyc_after=2, rbb_after=2, checkpoint_every=2, log_every=2,
                     batch_size=64, cl_points=32, cyc_points=32, seed=0, work_dir=tmp)
        backend = load_backend("dsift", patch_size=8, stride=4)
        out = {"fresh": walk(lambda: Tracker(backend, cfg, progress=False).fit(video)),
               "cached": walk(lambda: Tracker(backend, cfg, progress=False).fit(video)),
               "video": walk(lambda: Tracker(backend, cfg, progress=False).fit(video), video)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
