"""Provenance written next to every output (like dinov2's resolved config + git SHA)."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import logging
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy
import torch

from .io.atomic import write_json

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=5)
        sha = out.stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def run_info(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    info = {
        "git_sha": git_sha(),
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        # CPU kernels split reductions by thread: a DINO-Tracker fit is reproducible at the same count only
        "torch_threads": torch.get_num_threads(),
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }
    try:  # the installed version without importing timm (2-3 s: every cached tracking re-run paid it)
        info["timm"] = sys.modules["timm"].__version__ if "timm" in sys.modules else importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        pass
    try:
        # imported here, not at module top: cv2 is heavy and provenance is imported by every CLI; DIS
        # optical flow (and so every flow-based number) differs between OpenCV versions

        info["opencv"] = cv2.__version__
    except ImportError:  # pragma: no cover - cv2 is a dependency; a missing one is simply not recorded
        pass
    info.update(extra or {})
    return info


def write_run_info(out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    path = Path(out_dir) / "run_info.json"
    write_json(path, run_info(extra))
    return path


def setup_logging(verbose: bool = False, log_file: str | Path | None = None, quiet: bool = False) -> None:
    """Console logging on stderr (INFO, DEBUG with --verbose, only warnings with --quiet) plus an
    optional log file that always gets INFO (DEBUG with --verbose): stdout stays for what a person reads."""
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.NOTSET)
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers,
                        force=True)


def close_file_logging() -> None:
    """Detach and close the root logger's file handlers (CLIs called in-process, e.g. from tests,
    must not leave a handler pointing at a deleted folder)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    On Linux this is ``VmHWM`` of /proc/self/status: ``ru_maxrss`` of a process started with
    fork + exec begins at its *parent's* RSS at the fork (the kernel copies the counter), so a child of
    a large process (a test runner, a benchmark driver) would report the parent's peak as its own.
    Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    import resource  # deferred: POSIX-only module

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024.0 * 1024.0) if sys.platform == "darwin" else rss / 1024.0
