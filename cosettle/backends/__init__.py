from .base import Features, FeatureBackend
from .projected import ProjectedBackend
from .registry import list_backends, load_backend, register_backend

__all__ = ["Features", "FeatureBackend", "ProjectedBackend", "list_backends", "load_backend",
           "register_backend"]
