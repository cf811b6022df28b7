"""Locks scoped to what each stage writes (docs/development.md#locks-scoped-to-what-each-stage-writes): a fit
holds its work folder shared, the preprocessing lock while it writes the stages and its ``train_<key>`` folder
while it trains, so fits of two seeds on one clip train at the same time and ``--clean-cache`` removes neither."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cosettle.io.lock import folder_lock, is_locked

REPO = Path(__file__).resolve().parents[1]


class _Announces(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.waiting = threading.Event()

    def emit(self, record):
        if "waiting for it to finish" in record.getMessage():
            self.waiting.set()


@pytest.fixture
def lock_waits():
    h = _Announces()
    lg = logging.getLogger("cosettle.io.lock")
    before = lg.level
    lg.setLevel(logging.INFO)
    lg.addHandler(h)
    yield h.waiting
    lg.removeHandler(h)
    lg.setLevel(before)


def test_shared_holders_are_inside_together_and_keep_the_exclusive_one_out(tmp_path, lock_waits):
    both_in = threading.Barrier(2, timeout=60)  # each shared holder waits inside for the other: a lock that
    #                                             let only one in at a time would break the barrier
    events, errors = [], []

    def reader(i):
        try:
            with folder_lock(tmp_path, shared=True):
                both_in.wait()
                if i == 0:
                    events.append(("locked while shared", is_locked(tmp_path)))
                    events.append(("writer waited", lock_waits.wait(60)))  # the writer announces it waits
                both_in.wait()
                events.append(f"reader {i} out")
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    def writer():
        assert both_in_ready.wait(60)
        with folder_lock(tmp_path):
            events.append("writer in")

    both_in_ready = threading.Event()
    readers = [threading.Thread(target=reader, args=(i,)) for i in range(2)]
    for t in readers:
        t.start()
    while len(events) < 1 and not errors:  # reader 0 reported the lock as held: both readers are inside
        time.sleep(0.01)
    both_in_ready.set()
    w = threading.Thread(target=writer)
    w.start()
    for t in [*readers, w]:
        t.join(120)
    assert not errors, errors
    assert events[:2] == [("locked while shared", True), ("writer waited", True)]
    assert sorted(events[2:4]) == ["reader 0 out", "reader 1 out"] and events[4] == "writer in"
    assert not is_locked(tmp_path)


_CHILD = """
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
import torch; torch.set_num_threads(1)
import tracker.dino.train
from tests.test_tracker_api import _backend, _cfg, translating_clip
from tracker.api import Tracker

seed, sync = {seed}, Path({sync!r})
run = tracker.dino.train.Trainer.run

def timed_run(self, *args, **kwargs):
    # CLOCK_MONOTONIC is one clock for every process of the machine: the parent compares the intervals
    start = time.monotonic()
    (sync / f"training-{{seed}}").write_text(str(start))
    deadline = start + 240  # hold training open until the parent has run --clean-cache (or give up)
    while not (sync / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    model = run(self, *args, **kwargs)
    (sync / f"interval-{{seed}}.json").write_text(json.dumps({{"start": start, "end": time.monotonic(),
                                                             "iterations": self.cfg.iterations}}))
    return model

tracker.dino.train.Trainer.run = timed_run
cfg = _cfg("unused", seed=seed, iterations=6, cyc_after=3, rbb_after=3, checkpoint_every=3).replace(work_dir=None)
Tracker(_backend(), cfg, progress=False).fit(translating_clip(32, 48, 4, 2, 1))
"""


def test_two_seeds_on_one_clip_train_at_the_same_time_while_clean_cache_keeps_both(tmp_path):
    """Real processes: two fits of seeds 1 and 2 on one clip share the work folder (the seed is not in its
    key). Each child records when its training starts and ends (one machine-wide monotonic clock) and keeps
    training open until this test has run ``--clean-cache`` against the cache while both train (or for 240 s:
    the other may still be preprocessing on a loaded machine). On the old code (the work folder's lock held
    through training) the second seed waited for the first's whole fit: the first gave up waiting after 240 s
    and ended before the second started training."""
    cache, sync = tmp_path / "cache", tmp_path / "sync"
    sync.mkdir()
    stale = cache / "tracker" / "stale"  # a folder no run uses: --clean-cache must remove it
    stale.mkdir(parents=True)
    (stale / "x.npy").write_bytes(b"0" * 100)
    env = dict(os.environ, COSETTLE_CACHE=str(cache), OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    procs = []
    try:
        for seed in (1, 2):
            script = tmp_path / f"child{seed}.py"
            script.write_text(_CHILD.format(repo=str(REPO), seed=seed, sync=str(sync)))
            procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + 300  # preprocessing, imports: generous on a loaded 2-core machine
        while time.monotonic() < deadline and all(p.poll() is None for p in procs):  # until one exits
            if all((sync / f"training-{s}").exists() for s in (1, 2)):
                break
            time.sleep(0.05)
        in_training = sorted(p.name for p in sync.glob("training-*"))  # while both processes still ran
        clean = subprocess.run([sys.executable, "-m", "tracker.commands.track", "--clean-cache", "--json"],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        (sync / "go").write_text("")
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        (sync / "go").write_text("")
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outs]
    assert in_training == ["training-1", "training-2"], f"only {in_training} trained before a fit ended"
    iv = [json.loads((sync / f"interval-{s}.json").read_text()) for s in (1, 2)]
    overlap = min(i["end"] for i in iv) - max(i["start"] for i in iv)
    assert overlap > 0, f"the two seeds did not train at the same time: {iv}"  # both in [max start, min end]
    assert all(i["iterations"] == 6 for i in iv)
    assert clean.returncode == 0, clean.stderr
    report = json.loads(clean.stdout)
    work = [p for p in (cache / "tracker").iterdir()]
    assert len(work) == 1 and report["kept_in_use"] == [str(work[0])]
    assert report["removed"] == [str(stale)] and not stale.exists()  # it did clean what nobody used
    trains = sorted(work[0].glob("train_*"))
    assert len(trains) == 2 and all((t / "refined.pt").is_file() and list(t.glob("ckpt_*.pt")) for t in trains)
