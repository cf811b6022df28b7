from .base import Features, FeatureBackend
from .projected import ProjectedBackend
from .registry import list_backends, load_backend, register_backend

# importing the implementation modules registers their backends: each registers beside its class
# (@register_backend, like timm's @register_model; cosettle/backends/registry.py)
from . import dinov2_imgfocus, dsift, efficientnet_lite0, timm_cnn, timm_eva, timm_vit  # noqa: F401

__all__ = ["Features", "FeatureBackend", "ProjectedBackend", "list_backends", "load_backend",
           "register_backend"]
