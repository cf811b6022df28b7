"""Folder locks: ``fcntl.flock`` on ``<folder>/.lock`` (or another file name in the folder), exclusive or shared.

An exclusive lock has one holder; a second run that wants it logs that it waits, blocks until the first
one finishes, and then finds the first run's results in the cache instead of redoing or racing them. A
shared lock has any number of holders and keeps the exclusive one out: the tracker holds its work folder
shared for a whole fit, so ``--clean-cache`` (``tracker/workdirs.py``, which skips a folder whose lock it
cannot take exclusively) never removes a folder in use, while fits of other seeds train side by side
(docs/development.md#locks-scoped-to-what-each-stage-writes).
The kernel drops a lock when its holder dies (even by SIGKILL), so a crashed run never blocks the next one.
On systems without ``fcntl`` (Windows) the locks are no-ops and ``is_locked`` says False.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "work folder", name: str = LOCK_NAME,
                shared: bool = False) -> Iterator[None]:
    """Hold a lock on ``folder/name`` for the ``with`` block: exclusive (the default; waits while anyone
    holds it) or ``shared`` (waits only while someone holds it exclusively)."""
    try:
        import fcntl  # deferred: POSIX-only module
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    fh = open(folder / name, "a+")
    try:
        try:
            fcntl.flock(fh, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another run holds the %s %s; waiting for it to finish (then its results are reused)",
                     what, folder)
            t0 = time.perf_counter()
            fcntl.flock(fh, mode)
            log.info("waited %.1f s for %s", time.perf_counter() - t0, folder)
        yield
    finally:
        fh.close()  # releases the lock


def is_locked(folder: str | os.PathLike, name: str = LOCK_NAME) -> bool:
    """True when some process holds ``folder/name`` (shared or exclusive): the exclusive lock cannot be taken
    without waiting. False when the file does not exist (never created, so never locked)."""
    try:
        import fcntl  # deferred: POSIX-only module
    except ImportError:  # pragma: no cover - not POSIX: assume free
        return False
    lock = Path(folder) / name
    if not lock.exists():
        return False
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False
