"""Runner cache/resume/sharding with a fake tracker, and the report (gains, files)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from badja_eval.report import build_rows, format_table, write_report
from badja_eval.runner import Method, Runner, Task, make_methods
from cosettle.errors import UserError
from cosettle.hashing import file_digest
from cosettle.io.tracks import TrackResult


class FakeTracker:
    """Moves every query by ``speed`` px per frame; counts its calls."""

    calls: list = []

    def __init__(self, name, backend, config, fail_on=None):
        self.name, self.backend, self.fail_on = name, backend, fail_on

    def fit(self, video, masks=None):
        self.T = len(video)
        FakeTracker.calls.append((self.name, self.backend, int(video[0, 0, 0, 0])))
        if self.fail_on is not None and int(video[0, 0, 0, 0]) == self.fail_on:
            raise KeyboardInterrupt
        return self

    def track(self, queries):
        q = np.asarray(queries)
        t = np.arange(self.T)
        tracks = np.repeat(q[:, None, 1:], self.T, axis=1) + (t[None, :, None] - q[:, None, :1]) * 1.0
        return TrackResult(tracks, np.ones(tracks.shape[:2], bool), np.ones(tracks.shape[:2]), q)


def _tasks(n=3):
    out = []
    for k in range(n):
        frames = np.full((4, 8, 8, 3), k, np.uint8)
        out.append(Task(f"seq{k}", lambda f=frames: (f, None), np.array([[0, 1.0, 2.0]]), (4, 8, 8), f"c{k}"))
    return out


def _runner(tmp_path, **kw):
    fail_on = kw.pop("fail_on", None)
    return Runner(tmp_path / "cache", build_tracker=lambda n, b, c: FakeTracker(n, b, c, fail_on),
                  load_backend=lambda name, **_: f"B[{name}]", progress=False, **kw)


def test_methods():
    ms = make_methods(["static", "dino"], ["dsift", "dsift+cosettle:p.pt"])
    assert [m.label for m in ms] == ["static", "dino/dsift", "dino/dsift+cosettle:p.pt"]
    assert ms[2].base_backend == "dsift" and ms[1].base_backend is None
    with pytest.raises(UserError):
        make_methods(["dino"], [])


def test_cache_resume_after_interrupt(tmp_path):
    FakeTracker.calls = []
    methods = [Method("fake")]
    with pytest.raises(KeyboardInterrupt):  # interrupted while fitting the second sequence
        _runner(tmp_path, fail_on=1).run(_tasks(), methods)
    assert len(FakeTracker.calls) == 2
    FakeTracker.calls = []
    r = _runner(tmp_path)
    preds = r.run(_tasks(), methods)
    assert [c[2] for c in FakeTracker.calls] == [1, 2]  # seq0 came from the cache
    assert preds[("seq0", "fake")].cached and not preds[("seq1", "fake")].cached
    np.testing.assert_allclose(preds[("seq2", "fake")].tracks[0, :, 0], [1, 2, 3, 4])
    # a change of inputs (different queries) invalidates that entry only
    tasks = _tasks()
    tasks[0].queries = np.array([[0, 5.0, 5.0]])
    FakeTracker.calls = []
    r.run(tasks, methods)
    assert [c[2] for c in FakeTracker.calls] == [0]


def test_shards_partition_and_share_the_cache(tmp_path):
    FakeTracker.calls = []
    methods = [Method("fake"), Method("dino", "dsift")]
    a = _runner(tmp_path).run(_tasks(), methods, shard=(0, 2))
    b = _runner(tmp_path).run(_tasks(), methods, shard=(1, 2))
    assert {k for k, _ in a} == {"seq0", "seq2"} and {k for k, _ in b} == {"seq1"}
    assert ("dino", "B[dsift]", 0) in FakeTracker.calls
    FakeTracker.calls = []
    full = _runner(tmp_path).run(_tasks(), methods)
    assert len(full) == 6 and FakeTracker.calls == [] and all(p.cached for p in full.values())


def test_settings_are_part_of_the_cache_key(tmp_path):
    t, m = _tasks(1)[0], Method("dino", "dsift")
    base = _runner(tmp_path).fingerprint(t, m)
    assert _runner(tmp_path, tracker_overrides={"dino": {"iterations": 5}}).fingerprint(t, m) != base
    assert _runner(tmp_path, tracker_overrides={"flow": {"fb_threshold": 2}}).fingerprint(t, m) == base
    assert _runner(tmp_path, backend_kwargs={"stride": 4}).fingerprint(t, m) != base
    assert _runner(tmp_path, preset="paper").fingerprint(t, m) != base
    assert _runner(tmp_path, preset="paper").fingerprint(t, Method("static")) == \
        _runner(tmp_path).fingerprint(t, Method("static"))  # the preset is DINO-Tracker's only
    cfg = _runner(tmp_path, tracker_overrides={"dino": {"iterations": 5}}).tracker_config(m)
    assert cfg.iterations == 5 and cfg.cnn_width == 16  # the fast preset plus the override


def test_a_changed_preset_definition_invalidates_the_cache(tmp_path, monkeypatch):
    """The key holds the resolved config, not just the preset name."""
    import badja_eval.runner as runner_module

    t, m = _tasks(1)[0], Method("dino", "dsift")
    before = _runner(tmp_path).fingerprint(t, m)
    real = runner_module.preset
    monkeypatch.setattr(runner_module, "preset", lambda name, **kw: real(name, **kw).replace(iterations=7))
    assert _runner(tmp_path).fingerprint(t, m) != before


def test_max_new_stops_early(tmp_path):
    r = _runner(tmp_path, max_new=1)
    assert len(r.run(_tasks(), [Method("fake")])) == 1


def test_rows_mean_and_gain_columns(tmp_path):
    methods = make_methods(["static", "dino"], ["dsift", "dsift+cosettle:p.pt"])
    s = {("a", "static"): {"delta_seg": 10.0, "delta_3px": 0.0, "count": 5},
         ("b", "static"): {"delta_seg": 20.0, "delta_3px": 2.0, "count": 5},
         ("a", "dino/dsift"): {"delta_seg": 50.0, "delta_3px": 5.0, "count": 5},
         ("b", "dino/dsift"): {"delta_seg": 60.0, "delta_3px": 7.0, "count": 5},
         ("a", "dino/dsift+cosettle:p.pt"): {"delta_seg": 55.0, "delta_3px": 4.0, "count": 5},
         ("b", "dino/dsift+cosettle:p.pt"): {"delta_seg": 70.0, "delta_3px": 8.0, "count": 5}}
    rows = build_rows(s, ["a", "b"], methods, ["delta_seg", "delta_3px"])
    assert len(rows) == 9
    mean_proj = rows[-1]
    assert mean_proj["sequence"] == "mean" and mean_proj["delta_seg"] == 62.5
    assert mean_proj["gain_delta_seg"] == pytest.approx(62.5 - 55.0)
    assert mean_proj["gain_delta_3px"] == pytest.approx(6.0 - 6.0)
    assert rows[2]["gain_delta_3px"] == -1.0  # sequence a: 4 - 5
    assert "gain_delta_seg" not in rows[0] and "gain_delta_seg" not in rows[1]
    assert rows[6]["delta_seg"] == 15.0 and rows[6]["count"] == 10  # mean of static
    text = format_table(rows, ["delta_seg", "delta_3px"], {"delta_seg": "δseg"})
    assert "δseg" in text and "+7.50" in text and "-1.00" in text
    paths = write_report(tmp_path / "out", rows, ["delta_seg", "delta_3px"], benchmark="badja",
                         config={"preset": "fast"})
    for k in ("csv", "json", "png", "config", "run_info"):
        assert paths[k].is_file() and paths[k].stat().st_size > 0
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    data = json.loads(paths["json"].read_text())
    assert data["rows"][-1]["gain_delta_seg"] == pytest.approx(7.5)
    assert "git_sha" in json.loads(paths["run_info"].read_text())
    header = paths["csv"].read_text().splitlines()[0].split(",")
    assert header == ["sequence", "tracker", "backend", "delta_seg", "delta_3px", "gain_delta_seg",
                      "gain_delta_3px", "count"]
    # NaN (nothing to score) is written as null / "-"
    rows2 = build_rows({("a", "static"): {"delta_seg": math.nan, "delta_3px": math.nan, "count": 0}},
                       ["a"], [Method("static")], ["delta_seg", "delta_3px"])
    assert " -" in format_table(rows2, ["delta_seg", "delta_3px"])


def test_a_projector_retrained_in_place_is_recomputed(tmp_path):
    """The cache key holds the projector file's content, not just its path."""
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "projector.safetensors").write_bytes(b"first projector")
    tasks, m = _tasks(2), Method("features", f"dsift+cosettle:{proj}")
    FakeTracker.calls = []
    _runner(tmp_path).run(tasks, [m])
    _runner(tmp_path).run(tasks, [m])
    assert len(FakeTracker.calls) == 2  # the second run came from the cache
    (proj / "projector.safetensors").write_bytes(b"retrained projector")
    _runner(tmp_path).run(tasks, [m])
    assert len(FakeTracker.calls) == 4  # both tasks recomputed
    # a local weights file: replaced (other size) -> recomputed
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"weights")
    _runner(tmp_path, backend_kwargs={"weights": str(w)}).run(tasks, [Method("features", "dsift")])
    _runner(tmp_path, backend_kwargs={"weights": str(w)}).run(tasks, [Method("features", "dsift")])
    assert len(FakeTracker.calls) == 6
    w.write_bytes(b"other weights")
    _runner(tmp_path, backend_kwargs={"weights": str(w)}).run(tasks, [Method("features", "dsift")])
    assert len(FakeTracker.calls) == 8


def test_the_stamped_projector_is_the_one_load_backend_reads(tmp_path):
    """projector= wins over NAME+cosettle:PATH in load_backend, so the cache key follows that file."""
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    r = _runner(tmp_path, backend_kwargs={"projector": str(a)})
    assert r._file_stamps(f"dsift+cosettle:{b}")[0][1] == file_digest(a)
    assert _runner(tmp_path)._file_stamps(f"dsift+cosettle:{b}")[0][1] == file_digest(b)
    assert r._file_stamps("dsift") == []  # a plain name is not projected, whatever projector= says
