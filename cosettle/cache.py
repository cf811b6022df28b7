"""On-disk feature cache: fp16 ``.npy`` written chunk by chunk, memory-mapped on read.

The key is a hash of everything that changes the features -- the backend's ``cache_fields()``
(name, weights identity, layer, stride, resolution, projection weights, ...), the resolved input
geometry and the video content (a hash of every decoded frame) -- so a changed setting or a changed
video can never be served stale features. DINO-Tracker's fixed ``dino_embed_video.pt`` name could.

Writing streams each chunk to the file as it is computed (never the whole video in RAM), into a temp
file renamed on success; a killed run leaves no half-written entry. The ``.json`` beside each entry
records the data file's blake2b digest, verified on every read: a truncated or corrupted entry costs
one log line and is recomputed, never served. Two processes asking for the same entry take turns
(``fcntl`` lock per key): the second waits and then reads the first one's result.

A projected backend (``NAME+cosettle``) is computed from its base's cache entry (made first if missing),
projected chunk by chunk: two projectors on one base extract the encoder once, not twice. Its input is
therefore the float16 base -- a difference from projecting the encoder's float32 output of ~1e-3 of the
range, under the float16 rounding of the stored result -- and the key says so (``projected_from``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .backends.base import FeatureBackend, Features
from .backends.projected import ProjectedBackend
from .frames import video_hw
from .geometry import Geometry
from .hashing import file_digest, json_digest, video_fingerprint  # noqa: F401 (re-exported)
from .io.atomic import atomic_path, write_json
from .io.lock import folder_lock

log = logging.getLogger(__name__)


def cache_home() -> Path:
    """Root of every cosettle cache: ``$COSETTLE_CACHE`` or ``~/.cache/cosettle``."""
    return Path(os.environ.get("COSETTLE_CACHE", Path.home() / ".cache" / "cosettle"))


def default_cache_dir() -> Path:
    return cache_home() / "features"


class FeatureCache:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def key(self, backend: FeatureBackend, video, geometry: Geometry | None = None,
            fingerprint: str | None = None) -> tuple[str, dict]:
        n, h, w = video_hw(video)
        geometry = geometry or backend.geometry(h, w)
        fields = {"backend": backend.cache_fields(), "geometry": geometry.to_dict(),
                  "video": fingerprint or video_fingerprint(video), "frames": n, "dtype": "float16"}
        if isinstance(backend, ProjectedBackend):
            fields["projected_from"] = "float16 base entry"
        return json_digest(fields, 32), fields

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.npy", self.root / f"{key}.json"

    def load(self, key: str, fields: dict) -> Features | None:
        data, meta = self.paths(key)
        if not (data.exists() and meta.exists()):
            return None
        try:
            stored = json.loads(meta.read_text())
        except json.JSONDecodeError:
            return None
        if json.dumps(stored.get("fields"), sort_keys=True, default=str) != json.dumps(fields, sort_keys=True, default=str):
            return None  # hash collision or a foreign file: recompute rather than serve it
        why = self._corrupt(data, stored)
        if why is not None:
            log.warning("feature cache entry %s is unusable (%s); recomputing", data, why)
            data.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            return None
        arr = np.load(data, mmap_mode="r")
        return Features(torch.from_numpy(arr) if arr.flags.writeable else _readonly_tensor(arr),
                        Geometry.from_dict(stored["geometry"]))

    @staticmethod
    def _corrupt(data: Path, stored: dict) -> str | None:
        want = stored.get("blake2b")
        if not want:
            return "no checksum (written by an older version)"
        try:
            if file_digest(data) != want:
                return "checksum mismatch (truncated or corrupt)"
        except OSError as err:
            return f"unreadable ({err.strerror})"
        return None

    def get_or_compute(self, backend: FeatureBackend, video, chunk_size: int | None = None,
                       progress: bool = False) -> Features:
        """Cached features (T, C, h, w) float16, memory-mapped; computed and stored on a miss."""
        n, h, w = video_hw(video)
        geom = backend.geometry(h, w)
        key, fields = self.key(backend, video, geom)
        with folder_lock(self.root, "feature cache entry", f".lock-{key}"):
            return self._get_or_compute(backend, video, chunk_size, progress, n, geom, key, fields)

    def _get_or_compute(self, backend, video, chunk_size, progress, n, geom, key, fields) -> Features:
        hit = self.load(key, fields)
        if hit is not None:
            log.info("feature cache hit %s (%s)", key, backend.name)
            return hit
        log.info("feature cache miss %s (%s): extracting %d frames", key, backend.name, n)
        data, meta = self.paths(key)
        shape = (n, backend.feat_dim, geom.grid_h, geom.grid_w)
        digest = hashlib.blake2b(digest_size=32)  # the same digest as hashing.file_digest, while writing
        meta.unlink(missing_ok=True)  # never an old meta (with its checksum) beside a new data file
        with atomic_path(data) as tmp:
            with open(tmp, "wb") as fh:
                head = _HashingWriter(fh, digest)
                np.lib.format.write_array_header_1_0(
                    head, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
                           "fortran_order": False, "shape": shape})
                written = 0
                for start, f in self._chunks(backend, video, chunk_size, progress):
                    head.write(f.to(torch.float16).numpy().tobytes())
                    written += f.shape[0]
            if written != n:
                raise RuntimeError(f"feature extraction wrote {written} of {n} frames")
        write_json(meta, {"fields": fields, "geometry": geom.to_dict(), "shape": list(shape),
                          "blake2b": digest.hexdigest()})
        return self.load(key, fields)

    def _chunks(self, backend, video, chunk_size, progress):
        """(start, float32 features) chunks of ``backend`` on ``video``; a projected backend's come from its
        base's cache entry (see the module doc)."""
        if not isinstance(backend, ProjectedBackend):
            yield from backend.iter_chunks(video, chunk_size, progress)
            return
        base = self.get_or_compute(backend.base, video, chunk_size, progress).features
        step = chunk_size or backend.default_chunk_size or 8
        for start in range(0, base.shape[0], step):
            with torch.no_grad():
                yield start, backend.project(base[start:start + step].float().to(backend.device)).cpu()


class _HashingWriter:
    """A file wrapper that feeds every written byte to a hash as well."""

    def __init__(self, fh, digest):
        self.fh, self.digest = fh, digest

    def write(self, data) -> int:
        self.digest.update(data)
        return self.fh.write(data)


def _readonly_tensor(arr: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # torch warns that the mmap is read-only; we never write to it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)
