#!/usr/bin/env python
"""Train a Co-Settle projector on a frozen ViT.

    python scripts/train_projector.py --backend dinov2_vitb14 --data k400_train_frames.txt --out runs/b14
    torchrun --nproc_per_node 4 scripts/train_projector.py --backend dinov2_vitb14 --data LIST --out runs/b14

Re-running the same command resumes from OUT/checkpoints/last.pt. The result is
OUT/projector.safetensors, usable as load_backend("dinov2_vitb14+cosettle", projector=...).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cosettle.cli import ArgumentParser  # noqa: E402  (one-line argparse errors)

from cosettle.config import add_config_args, config_from_args  # noqa: E402
from cosettle.errors import cli_entry  # noqa: E402
from cosettle.provenance import close_file_logging, setup_logging  # noqa: E402
from cosettle.train import TrainConfig, train  # noqa: E402


@cli_entry
def main(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    add_config_args(parser, TrainConfig)
    args = parser.parse_args(argv)
    cfg = config_from_args(TrainConfig, args).validate()
    rank = int(os.environ.get("RANK", "0"))
    setup_logging(args.verbose, Path(cfg.out) / "train.log" if rank == 0 else None)
    try:
        hist = train(cfg)
    finally:
        close_file_logging()
    if rank == 0 and hist:
        print(f"done: {hist[-1]['step']} steps, final loss {hist[-1]['loss']:.4f}, "
              f"projector {Path(cfg.out) / 'projector.safetensors'}")
    return 0


if __name__ == "__main__":
    main()
