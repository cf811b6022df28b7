"""DINO-Tracker on any FeatureBackend, plus the static / flow / features baselines."""
from __future__ import annotations

from cosettle.io.tracks import TrackResult

from .base import PointTracker

TRACKERS = ("dino-flow", "dino", "flow", "features", "static")


def build_tracker(name: str, backend=None, config=None, progress: bool = True, **kwargs) -> PointTracker:
    """Create a tracker by name: ``dino`` (needs a backend), ``features`` (needs a backend),
    ``flow`` or ``static``. ``config``: the tracker's config dataclass (or None for defaults);
    ``progress``: show tqdm bars."""
    from cosettle.errors import UserError

    if name == "static":
        from .baselines import StaticTracker

        return StaticTracker()
    if name == "flow":
        from .baselines import FlowTracker

        return FlowTracker(config=config, progress=progress, **kwargs)
    if name == "features":
        from .baselines import FeatureTracker

        if backend is None:
            raise UserError("the 'features' tracker needs a backend", "pass --backend NAME")
        return FeatureTracker(backend, config=config, progress=progress, **kwargs)
    if name in ("dino", "dino-flow"):
        from .api import Tracker
        from .fusion import FlowGuidedTracker

        if backend is None:
            raise UserError(f"the {name!r} tracker needs a backend", "pass --backend NAME")
        cls = Tracker if name == "dino" else FlowGuidedTracker
        return cls(backend, config, progress=progress, **kwargs)
    raise UserError(f"unknown tracker {name!r}", f"choose one of {', '.join(TRACKERS)}")


__all__ = ["PointTracker", "TrackResult", "TRACKERS", "build_tracker"]
