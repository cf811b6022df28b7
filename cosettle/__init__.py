"""cosettle: image-to-video feature transfer for point tracking.

``from cosettle import FeatureBackend, load_backend, read_video`` -- see README.md and docs/
"""
import logging as _logging
import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    # before torch loads its OpenMP runtime (which reads this once, at load): idle OpenMP threads sleep instead of
    # spinning. Set here, the package every import path goes through first: set in ``tracker`` only, the README's
    # ``from cosettle import ...`` loaded torch before it and Tracker.fit ran 2x slower than the CLI on 2 shared
    # cores (docs/tracking-cli.md#the-python-api-and-the-cli-fit-at-the-same-speed). A user's setting wins;
    # results do not change.
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
elif "OMP_WAIT_POLICY" not in _os.environ:
    _logging.getLogger(__name__).warning(
        "torch was imported before cosettle, so its idle OpenMP threads spin (fits ran 2-3.9x slower on 2 shared "
        "cores) -- import cosettle or tracker before torch, or set OMP_WAIT_POLICY=PASSIVE in the environment")

from .backends import (Features, FeatureBackend, ProjectedBackend, list_backends, load_backend,  # noqa: E402
                       register_backend)
from .errors import UserError  # noqa: E402
from .geometry import Geometry  # noqa: E402
from .io.video import read_video  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Features", "FeatureBackend", "Geometry", "ProjectedBackend", "UserError", "list_backends",
           "load_backend", "read_video", "register_backend"]
