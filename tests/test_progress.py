"""cosettle.progress: tqdm bars on a terminal, one line per stage with its time when stderr is a file or a pipe
(issue 28: with stderr redirected, tqdm wrote 33-75 KB of \\r-joined bar frames per tracking run)."""
from __future__ import annotations

import io

from tqdm.std import tqdm as std_tqdm

from cosettle.progress import StageLine, tqdm


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_a_file_gets_one_line_per_stage_with_its_time():
    buf = io.StringIO()
    bar = tqdm(total=300, initial=100, desc="train", unit="it", file=buf)
    assert isinstance(bar, StageLine)
    for _ in range(200):
        bar.update(1)
    bar.set_postfix(loss="0.0123")
    assert buf.getvalue() == ""                       # nothing while the stage runs
    bar.close()
    bar.close()                                       # closing twice prints once
    out = buf.getvalue()
    assert "\r" not in out and out.count("\n") == 1
    assert out.startswith("train: 300/300 it in ") and out.rstrip().endswith("s, from 100 (loss=0.0123)")
    # iterating closes the stage by itself
    buf2 = io.StringIO()
    assert sum(tqdm(range(7), desc="flow [dis]", unit="pair", file=buf2)) == 21
    assert buf2.getvalue().startswith("flow [dis]: 7/7 pair in ")


def test_a_terminal_keeps_the_tqdm_bar():
    bar = tqdm(total=3, desc="train", file=_Tty())
    assert isinstance(bar, std_tqdm)
    bar.close()


def test_disabled_or_quiet_prints_nothing(monkeypatch):
    buf = io.StringIO()
    tqdm(total=2, desc="x", disable=True, file=buf).close()
    monkeypatch.setenv("TQDM_DISABLE", "1")           # --quiet sets it for every stage
    tqdm(total=2, desc="y", file=buf).close()
    assert buf.getvalue() == ""
