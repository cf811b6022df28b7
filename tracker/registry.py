"""Tracker registry, like the backend registry: ``register_tracker`` names a factory once, and every CLI, the
evaluator, the benchmarks and ``--help`` read the names, summaries and needs from here (nothing else lists them).

    @register_tracker("flow", summary="chained DIS optical flow", rank=30)
    def _build(backend, config, progress, **kwargs):
        return FlowTracker(config=config, progress=progress, **kwargs)

The project's trackers register when ``tracker`` is imported (``tracker/__init__.py`` imports their modules).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from cosettle.errors import UserError

from .base import PointTracker


@dataclass(frozen=True)
class TrackerEntry:
    name: str
    factory: Callable[..., PointTracker]  # factory(backend, config, progress, **kwargs) -> PointTracker
    summary: str                           # one line for --help
    needs_backend: bool                    # runs on a FeatureBackend (the evaluator pairs it with --backends)
    dino_config: bool                      # configured by a TrackerConfig preset (fast / paper)
    config_class: type | None              # else: its config dataclass (None: it takes no settings)
    rank: int                              # listing order (the default tracker first)


_REGISTRY: dict[str, TrackerEntry] = {}


def register_tracker(name: str, *, summary: str, needs_backend: bool = False, dino_config: bool = False,
                     config_class: type | None = None, rank: int = 100) -> Callable:
    """Decorator registering ``factory(backend, config, progress, **kwargs)`` under ``name``."""

    def deco(factory: Callable[..., PointTracker]) -> Callable[..., PointTracker]:
        old = _REGISTRY.get(name)
        if old is not None and old.factory is not factory:
            raise ValueError(f"tracker {name!r} is already registered (by {old.factory.__module__})")
        _REGISTRY[name] = TrackerEntry(name, factory, summary, needs_backend, dino_config, config_class, rank)
        return factory

    return deco


def tracker_names() -> list[str]:
    """Registered tracker names, the default first."""
    return [e.name for e in sorted(_REGISTRY.values(), key=lambda e: (e.rank, e.name))]


def tracker_entry(name: str) -> TrackerEntry:
    if name not in _REGISTRY:
        raise UserError(f"unknown tracker {name!r}", f"choose one of {', '.join(tracker_names())}")
    return _REGISTRY[name]


def trackers_help() -> str:
    """``name: summary; ...`` of every registered tracker, for ``--help``."""
    return "; ".join(f"{n}: {_REGISTRY[n].summary}" for n in tracker_names())


def build_tracker(name: str, backend=None, config=None, progress: bool = True, **kwargs) -> PointTracker:
    """Create a registered tracker. ``backend``: a FeatureBackend (needed by ``dino-flow``, ``dino`` and
    ``features``); ``config``: the tracker's config dataclass (None: its defaults); ``progress``: tqdm bars."""
    entry = tracker_entry(name)
    if entry.needs_backend and backend is None:
        raise UserError(f"the {name!r} tracker needs a backend", "pass --backend NAME")
    return entry.factory(backend, config, progress, **kwargs)
