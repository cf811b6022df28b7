"""Progress bars that suit where stderr goes: tqdm bars on a terminal (or in a notebook), one line per
stage with its time when stderr is a file or a pipe.

Why: with stderr redirected (``track.py 2> run.log``, a CI log, a batch job) every tqdm refresh was kept,
``\\r``-joined: 33-75 KB of bar fragments per tracking run that nobody can read. Call sites use ``tqdm``
from here exactly as they used ``tqdm.auto.tqdm`` (same arguments, ``update``/``set_postfix``/``close``,
iteration, ``with``); only the import changes.

Not a terminal: nothing while the stage runs, then one line when it closes, e.g.
``train: 300/300 it in 74.1 s (loss=0.0123)``. ``disable=True`` and ``TQDM_DISABLE`` (``--quiet``) print
nothing in both cases.
"""
from __future__ import annotations

import os
import sys
import time

from tqdm.auto import tqdm as _tqdm_auto


def _interactive(stream) -> bool:
    """A terminal, or a notebook kernel (tqdm.auto draws a widget there; its stderr is not a tty)."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or odd stream
        return False


def tqdm(iterable=None, desc: str | None = None, total=None, disable: bool = False, unit: str = "it",
         initial: float = 0, file=None, **kwargs):
    """``tqdm.auto.tqdm`` on a terminal, else a :class:`StageLine` (one line per stage at its end)."""
    stream = file if file is not None else sys.stderr
    if _interactive(stream):
        return _tqdm_auto(iterable, desc=desc, total=total, disable=disable, unit=unit, initial=initial,
                          file=file, **kwargs)
    off = disable or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    return StageLine(iterable, desc=desc, total=total, disable=off, unit=unit, initial=initial, file=stream)


class StageLine:
    """The part of tqdm's interface the project uses, printing one line when the stage ends."""

    def __init__(self, iterable=None, desc: str | None = None, total=None, disable: bool = False,
                 unit: str = "it", initial: float = 0, file=None):
        self.iterable = iterable
        self.desc = desc or "progress"
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except TypeError:
                total = None
        self.total = total
        self.disable = disable
        self.unit = unit
        self.n = initial
        self.initial = initial
        self.file = file
        self.postfix = ""
        self.start = time.perf_counter()
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.n += 1
        self.close()

    def __len__(self):
        return self.total or 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or self.desc

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.disable or self.file is None:
            return
        done = f"{self.n:g}" + (f"/{self.total:g}" if self.total is not None else "")
        resumed = f", from {self.initial:g}" if self.initial else ""
        line = f"{self.desc}: {done} {self.unit} in {time.perf_counter() - self.start:.1f} s{resumed}"
        if self.postfix:
            line += f" ({self.postfix})"
        try:
            print(line, file=self.file, flush=True)
        except (OSError, ValueError):  # stderr closed: progress is never worth a crash
            pass
