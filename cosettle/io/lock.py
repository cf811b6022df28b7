"""One run at a time per work folder: an exclusive ``fcntl.flock`` on ``<folder>/.lock``.

A second run on the same folder (same video and settings) logs that it waits, blocks until the first
one finishes, and then finds the first run's results in the cache instead of redoing or racing them.
The kernel drops the lock when its holder dies (even by SIGKILL), so a crashed run never blocks the
next one. On systems without ``fcntl`` (Windows) the lock is a no-op.
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
def folder_lock(folder: str | os.PathLike, what: str = "work folder", name: str = LOCK_NAME) -> Iterator[None]:
    """Hold an exclusive lock on ``folder/name`` for the ``with`` block (waits while another holds it)."""
    try:
        import fcntl  # deferred: POSIX-only module
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / name, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another run holds the %s %s; waiting for it to finish (then its results are reused)",
                     what, folder)
            t0 = time.perf_counter()
            fcntl.flock(fh, fcntl.LOCK_EX)
            log.info("waited %.1f s for %s", time.perf_counter() - t0, folder)
        yield
    finally:
        fh.close()  # releases the lock
