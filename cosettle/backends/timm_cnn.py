"""CNN encoders (ResNet, ConvNeXt, EfficientNet, RegNet, ...) through timm ``features_only``.

* ``layer`` picks a feature stage (timm's ``feature_info`` index; negative counts from the end;
  default: the stride-8 stage if the model has one, else the last). timm builds the truncated
  network, so stages after the chosen one are never built or run.
* ``stride`` = the stage's reduction from ``feature_info``; ``offset`` (the input pixel at the centre
  of cell (0, 0)) is measured once per architecture/stage from the exact receptive-field support
  (a positive-weight copy of the network; see :func:`measure_offset`): 0 for ResNet
  (7x7/s2/p3 stem), (s - 1) / 2 for ConvNeXt (patchify stem).
* ``patch_size`` = stride: inputs are snapped to a multiple of the stride, so the grid is H/s x W/s.
* No absolute position encoding (``position_encoding = None``): Co-Settle trains without PEA on
  these -- the position shortcut PEA guards against does not exist (zero padding leaks a little
  position near the borders only).
"""
from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from .registry import register_timm_family, register_timm_names
from .timm_common import TimmBackend
from .weights import create_timm_model

log = logging.getLogger(__name__)

# curated names -> timm model names (pretrained tag included)
CNN_MODELS = {
    "resnet50": "resnet50.a1_in1k",
    "resnet18": "resnet18.a1_in1k",
    "convnext_tiny": "convnext_tiny.fb_in22k",
    "convnext_small": "convnext_small.fb_in22k",
    "efficientnet_b0": "efficientnet_b0.ra_in1k",
    "regnety_016": "regnety_016.tv2_in1k",
}

_OFFSETS: dict[tuple, float] = {}


def _cnn_filter(state, model):
    """timm-layout files for features_only models: keys are the plain model's (FeatureListNet keeps
    the module names), so only DDP/wrapper prefixes need stripping (done by read_state_dict)."""
    return state


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def measure_offset(model: nn.Module, stride: int, max_len: int = 4096, which: int = -1) -> float:
    """Input-pixel centre of output cell (0, 0) along x, from the exact receptive-field support.

    A float64 copy with every conv/linear weight set to 1/fan_in, biases 0 and normalisation layers
    replaced by identity keeps every activation positive, so the gradient of one output cell is > 0
    exactly on its receptive field (max pools become average pools of the same window). The centre of the support of a central cell minus stride*j is the
    offset. The input is widened until that support does not touch the border. ``which``: the model
    output (stage) to measure, ``stride`` its reduction.
    """
    probe = copy.deepcopy(model).double().eval()
    for name, mod in list(probe.named_modules()):
        if not name:
            continue
        repl = None
        if isinstance(mod, _NORMS) or type(mod).__name__.endswith(("Norm", "Norm2d", "NormAct2d")):
            # norm layers only: a name test ("Norm" in the name) also removed timm's ConvNormAct, i.e.
            # the convs themselves (regnety's measured offset was -96 once its SE no longer hid it)
            repl = nn.Identity()
        elif "SqueezeExcite" in type(mod).__name__ or type(mod).__name__.endswith(("SEModule", "SqueezeExcitation")):
            # a channel gate from a global pool: it rescales, it moves no pixel, but its gradient reaches
            # the whole input (efficientnet_b0 / regnety fell back to (s - 1)/2 instead of the true 0)
            repl = nn.Identity()
        elif isinstance(mod, nn.MaxPool2d):  # max routes the gradient to one input: use its average
            repl = nn.AvgPool2d(mod.kernel_size, mod.stride, mod.padding, ceil_mode=mod.ceil_mode)
        if repl is not None:
            parent, _, child = name.rpartition(".")
            setattr(probe.get_submodule(parent) if parent else probe, child, repl)
    with torch.no_grad():
        for mod in probe.modules():
            w = getattr(mod, "weight", None)
            if isinstance(w, nn.Parameter) and w.ndim >= 2:
                w.fill_(1.0 / max(1, w[0].numel()))
            elif isinstance(w, nn.Parameter):
                w.fill_(1.0)
            b = getattr(mod, "bias", None)
            if isinstance(b, nn.Parameter):
                b.zero_()
            for pname, p in mod.named_parameters(recurse=False):
                if pname not in ("weight", "bias"):
                    p.fill_(1.0)  # layer scale gammas etc.
    length = 16 * stride
    while length <= max_len:
        x = torch.ones(1, 3, stride, length, dtype=torch.float64, requires_grad=True)
        out = probe(x)[which]
        j = out.shape[-1] // 2
        out[..., j].sum().backward()
        support = (x.grad.abs().sum(dim=(0, 1, 2)) > 0).nonzero().flatten()
        lo, hi = int(support.min()), int(support.max())
        if lo > 0 and hi < length - 1:
            return (lo + hi) / 2 - stride * j
        length *= 2
    log.warning("receptive field wider than %d px: assuming the cell-centre offset (s - 1) / 2", max_len)
    return (stride - 1) / 2


def _truncate_after_stage(model: nn.Module) -> None:
    """timm's ``EfficientNetFeatures`` (efficientnet*, mobilenetv3, ...) builds and runs every block
    whatever ``out_indices`` is (FeatureListNet models are truncated by timm itself): drop the blocks
    after the last requested stage, so the stride-8 stage does not pay for the stride-32 ones (same
    output: those blocks only ran after the feature was taken)."""
    idx = getattr(model, "_stage_out_idx", None)
    blocks = getattr(model, "blocks", None)
    if not idx or not isinstance(blocks, nn.Sequential) or getattr(model, "feature_hooks", None) is not None:
        return
    last = max(idx)  # keys: block count; block i's output is taken when i + 1 is a key
    if 0 < last < len(blocks):
        model.blocks = blocks[:last]


@register_timm_family("cnn")
class TimmCNNBackend(TimmBackend):
    position_encoding = None

    def __init__(self, timm_name: str, *, name: str | None = None, layer: int | None = None,
                 weights: str | None = None, resolution=None, precision: str = "auto",
                 device: str | torch.device = "cpu", seed: int = 0, allow_pickle: bool = False,
                 chunk_size: int = 4, stride: int | None = None, norm: bool | None = None,
                 model_kwargs: dict | None = None, filter_fn=None, hypercolumn=None):
        import timm  # deferred: slow import

        self.timm_name = timm_name
        self.name = name or f"timm:{timm_name}"
        self.weights = "hub" if weights in (None, "hub", "pretrained") else weights
        self.seed = seed
        try:
            with torch.device("meta"):  # only the stage table: no weights allocated or initialised
                info = timm.create_model(timm_name.split(".")[0], pretrained=False, features_only=True,
                                         **(model_kwargs or {})).feature_info
        except Exception as err:  # no features_only support
            raise UserError(f"timm model {timm_name} cannot serve dense features ({type(err).__name__})",
                            "use a CNN with features_only support (resnet*, convnext*, efficientnet*, "
                            "regnet*), a ViT, or a DINOv3 model") from None
        reductions = [int(r) for r in info.reduction()]
        n = len(reductions)
        layer_given = layer is not None
        if layer is None:
            layer = reductions.index(8) if 8 in reductions else n - 1
        layer = int(layer)
        if not -n <= layer < n:
            raise UserError(f"stage {layer} out of range for {timm_name} ({n} feature stages, "
                            f"strides {reductions})", f"use --layer 0..{n - 1} or a negative index")
        self.layer = layer % n
        self.depth = n
        self.norm = False
        self.hypercolumn = parse_stages(hypercolumn, n, timm_name)
        if self.hypercolumn:
            if layer_given and self.layer != self.hypercolumn[0]:
                raise UserError(f"layer {self.layer} contradicts hypercolumn {hypercolumn} (its grid is stage "
                                f"{self.hypercolumn[0]}'s)", "drop --layer, or drop the hypercolumn for one stage")
            self.layer = self.hypercolumn[0]  # the grid is the finest stage's
        stages = self.hypercolumn or (self.layer,)
        kw = dict(features_only=True, out_indices=stages, **(model_kwargs or {}))
        model = create_timm_model(timm_name, self.weights, seed=seed, allow_pickle=allow_pickle,
                                  filter_fn=filter_fn or _cnn_filter, required="", **kw)
        _truncate_after_stage(model)
        self.model = model.eval().requires_grad_(False)
        self.stride = self.patch_size = reductions[self.layer]
        if stride is not None and int(stride) != self.stride:
            raise UserError(f"stage {self.layer} of {timm_name} has stride {self.stride}, not {stride}",
                            f"pick the stage with --layer (strides {reductions}) and drop --stride")
        self.feat_dim = int(sum(model.feature_info.channels()))
        self.stage_strides = [reductions[k] for k in stages]
        self.stage_offsets = []
        for i, k in enumerate(stages):
            key = (timm_name.split(".")[0], k, repr(sorted((model_kwargs or {}).items())))
            if key not in _OFFSETS:
                _OFFSETS[key] = measure_offset(self.model, reductions[k], which=i)
            self.stage_offsets.append(_OFFSETS[key])
        self.offset = self.stage_offsets[0]
        self._finish_init(resolution, precision, chunk_size, device)

    def forward_batch(self, x: torch.Tensor) -> torch.Tensor:
        gh, gw = x.shape[-2] // self.stride, x.shape[-1] // self.stride
        if not self.hypercolumn:
            f = self.model(x)[-1]
            return f[..., :gh, :gw]  # odd sizes: 'same'-padded convs can round up by one cell
        return self._hypercolumn(x, gh, gw)

    def _hypercolumn(self, x: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        """Every stage sampled at the finest stage's cell centres, each unit-normalised per cell and
        scaled by 1/sqrt(#stages) (equal share of a cosine, unit total norm), concatenated.

        The input is zero-padded bottom/right to a multiple of the coarsest stride, so every stage sees
        the input size its offset was measured at (TF 'same' padding shifts cells when a size is odd).
        A coarse stage is sampled bilinearly at the exact positions of the fine cell centres
        (``(offset0 + s0*i - offset_k) / s_k`` in its own cell units, clamped at the border)."""
        m = max(self.stage_strides)
        ph, pw = -x.shape[-2] % m, -x.shape[-1] % m
        outs = self.model(F.pad(x, (0, pw, 0, ph)) if ph or pw else x)
        s0, o0 = self.stride, self.offset
        scale = len(outs) ** -0.5
        parts = []
        for f, s, o in zip(outs, self.stage_strides, self.stage_offsets):
            f = f.float()
            if s == s0:
                f = f[..., :gh, :gw]
            else:
                hk, wk = f.shape[-2:]
                u = (o0 + s0 * torch.arange(gw, dtype=torch.float32, device=f.device) - o) / s
                v = (o0 + s0 * torch.arange(gh, dtype=torch.float32, device=f.device) - o) / s
                gx = (2 * u / max(wk - 1, 1) - 1).view(1, 1, gw).expand(1, gh, gw)
                gy = (2 * v / max(hk - 1, 1) - 1).view(1, gh, 1).expand(1, gh, gw)
                grid = torch.stack([gx, gy], dim=-1).expand(f.shape[0], gh, gw, 2)
                f = F.grid_sample(f, grid, mode="bilinear", padding_mode="border", align_corners=True)
            parts.append(F.normalize(f, dim=1) * scale)
        return torch.cat(parts, dim=1)

    def token_metadata(self):
        d = super().token_metadata()
        if self.hypercolumn:
            d["hypercolumn"] = list(self.hypercolumn)
        return d

    def cache_fields(self):
        d = super().cache_fields()
        if self.hypercolumn:
            d["hypercolumn"] = list(self.hypercolumn)
        return d


register_timm_names(CNN_MODELS, TimmCNNBackend, " (CNN, features_only stage)")


def parse_stages(spec, n: int, timm_name: str) -> tuple[int, ...] | None:
    """``"2+3"`` / ``(2, 3)`` / None -> sorted distinct stage indices (None: no hypercolumn)."""
    if spec is None or spec == "" or spec == ():
        return None
    try:
        items = [int(v) for v in (str(spec).replace(",", "+").split("+") if isinstance(spec, (str, int))
                                  else spec)]
    except (TypeError, ValueError):
        raise UserError(f"bad hypercolumn {spec!r}", "give stage indices joined by '+', e.g. hypercolumn=2+3") from None
    if any(not -n <= k < n for k in items):
        raise UserError(f"hypercolumn {spec!r}: stage out of range for {timm_name} ({n} feature stages)",
                        f"use stages 0..{n - 1}")
    stages = tuple(sorted({k % n for k in items}))
    return stages if len(stages) > 1 else None

