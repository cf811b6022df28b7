#!/usr/bin/env python
"""Train a Co-Settle projector on any frozen backend (ViT, DINOv3, CNN, dsift).

    python scripts/train_projector.py --backend dinov2_vitb14 --data k400_train_frames.txt --out runs/b14
    torchrun --nproc_per_node 4 scripts/train_projector.py --backend dinov2_vitb14 --data LIST --out runs/b14

    python scripts/train_projector.py --backend dsift --data ../shared/data/davis480 --out /work/runs/dsift

PEA is used where the backend has position encodings (ViT: added, DINOv3: rotary), never on CNNs
or dsift. Re-running the same command resumes from OUT/checkpoints/last.pt. The result is
OUT/projector.safetensors, usable as load_backend("dinov2_vitb14+cosettle", projector=...).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from pathlib import Path

from cosettle.cli import ArgumentParser  # one-line argparse errors
from cosettle.config import add_config_args, config_from_args
from cosettle.errors import UserError, cli_entry
from cosettle.provenance import close_file_logging, setup_logging
from cosettle.train import TrainConfig, train


def _fix_help(parser: argparse.ArgumentParser) -> None:
    """Readable --help: metavars from the field types (not OPTIONAL), the test hook hidden."""
    hints = typing.get_type_hints(TrainConfig)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for action in parser._actions:
        if action.dest not in names:
            continue
        if action.dest == "kill_after_step":
            action.help = argparse.SUPPRESS  # fault injection for the resume tests
            continue
        tp = hints[action.dest]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if args else tp
        action.metavar = {bool: "BOOL", int: "N", float: "X", str: "TEXT", list: "PATH [PATH ...]"}.get(tp, "VALUE")


def _build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    add_config_args(parser, TrainConfig, skip=("trust_checkpoint",))
    parser.add_argument("--trust-checkpoint", dest="trust_checkpoint", action="store_true",
                        default=argparse.SUPPRESS,
                        help="allow pickled Python objects in encoder weight files (only for files you trust)")
    parser.add_argument("--allow-pickle", dest="trust_checkpoint", action="store_true",
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old name, kept as an alias
    _fix_help(parser)
    return parser


@cli_entry
def main(argv=None):
    args = _build_parser().parse_args(argv)
    cfg = config_from_args(TrainConfig, args).validate()
    rank = int(os.environ.get("RANK", "0"))
    out = Path(cfg.out)
    log_file = out / "train.log"
    fresh = {p: not p.exists() for p in (out, log_file)}  # what this run creates, removed on refusal
    setup_logging(args.verbose, log_file if rank == 0 else None)
    try:
        hist = train(cfg)
    except UserError:
        close_file_logging()
        if rank == 0 and fresh[log_file]:
            log_file.unlink(missing_ok=True)
            if fresh[out] and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
        raise
    finally:
        close_file_logging()
    if rank == 0 and hist:
        print(f"done: {hist[-1]['step']} steps, final loss {hist[-1]['loss']:.4f}, "
              f"projector {Path(cfg.out) / 'projector.safetensors'}")
    return 0


if __name__ == "__main__":
    main()
