"""cosettle: image-to-video feature transfer for point tracking.

``from cosettle import FeatureBackend, load_backend`` -- see README.md and docs/
"""
from .backends import Features, FeatureBackend, ProjectedBackend, list_backends, load_backend, register_backend
from .errors import UserError
from .geometry import Geometry

__version__ = "0.1.0"
__all__ = ["Features", "FeatureBackend", "Geometry", "ProjectedBackend", "UserError", "list_backends",
           "load_backend", "register_backend"]
