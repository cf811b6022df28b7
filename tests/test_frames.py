"""The one video normaliser (cosettle.frames.as_frames, issue 27 item 1): every tracker and the CLI take the
same inputs, a float clip tracks like its uint8 version with every tracker, one UserError line for a bad
video, the digests equal the cache keys written before it existed, and a fit hashes the video once."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from cosettle.backends.registry import load_backend
from cosettle.errors import UserError
from cosettle.frames import Frames, as_frames
from cosettle.hashing import video_fingerprint
from tests._tracker_synth import translating_clip
from tracker.config import preset
from tracker.registry import build_tracker

Q = np.array([[0, 40.0, 30.0], [3, 50.0, 25.0], [5, 35.0, 38.0]])


@pytest.fixture(scope="module")
def clip():
    return translating_clip(64, 96, 6, 3, 1)


def _float(clip):
    return clip.astype(np.float32) / 255  # float32(u/255) * 255 rounds back to u exactly


def test_inputs_give_the_same_frames_and_the_old_cache_keys(clip):
    # the keys of cache folders written before as_frames existed, computed here by hand with hashlib:
    # the work folder's (video_fingerprint: sha1 of "TxHxW" then the raw frames) and the stages'
    # (array_digest: sha256 of "(shape, 'uint8')" then the bytes, first 16 hex digits)
    T, H, W = clip.shape[:3]
    old_work = hashlib.sha1(f"{T}x{H}x{W}".encode() + clip.tobytes()).hexdigest()
    old_stage = hashlib.sha256(str((clip.shape, "uint8")).encode() + clip.tobytes()).hexdigest()[:16]
    inputs = {"uint8": clip, "float": _float(clip), "tchw": np.ascontiguousarray(clip.transpose(0, 3, 1, 2)),
              "tensor": torch.from_numpy(_float(clip)).permute(0, 3, 1, 2), "list": list(clip),
              "float64": clip / 255.0}
    for name, video in inputs.items():
        f = as_frames(video)
        assert f.array.dtype == np.uint8 and f.array.flags.c_contiguous, name
        np.testing.assert_array_equal(f.array, clip, err_msg=name)
        assert (f.T, f.H, f.W) == (T, H, W)
        assert f.digest == old_work, name
        assert f.content_digest == old_stage, name
        assert video_fingerprint(video) == old_work, name  # the streamed fingerprint agrees on the raw input
    f = as_frames(clip)
    assert as_frames(f) is f  # a Frames passes through with its digests


@pytest.mark.parametrize("bad", [np.zeros((2, 8, 8, 2), np.uint8), np.zeros((8, 8, 3), np.uint8),
                                 np.zeros((2, 4, 8, 8), np.float32), np.full((2, 8, 8, 3), np.nan, np.float32),
                                 np.full((2, 8, 8, 3), 300, np.int64)])
def test_bad_video_is_one_user_error_line(bad):
    with pytest.raises(UserError) as err:
        as_frames(bad)
    assert "\n" not in err.value.one_line()


@pytest.mark.parametrize("tracker", ["flow", "dino", "dino-flow"])
def test_bad_shape_is_the_same_user_error_for_every_tracker(tracker, tmp_path):
    with pytest.raises(UserError, match="3 channels") as err:
        _tracker(tracker, tmp_path).fit(np.zeros((4, 16, 16, 2), np.uint8))
    assert "\n" not in err.value.one_line()


@pytest.mark.parametrize("tracker", ["dino", "dino-flow"])
def test_one_frame_is_refused_by_the_trackers_that_need_two(tracker, tmp_path):
    with pytest.raises(UserError, match=f"the {tracker} tracker's video needs at least 2 frames, got 1"):
        _tracker(tracker, tmp_path).fit(np.zeros((1, 16, 16, 3), np.uint8))


def _tracker(name, work):
    if name != "flow":
        cfg = preset("fast", iterations=4, batch_size=64, cyc_after=2, rbb_after=2, checkpoint_every=2,
                     log_every=2, cl_points=32, cyc_points=32, seed=5, work_dir=str(work))
        return build_tracker(name, backend=load_backend("dsift", patch_size=8, stride=4), config=cfg,
                             progress=False)
    return build_tracker(name, progress=False)


@pytest.mark.parametrize("tracker", ["flow", "dino"])
def test_float_clip_tracks_like_its_uint8_version(tracker, clip, tmp_path):
    """Before: ``flow`` converted a float clip and ``dino`` refused it ("video frames must be uint8")."""
    want = _tracker(tracker, tmp_path / "u8").fit(clip).track(Q)
    got = _tracker(tracker, tmp_path / "f32").fit(_float(clip)).track(Q)
    np.testing.assert_array_equal(got.tracks, want.tracks)
    np.testing.assert_array_equal(got.visible, want.visible)


def test_a_refit_hashes_the_video_once(clip, tmp_path, monkeypatch):
    """Count the passes of a hash over the video's pixels during fits into the default work folder (keyed by
    the video's fingerprint; its stages by the content digest). The first fit computes both digests (both keys
    are kept as they were, so cached folders stay valid); a re-fit hashes once. Before: two passes on every fit
    (video_fingerprint for the folder, then array_digest in the preprocessing)."""
    monkeypatch.setenv("COSETTLE_CACHE", str(tmp_path / "cache"))
    passes = []
    real = {name: getattr(hashlib, name) for name in ("sha1", "sha256")}
    first = clip[0].tobytes()

    class Counting:
        def __init__(self, name, data=b""):
            self._h = real[name](data)

        def update(self, data):
            if bytes(memoryview(data).cast("B")[:len(first)]) == first:
                passes.append(1)
            self._h.update(data)

        def __getattr__(self, attr):
            return getattr(self._h, attr)

    for name in real:
        monkeypatch.setattr(hashlib, name, lambda data=b"", _n=name: Counting(_n, data))
    counts = []
    for _ in range(2):
        passes.clear()
        tr = _tracker("dino", tmp_path / "unused")
        tr.cfg.work_dir = None  # the default folder: keyed by the video
        tr.fit(clip)
        counts.append(len(passes))
    assert counts == [2, 1]
