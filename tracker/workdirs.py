"""The tracker's work folders under ``<cache>/tracker``: list them (size, age), clean them, cap their size.

Why: every video x setting leaves a work folder (preprocessing, checkpoints, refined features; 508 MB
for a 141-frame 480p clip) and nothing reported or removed them, so the cache grew silently.
``scripts/track.py --cache-info`` / ``--clean-cache [--older-than DAYS]`` / ``--cache-max-gb GB`` use
this module. A folder another run is using (its ``.lock`` held, shared or exclusive: ``cosettle.io.lock``) is
never removed.
Age = time since the folder was last used: the newest modification time of the folder and its direct
entries (``Tracker.fit`` touches the folder on every run, cached or not).
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from cosettle.io.lock import is_locked

DAY = 86400.0


@dataclass
class WorkFolder:
    path: Path
    bytes: int
    last_used: float  # epoch seconds

    def age_days(self, now: float | None = None) -> float:
        return max(0.0, ((time.time() if now is None else now) - self.last_used) / DAY)


def folder_bytes(path: Path) -> int:
    """Total size of the files under ``path`` (symlinks not followed)."""
    total = 0
    stack = [Path(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(Path(e.path))
                        else:
                            total += e.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


def last_used(path: Path) -> float:
    times = [path.stat().st_mtime]
    try:
        with os.scandir(path) as it:
            for e in it:
                try:
                    times.append(e.stat(follow_symlinks=False).st_mtime)
                except OSError:
                    continue
    except OSError:
        pass
    return max(times)


def list_work_folders(root: Path) -> list[WorkFolder]:
    """Work folders under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = [WorkFolder(p, folder_bytes(p), last_used(p)) for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
    return sorted(out, key=lambda f: (f.last_used, f.path.name))


def in_use(path: Path) -> bool:
    """True when another process holds the folder's lock, shared or exclusive (a fit on it is in progress)."""
    return is_locked(path)


def remove_folders(folders: list[WorkFolder],
                   keep: set[Path] = frozenset()) -> tuple[list[WorkFolder], list[WorkFolder]]:
    """Remove ``folders`` except those in ``keep`` or in use -> (removed, skipped)."""
    removed, skipped = [], []
    keep = {Path(p).resolve() for p in keep}
    for f in folders:
        if f.path.resolve() in keep or in_use(f.path):
            skipped.append(f)
            continue
        shutil.rmtree(f.path, ignore_errors=True)
        (removed if not f.path.exists() else skipped).append(f)
    return removed, skipped


def clean(root: Path, older_than_days: float | None = None, keep: set[Path] = frozenset(),
          now: float | None = None) -> tuple[list[WorkFolder], list[WorkFolder]]:
    """Remove every work folder (or those unused for more than ``older_than_days``)."""
    folders = list_work_folders(root)
    if older_than_days is not None:
        folders = [f for f in folders if f.age_days(now) > older_than_days]
    return remove_folders(folders, keep)


def enforce_cap(root: Path, max_bytes: int, keep: set[Path] = frozenset()) -> tuple[list[WorkFolder], int]:
    """Evict the least recently used work folders until the total is at most ``max_bytes``
    (``keep`` -- the current run's folder -- and folders in use stay) -> (removed, bytes now)."""
    folders = list_work_folders(root)
    total = sum(f.bytes for f in folders)
    removed: list[WorkFolder] = []
    for f in folders:  # oldest first
        if total <= max_bytes:
            break
        done, _ = remove_folders([f], keep)
        if done:
            removed.append(f)
            total -= f.bytes
    return removed, total


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} GB"  # pragma: no cover


def human_age(days: float) -> str:
    if days < 1 / 24:
        return f"{days * 1440:.0f} min"
    if days < 2:
        return f"{days * 24:.0f} h"
    return f"{days:.0f} days"
