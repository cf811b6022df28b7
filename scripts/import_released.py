#!/usr/bin/env python
"""Convert one of the authors' released Co-Settle checkpoint.pth files into our projector file.

    python scripts/import_released.py ckpts/ours/dinov2+ours/checkpoint.pth --out projectors/dinov2_b16 \\
        --trust-checkpoint

writes OUT/projector.safetensors (+ .json) and, when the file holds the encoder, OUT/encoder.safetensors
(timm layout). Then: load_backend("+cosettle", projector="OUT") gives the paper's features.
The released files contain a pickled argparse.Namespace, so reading them needs --trust-checkpoint.
Without the encoder (--no-encoder) name the backend the projector belongs to with --base.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cosettle.cli import ArgumentParser  # one-line argparse errors
from cosettle.errors import cli_entry
from cosettle.provenance import setup_logging


@cli_entry
def main(argv=None):
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, help="the authors' checkpoint.pth")
    ap.add_argument("--out", type=Path, required=True, help="output folder or .safetensors path")
    ap.add_argument("--trust-checkpoint", action="store_true",
                    help="allow unpickling the file's Python objects (needed for the authors' files)")
    ap.add_argument("--no-encoder", action="store_true", help="extract only the projector")
    ap.add_argument("--base", default=None, help="backend name to record (default: the imported encoder)")
    ap.add_argument("--layer", type=int, default=-1, help="encoder block the projector reads (-1 = last)")
    ap.add_argument("--norm", choices=("auto", "true", "false"), default="auto",
                    help="whether the projector reads tokens after the encoder's final LayerNorm (auto: the "
                         "authors' eval path -- false for I-JEPA, true for the other encoders)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    from cosettle.projector_io import import_released

    path, meta = import_released(args.checkpoint, args.out, allow_pickle=args.trust_checkpoint,
                                 with_encoder=not args.no_encoder, base=args.base, layer=args.layer,
                                 norm=None if args.norm == "auto" else args.norm == "true")
    print(json.dumps({"projector": str(path), "base_backend": meta["base_backend"],
                      "encoder_weights": meta.get("encoder_weights"), "layer": meta["layer"],
                      "norm": meta["norm"]}))
    return 0


if __name__ == "__main__":
    main()
