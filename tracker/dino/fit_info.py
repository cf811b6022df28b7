"""``fit_info.json`` beside a fit's checkpoints: which code trained them.

Why: a work folder's checkpoints are reused by any later code whose training key matches (the key is the
settings, not the code), so a result could be scored from a fit trained months earlier by other code and
nobody could tell (the 3-seed BADJA rows made at 74e8212 could not be reproduced at 3fd58c6). Every
training session in a ``train_<key>`` folder -- a fresh fit, or a resume -- appends one entry to
``sessions``: the code's git SHA (``-dirty`` suffix and ``git_dirty`` for uncommitted changes), the
versions and thread settings that change a fit's numbers, the backend, the seed, the iterations, its UTC
start and end, and whether it resumed from checkpoints another git SHA wrote. A fit that reuses finished
checkpoints adds nothing but logs one INFO line when they were trained by other code (or by code that
recorded nothing). Written atomically, under the training folder's lock (one writer).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any

from cosettle.io.atomic import write_json
from cosettle.provenance import git_sha, run_info

log = logging.getLogger(__name__)

FIT_INFO = "fit_info.json"
VERSION = 1
NOT_RECORDED = "not recorded"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_fit_info(ckpt_dir: str | os.PathLike) -> dict | None:
    """The folder's fit_info.json as a dict; None when it has none (or an unreadable one)."""
    try:
        info = json.loads((Path(ckpt_dir) / FIT_INFO).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("sessions"), list) else None


def session_shas(info: dict | None) -> list[str]:
    """The distinct git SHAs that trained the folder's checkpoints, oldest first ([] when not recorded)."""
    if not info:
        return []
    return list(dict.fromkeys(str(s.get("git_sha")) for s in info["sessions"] if s.get("git_sha")))


class FitRecord:
    """The training session of one fit, told by the ``Trainer`` (``begin`` / ``saved`` / ``end``)."""

    def __init__(self, ckpt_dir: str | os.PathLike, training_key: str, backend, cfg):
        self.ckpt_dir = Path(ckpt_dir)
        self.path = self.ckpt_dir / FIT_INFO
        self.training_key = training_key
        self.backend = backend
        self.cfg = cfg
        self.info: dict | None = read_fit_info(self.ckpt_dir)
        self.session: dict | None = None  # this process's entry, None when it trained nothing
        self.git: str | None = None

    def _current_git(self) -> str:
        if self.git is None:
            self.git = git_sha()  # the SHA only: a reused fit needs no version survey
        return self.git

    def begin(self, start: int, resumed_from: str | None) -> None:
        """The trainer resumed at iteration ``start`` (0: a fresh fit) from checkpoint ``resumed_from``."""
        target = int(self.cfg.iterations)
        sessions = self.info["sessions"] if self.info else []
        # the code of the session that wrote the newest checkpoints (None: not recorded)
        prev = sessions[-1].get("git_sha") if sessions else None
        info = run_info() if start < target else None  # the versions and thread count the fit trains with
        if info is not None:
            self.git = info["git_sha"]
        if start > 0:  # checkpoints another process wrote are used
            what = "reusing the finished fit" if start >= target else "resuming the fit"
            if prev is None:
                log.info("%s %s was trained by code that recorded no %s (its git SHA is unknown)", what,
                         self.ckpt_dir, FIT_INFO)
            elif prev != self._current_git():
                log.info("%s %s trained by git %s (this code: git %s)", what, self.ckpt_dir,
                         ", ".join(session_shas(self.info)), self.git)
        if info is None:
            return  # nothing trained: nothing to record
        prev = prev if start > 0 else None
        self.session = {
            "git_sha": info["git_sha"],
            "git_dirty": info["git_sha"].endswith("-dirty"),
            "torch": info.get("torch"), "timm": info.get("timm"), "opencv": info.get("opencv"),
            "numpy": info.get("numpy"),
            "torch_threads": info.get("torch_threads"),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "training_key": self.training_key,
            "backend": getattr(self.backend, "name", None),
            "backend_stride": getattr(self.backend, "stride", None),
            "backend_patch_size": getattr(self.backend, "patch_size", None),
            "seed": int(self.cfg.seed),
            "iterations_target": target,
            "start_iteration": int(start),
            "iterations_done": int(start),  # the newest checkpoint this session wrote (updated as it saves)
            "resumed_from": resumed_from if start > 0 else None,
            # the git SHA of the session that wrote the checkpoint resumed from (None: fresh, or not recorded)
            "resumed_from_git": prev,
            "resumed_from_other_git": None if prev is None else prev != self.git,  # prev is None for a fresh fit
            "start_utc": _now(),
            "end_utc": None,  # None: still training, or the process was killed
        }
        if self.info is None:
            self.info = {"version": VERSION, "training_key": self.training_key, "sessions": []}
        self.info["sessions"].append(self.session)
        self._write()

    def saved(self, iteration: int) -> None:
        if self.session is not None:
            self.session["iterations_done"] = int(iteration)
            self._write()

    def end(self) -> None:
        if self.session is not None:
            self.session["end_utc"] = _now()
            self._write()

    def _write(self) -> None:
        write_json(self.path, self.info)

    def summary(self) -> dict[str, Any]:
        """For ``RunReport.info['fit']`` (the track command's run_info.json, the evaluator's ``fit_git``)."""
        gits = session_shas(self.info)
        return {"fit_git": ", ".join(gits) if gits else NOT_RECORDED,
                "fit_info": str(self.path) if self.info is not None else None,
                "sessions": len(self.info["sessions"]) if self.info else 0}
