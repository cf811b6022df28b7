import json
import logging
import threading
import time

import numpy as np
import pytest
import torch

from cosettle import load_backend
from cosettle.cache import FeatureCache, video_fingerprint


def test_cached_equals_fresh_and_is_memory_mapped(tmp_path, small_clip):
    b = load_backend("dsift")
    cache = FeatureCache(tmp_path)
    first = cache.get_or_compute(b, small_clip)
    fresh = b(small_clip)
    assert first.geometry == fresh.geometry
    assert first.features.dtype == torch.float16
    torch.testing.assert_close(first.features.float(), fresh.features, atol=2e-3, rtol=2e-3)
    files = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".lock-"))
    assert len(files) == 2 and not any(".tmp" in f for f in files)
    again = cache.get_or_compute(b, small_clip)
    torch.testing.assert_close(again.features, first.features)


def test_any_key_field_change_recomputes(tmp_path, small_clip):
    cache = FeatureCache(tmp_path)
    base = load_backend("dinov2_vits14", weights="random", stride=14)
    k0, _ = cache.key(base, small_clip)
    variants = [
        load_backend("dinov2_vits14", weights="random", stride=7),
        load_backend("dinov2_vits14", weights="random", stride=14, layer=2),
        load_backend("dinov2_vits14", weights="random", stride=14, resolution=(28, 42)),
        load_backend("dinov2_vits14", weights="random", stride=14, seed=5),
        load_backend("dsift"),
    ]
    keys = {cache.key(v, small_clip)[0] for v in variants}
    assert k0 not in keys and len(keys) == len(variants)
    changed = small_clip.copy()
    changed[3, 10, 10, 0] ^= 1  # one bit of one pixel
    assert cache.key(base, changed)[0] != k0
    assert video_fingerprint(changed) != video_fingerprint(small_clip)


def test_a_foreign_entry_is_not_served(tmp_path, small_clip):
    b = load_backend("dsift")
    cache = FeatureCache(tmp_path)
    feats = cache.get_or_compute(b, small_clip)
    key, fields = cache.key(b, small_clip)
    data, meta = cache.paths(key)
    stored = json.loads(meta.read_text())
    stored["fields"]["video"] = "something else"
    meta.write_text(json.dumps(stored))
    assert cache.load(key, fields) is None  # recomputed instead of trusting the file
    again = cache.get_or_compute(b, small_clip)
    torch.testing.assert_close(again.features, feats.features)


def test_video_fingerprint_is_layout_independent(small_clip):
    t = torch.from_numpy(small_clip).permute(0, 3, 1, 2)
    assert video_fingerprint(t) == video_fingerprint(small_clip)
    assert video_fingerprint(small_clip.astype(np.float32) / 255) == video_fingerprint(small_clip)


# -- corruption is detected (content checksums) -------------------------------------------------------
def _flip_middle_byte(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size: only a checksum can tell
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_feature_entry_is_recomputed_not_served(tmp_path, small_clip, caplog, damage):
    b = load_backend("dsift")
    cache = FeatureCache(tmp_path)
    good = cache.get_or_compute(b, small_clip).features.clone()
    data, _ = cache.paths(cache.key(b, small_clip)[0])
    if damage == "flip":
        _flip_middle_byte(data)
    else:
        data.write_bytes(data.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING, logger="cosettle.cache"):
        again = cache.get_or_compute(b, small_clip).features
    assert caplog.text.count("unusable") == 1 and "recomputing" in caplog.text
    torch.testing.assert_close(again, good, atol=0, rtol=0)  # bit-identical to the first, good entry


def test_stage_cache_detects_same_size_corruption(tmp_path, caplog):
    from tracker.preprocess.pipeline import StageCache

    calls = []

    def compute(folder):
        calls.append(1)
        np.save(folder / "a.npy", np.arange(100, dtype=np.float32))
        return {}

    def load(folder, meta):
        return np.load(folder / "a.npy")

    sc = StageCache(tmp_path)
    first, info = sc.run("demo", {"x": 1}, compute, load)
    assert info["cached"] is False and len(calls) == 1
    _, info = sc.run("demo", {"x": 1}, compute, load)
    assert info["cached"] is True and len(calls) == 1
    _flip_middle_byte(sc.path("demo", info["key"]) / "a.npy")
    with caplog.at_level(logging.WARNING, logger="tracker.preprocess"):
        again, info = sc.run("demo", {"x": 1}, compute, load)
    assert info["cached"] is False and len(calls) == 2
    assert caplog.text.count("unusable") == 1 and "checksum" in caplog.text
    np.testing.assert_array_equal(again, np.arange(100, dtype=np.float32))


def test_stage_folder_without_checksums_is_recomputed(tmp_path):
    from tracker.preprocess.pipeline import StageCache

    sc = StageCache(tmp_path)
    _, info = sc.run("demo", {"x": 2}, lambda d: np.save(d / "a.npy", np.ones(3)) or {},
                     lambda d, m: np.load(d / "a.npy"))
    meta_file = sc.path("demo", info["key"]) / "meta.json"
    meta = json.loads(meta_file.read_text())
    del meta["digests"]  # as written before checksums existed
    meta_file.write_text(json.dumps(meta))
    assert sc.check(meta_file.parent) is None


def _tiny_checkpoints(tmp_path, iterations=(10, 20)):
    from tracker.dino.train import _save

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rng = np.random.default_rng(0)
    for it in iterations:
        with torch.no_grad():
            model.weight.fill_(float(it))
        _save(tmp_path / f"ckpt_{it:07d}.pt", model, opt, it, rng)
    return tmp_path


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_checksum"])
def test_checkpoint_falls_back_to_the_newest_valid_one(tmp_path, caplog, damage):
    from tracker.dino.train import latest_checkpoint, load_checkpoint

    d = _tiny_checkpoints(tmp_path)
    newest = d / "ckpt_0000020.pt"
    assert latest_checkpoint(d) == newest
    if damage == "truncate":
        newest.write_bytes(newest.read_bytes()[:50])
    elif damage == "flip":
        _flip_middle_byte(newest)
    else:  # killed between the checkpoint's rename and its checksum
        (d / "ckpt_0000020.pt.blake2b").unlink()
    with caplog.at_level(logging.WARNING, logger="tracker.dino.train"):
        best = latest_checkpoint(d)
    assert best == d / "ckpt_0000010.pt"
    assert caplog.text.count("unusable") == 1
    st = load_checkpoint(best)
    assert st["iteration"] == 10 and float(st["model"]["weight"][0, 0]) == 10.0
    assert not newest.exists()  # the bad one is removed (training writes it again)


def test_load_checkpoint_refuses_a_corrupt_file(tmp_path):
    from tracker.dino.train import load_checkpoint

    d = _tiny_checkpoints(tmp_path, (5,))
    _flip_middle_byte(d / "ckpt_0000005.pt")
    with pytest.raises(ValueError, match="checksum"):
        load_checkpoint(d / "ckpt_0000005.pt")


def test_tracker_recovers_from_truncated_checkpoint_and_refined(tmp_path, caplog):
    """A truncated newest checkpoint and a truncated refined.pt: the re-run logs them, resumes from the
    older valid checkpoint and gives the same tracks as the undamaged run -- no traceback."""
    from tests._tracker_synth import translating_clip
    from tests.test_tracker_api import Q, _backend, _cfg
    from tracker.api import Tracker

    clip = translating_clip(64, 96, 6, 3, 1)
    cfg = _cfg(tmp_path, iterations=20, checkpoint_every=10, cyc_after=10, rbb_after=10)
    good = Tracker(_backend(), cfg, progress=False).fit(clip).track(Q)
    train_dir = next(tmp_path.glob("train_*"))
    for name in ("ckpt_0000020.pt", "refined.pt"):
        f = train_dir / name
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with caplog.at_level(logging.INFO):
        again = Tracker(_backend(), cfg, progress=False).fit(clip).track(Q)
    assert "ckpt_0000020.pt is unusable" in caplog.text and "refined features" in caplog.text
    assert "resuming training from ckpt_0000010.pt" in caplog.text
    np.testing.assert_array_equal(again.tracks, good.tracks)
    np.testing.assert_array_equal(again.visible, good.visible)


# -- one run per work folder ----------------------------------------------------------------------------
class _Announces(logging.Handler):
    """Sets an event when the lock logs that a run is waiting: from then on that run is past its failed
    non-blocking attempt, so the holder may release and the order of the two is fixed (no sleeps)."""

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


def test_folder_lock_makes_a_second_run_wait(tmp_path, lock_waits):
    from cosettle.io.lock import folder_lock

    events = []
    first_in = threading.Event()

    def first():
        with folder_lock(tmp_path):
            first_in.set()
            events.append(("second was waiting", lock_waits.wait(60)))  # holds the lock until then
            events.append("first done")

    def second():
        assert first_in.wait(60)
        with folder_lock(tmp_path):
            events.append("second in")

    t1, t2 = threading.Thread(target=first), threading.Thread(target=second)
    t1.start(), t2.start()
    t1.join(120), t2.join(120)
    assert not t1.is_alive() and not t2.is_alive()
    assert events == [("second was waiting", True), "first done", "second in"]  # never inside together


def test_second_fit_on_a_locked_work_folder_waits_then_reuses(tmp_path, caplog, lock_waits):
    """While another run holds the work folder, fit() waits; afterwards it reuses the cached stages."""
    from cosettle.io.lock import folder_lock
    from tests._tracker_synth import translating_clip
    from tests.test_tracker_api import _backend, _cfg
    from tracker.api import Tracker

    clip = translating_clip(32, 48, 3, 2, 1)
    cfg = _cfg(tmp_path, iterations=2, checkpoint_every=1, cyc_after=1, rbb_after=1)
    Tracker(_backend(), cfg, progress=False).fit(clip)  # the "first run", finished
    done = []

    def second():
        Tracker(_backend(), cfg, progress=False).fit(clip)
        done.append(time.monotonic())

    with caplog.at_level(logging.INFO):
        with folder_lock(tmp_path):  # a first run still in progress
            t = threading.Thread(target=second)
            t.start()
            assert lock_waits.wait(120)  # the second run reached the lock and waits on it
            released = time.monotonic()
            assert not done  # blocked: it cannot finish while the lock is held
        t.join(120)
    assert not t.is_alive() and done and done[0] >= released
    assert "training: 0 iterations" in caplog.text and "computed in" not in caplog.text.split("waited")[-1]


def test_projected_entries_reuse_the_base_entry(tmp_path, small_clip, monkeypatch):
    """Two projectors on one base: the encoder runs once; each projected entry is the projection of the
    float16 base entry, and close to projecting the encoder's own float32 output."""
    from cosettle import ProjectedBackend

    base = load_backend("dsift")
    runs = []
    real = type(base).iter_chunks

    def counted(self, *a, **k):
        runs.append(self.name)
        yield from real(self, *a, **k)

    monkeypatch.setattr(type(base), "iter_chunks", counted)
    cache = FeatureCache(tmp_path)
    torch.manual_seed(0)
    lins = [torch.nn.Linear(base.feat_dim, 5) for _ in range(2)]
    outs = [cache.get_or_compute(ProjectedBackend(base, lin), small_clip) for lin in lins]
    assert runs == ["dsift"]  # the base extracted once, for the first projector
    base_entry = cache.get_or_compute(base, small_clip).features.float()
    assert runs == ["dsift"]
    for lin, out in zip(lins, outs):
        want = lin(base_entry.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).detach()
        assert out.features.shape == want.shape
        torch.testing.assert_close(out.features.float(), want, atol=2e-3, rtol=2e-3)
    direct = ProjectedBackend(base, lins[0])(small_clip).features
    torch.testing.assert_close(outs[0].features.float(), direct, atol=1e-2, rtol=1e-2)
    _, fields = cache.key(ProjectedBackend(base, lins[0]), small_clip)
    assert fields["projected_from"] == "float16 base entry"
    assert "projected_from" not in cache.key(base, small_clip)[1]
