"""Atomic file writes: write to a temp file in the same folder, then rename over the target.

A crash or Ctrl-C therefore never leaves a half-written output behind. Renamed files get the mode a
plain ``open()`` would give them (0644 under umask 022), not ``mkstemp``'s private 0600.

Whole output *sets* (tracks + overlay + config + log of one run) go through :class:`OutputStage`:
``check_output_dir`` validates ``--out`` before any work, the files are written into a hidden
staging folder beside the target and moved into place only once every file is complete and checked,
so a failure at any point (bad fps, ffmpeg error, full disk, kill) leaves no partial set behind.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import UserError


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file under the current umask (0o644 under 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    ``suffix`` defaults to the target's suffix so that writers that pick a format from the file
    extension (imageio, numpy) behave as for the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.is_file():
            os.chmod(tmp_path, default_file_mode())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# -- output folders ----------------------------------------------------------------------------------
def _existing_ancestor(path: Path) -> Path:
    for parent in (path, *path.parents):
        if os.path.lexists(parent):
            return parent
    return Path(".")


def check_output_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Validate an output folder before any work: -> the absolute path. Writes nothing.

    Errors (UserError): ``path`` is an existing file, lies under a file, or its nearest existing
    folder is not writable.
    """
    # normalised (no "repo/../out"): the path every message and summary prints
    path = Path(os.path.abspath(Path(path).expanduser()))
    if os.path.lexists(path) and not path.is_dir():
        raise UserError(f"{flag} {path} is an existing file, not a folder",
                        f"pass a folder (new or existing) as {flag}")
    anc = _existing_ancestor(path)
    if not anc.is_dir():
        raise UserError(f"{flag} {path} lies under {anc}, which is a file",
                        f"pass a folder that is not inside a file as {flag}")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot write in {anc} (permission denied)",
                        f"pick a folder you can write to as {flag}")
    return path


def _os_error(err: OSError, path: Path) -> UserError:
    if err.errno == errno.ENOSPC:
        return UserError(f"no space left on the device while writing {path}", "free some disk space and re-run")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserError(f"cannot write {path}: {err.strerror}", "pick a folder you can write to as --out")
    return UserError(f"cannot write {path}: {err.strerror or err}", "check the output folder and re-run")


class OutputStage:
    """A hidden staging folder beside ``target``; :meth:`commit` moves its files into ``target``.

        stage = OutputStage(out)            # validates out, creates .<name>.partial-<random>/
        ... write into stage.dir ...
        stage.commit()                      # every file complete -> moved into out/
        stage.discard()                     # (always, in a finally) removes what is left

    The staging folder lives in ``target``'s nearest existing ancestor (same filesystem, so moves are
    renames; nothing is created in missing parent folders until commit). A new ``target`` appears in
    one rename; into an existing one each file is renamed over its old version (other files stay).
    """

    def __init__(self, target: str | os.PathLike, flag: str = "--out"):
        self.target = check_output_dir(target, flag)
        anc = _existing_ancestor(self.target)
        _remove_dead_stages(anc, self.target.name)
        try:
            self.dir = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-{os.getpid()}-", dir=anc))
        except OSError as err:
            raise _os_error(err, self.target) from None
        self.committed = False

    def __enter__(self) -> "OutputStage":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def path(self, name: str) -> Path:
        return self.dir / name

    def commit(self) -> Path:
        """Move the staged files into the target (after the caller checked them all)."""
        mode_file, mode_dir = default_file_mode(), 0o777 & ~_umask()
        for p in sorted(self.dir.rglob("*")):
            os.chmod(p, mode_dir if p.is_dir() else mode_file)
        try:
            if not self.target.exists():
                self.target.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(self.dir, mode_dir)
                os.rename(self.dir, self.target)
            else:
                for p in sorted(self.dir.rglob("*")):
                    dst = self.target / p.relative_to(self.dir)
                    if p.is_dir():
                        dst.mkdir(exist_ok=True)
                    else:
                        os.replace(p, dst)
        except OSError as err:
            raise _os_error(err, self.target) from None
        self.committed = True
        return self.target

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _remove_dead_stages(folder: Path, name: str) -> None:
    """Staging folders of killed runs (SIGKILL skips every cleanup): removed when their process is gone."""
    for p in folder.glob(f".{name}.partial-*"):
        try:
            pid = int(p.name[len(name) + 10:].split("-", 1)[0])
            os.kill(pid, 0)  # raises if no such process
            alive = True
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:  # another user's live process
            alive = True
        if not alive:
            shutil.rmtree(p, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
