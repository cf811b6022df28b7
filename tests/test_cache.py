import json

import numpy as np
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
    files = sorted(p.name for p in tmp_path.iterdir())
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
