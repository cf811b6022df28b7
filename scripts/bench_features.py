#!/usr/bin/env python
"""Benchmark feature extraction: frames/s and peak RSS, our backend vs a naive timm forward.

    python scripts/bench_features.py [--frames 8] [--rss-frames 50 200] [--out bench_features.json]

Every measurement runs in its own subprocess so that its peak RSS (ru_maxrss) is its own. Video:
DAVIS horsejump-high (854x480) from ../shared/data, resized to 476x854 by the backend; longer clips
for the RSS check repeat its 50 frames lazily (nothing is held in RAM but the current chunk).

* naive: timm ``forward_features`` (all blocks + final norm), one frame per call, fp32, every frame's
  output kept in a Python list -- how a quick script (and DINO-Tracker's extractor) does it;
* ours: ``TimmViTBackend`` (chunks of 4 frames, inference_mode, bf16 autocast where the CPU has it,
  stops after the chosen block), streamed into the fp16 on-disk cache.
Model: ViT-S/14 (dinov2_vits14 architecture) with random weights -- speed and memory do not depend on
the weight values, and no download is needed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from cosettle.cli import ArgumentParser  # one-line argparse errors

DAVIS = (Path(os.environ.get("COSETTLE_SHARED", REPO.parent / "shared")) / "data" / "davis480" / "horsejump-high"
         / "JPEGImages")  # COSETTLE_SHARED: the shared folder elsewhere (as for the tests)


class LoopedFrames:
    """``n`` frames cycling over a folder of JPEGs, decoded on access (bounded memory)."""

    def __init__(self, folder: Path, n: int):
        self.files = sorted(folder.glob("*.jpg"))
        if not self.files:
            raise SystemExit(f"no frames in {folder}: the benchmark needs ../shared/data")
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import imageio.v3 as iio

        return iio.imread(self.files[i % len(self.files)])


def worker(mode: str, stride: int, frames: int, layer: int | None, size=(476, 854)) -> dict:
    import torch

    from cosettle.provenance import peak_rss_mb

    torch.manual_seed(0)
    video = LoopedFrames(DAVIS, frames)
    if mode == "naive":
        import timm
        import torch.nn.functional as F

        model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, dynamic_img_size=True).eval()
        model.patch_embed.proj.stride = (stride, stride)
        model.patch_embed.strict_img_size = False
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        outs = []
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(frames):
                x = torch.from_numpy(video[i]).permute(2, 0, 1)[None].float() / 255
                x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
                outs.append(model.forward_features((x - mean) / std))
        seconds = time.perf_counter() - t0
    else:
        from cosettle import load_backend
        from cosettle.cache import FeatureCache

        backend = load_backend("dinov2_vits14", weights="random", stride=stride, layer=layer, resolution=tuple(size))
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            feats = FeatureCache(tmp).get_or_compute(backend, video)
            seconds = time.perf_counter() - t0
            shape = tuple(feats.features.shape)
            del feats
        outs = [shape]
    return {"mode": mode, "stride": stride, "frames": frames, "layer": layer, "seconds": round(seconds, 3),
            "frames_per_s": round(frames / seconds, 3), "peak_rss_mb": round(peak_rss_mb(), 1),
            "threads": torch.get_num_threads()}


def run_worker(mode, stride, frames, layer=None, size="854x476") -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--stride", str(stride), "--frames", str(frames),
           "--size", size]
    if layer is not None:
        cmd += ["--layer", str(layer)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"worker failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=8, help="frames for the speed comparison")
    p.add_argument("--rss-frames", type=int, nargs=2, default=[50, 200])
    p.add_argument("--strides", type=int, nargs="+", default=[14, 7])
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--size", default="854x476", help="WxH the model runs at (default: the reference's 854x476; "
                   "tests use a tiny one)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--stride", type=int, default=14, help=argparse.SUPPRESS)
    p.add_argument("--layer", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        w, h = (int(v) for v in args.size.lower().split("x"))
        print(json.dumps(worker(args.worker, args.stride, args.frames, args.layer, (h, w))))
        return
    import torch

    from cosettle.backends.timm_vit import cpu_bf16_supported

    report = {"model": "ViT-S/14 (dinov2_vits14 architecture, random weights)", "resolution": args.size,
              "cpu_count": os.cpu_count(), "torch": torch.__version__, "bf16_autocast": cpu_bf16_supported(),
              "speed": [], "rss": []}
    for s in args.strides:
        naive = run_worker("naive", s, args.frames, size=args.size)
        ours_full = run_worker("ours", s, args.frames, layer=-1, size=args.size)  # same depth as naive (all blocks)
        ours_default = run_worker("ours", s, args.frames, size=args.size)  # default block (2/3 depth)
        report["speed"].append({
            "stride": s, "naive": naive, "ours_all_blocks": ours_full, "ours_default_layer": ours_default,
            "speedup_all_blocks": round(ours_full["frames_per_s"] / naive["frames_per_s"], 2),
            "speedup_default_layer": round(ours_default["frames_per_s"] / naive["frames_per_s"], 2)})
    small, large = (run_worker("ours", 14, n, size=args.size) for n in args.rss_frames)
    report["rss"] = {"frames": args.rss_frames, "peak_rss_mb": [small["peak_rss_mb"], large["peak_rss_mb"]],
                     "ratio": round(large["peak_rss_mb"] / small["peak_rss_mb"], 3)}
    report["targets"] = {
        "speedup_stride14_ge_2.5": report["speed"][0]["speedup_all_blocks"] >= 2.5 if args.strides[0] == 14 else None,
        "rss_200_within_10pct_of_50": report["rss"]["ratio"] <= 1.10}
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
