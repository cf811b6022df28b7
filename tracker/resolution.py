"""The work resolution of a DINO-Tracker run, computed in one place for fitting, memory/time planning and
tools: the config's backend resolution, never upsampling a video smaller than it."""
from __future__ import annotations

import copy
import logging

from cosettle.backends.base import FeatureBackend

log = logging.getLogger(__name__)


def work_resolution(resolution, image_h: int, image_w: int):
    """The backend resolution the tracker uses: a short-side setting never upsamples a small video."""
    if isinstance(resolution, int) and min(image_h, image_w) <= resolution:
        return None
    return resolution


def with_resolution(backend: FeatureBackend, resolution) -> FeatureBackend:
    """``backend`` itself when it already works at ``resolution``, else a shallow copy that does.

    Wrapping backends (``ProjectedBackend``) take their geometry from ``.base``, so the copy goes down.
    The model weights are shared, never copied.
    """
    base = getattr(backend, "base", None)
    base_ok = not isinstance(base, FeatureBackend) or base.resolution == resolution
    if backend.resolution == resolution and base_ok:
        return backend
    out = copy.copy(backend)
    out.resolution = resolution
    if isinstance(base, FeatureBackend):
        out.base = with_resolution(base, resolution)
    log.info("backend %s at resolution %s (config)", backend.name, resolution)
    return out


def work_backend(backend: FeatureBackend, resolution, image_h: int, image_w: int) -> FeatureBackend:
    """The backend a run on an ``image_h x image_w`` video works with: ``backend`` itself when the config sets
    no resolution (its own), else a copy at the work resolution (the caller's object is left as it was)."""
    if resolution is None:
        return backend
    return with_resolution(backend, work_resolution(resolution, image_h, image_w))
