"""The older import path of the DINO-Tracker class, kept for users and scripts that import it from here: the class
lives in ``tracker/dino/tracker.py`` with the rest of DINO-Tracker (``from tracker import Tracker`` is the public
path)."""
from __future__ import annotations

from .dino.tracker import PREPROCESS_LOCK, Tracker, cache_root, training_key  # noqa: F401

__all__ = ["PREPROCESS_LOCK", "Tracker", "cache_root", "training_key"]
