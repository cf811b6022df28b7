#!/usr/bin/env python
"""One command per backend: train its Co-Settle projector on the 16 mask-only DAVIS clips (never on
horsejump-high or cows; skipped when the projector exists, resumed when a run was killed), then run the
davis-vos benchmark with base and +cosettle on the clips, gain columns included. Both steps resume.

    python scripts/vos_gain.py --backend dsift --out runs/vos --backend-args resolution=240 \\
        --train-args "--epochs 1 --warmup-epochs 0.25"
    python scripts/vos_gain.py --backend dinov2_vits14_imgfocus --out runs/vos --backend-args stride=14 \\
        --train-args "--epochs 1 --warmup-epochs 0.25"      # the patch grid (the backend's default stride is 7)
    python scripts/vos_gain.py --backend dinov2_vits14 --projector P.safetensors --out runs/vos   # no training

The backend arguments that also configure the projector's training (stride, layer, weights, norm: see
:data:`TRAIN_KEYS`) go to both steps, so that the projector is trained on the grid and tokens it is evaluated
on; the same flag with another value in --train-args is an error. resolution and the rest go to davis-vos only.

Writes <out>/train16.txt (the training list), <out>/proj_<backend>/ (the projector run) and <out>/vos_<backend>/
(the davis-vos output folder). Each step's command is printed before it runs.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from badja_eval.davis_masks import CLIPS as MASK_ONLY_CLIPS
from badja_eval.run import DEFAULT_DATA_ROOT, _kv
from cosettle.cli import ArgumentParser  # one-line argparse errors
from cosettle.errors import UserError, cli_entry

REPO = Path(__file__).resolve().parents[1]
# --backend-args keys that are also TrainConfig fields (cosettle/train/config.py): passed to the training too
TRAIN_KEYS = ("stride", "layer", "weights", "norm")


def build_parser():
    p = ArgumentParser(prog="scripts/vos_gain.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", required=True, help="base backend name, e.g. dsift, efficientnet_lite0")
    p.add_argument("--out", default="runs/vos", help="folder for the list, the projector and the results")
    p.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    p.add_argument("--projector", help="an existing projector file (no training)")
    p.add_argument("--train-args", default="", help="extra train_projector.py arguments, one quoted string")
    p.add_argument("--backend-args", default="",
                   help="davis-vos --backend-args, e.g. resolution=240 or stride=14; stride, layer, weights and norm "
                        "also go to the projector's training")
    p.add_argument("--split", default="all", choices=("all", "tune", "heldout"))
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    return p


def train_flags(backend_args: str, train_args: list[str]) -> list[str]:
    """The train_projector.py flags for the :data:`TRAIN_KEYS` among ``backend_args`` (``k=v,...``), checked
    against the same flags in ``train_args`` (the same value: not repeated; another: a UserError)."""
    try:
        kv = _kv(backend_args) if backend_args else {}
    except Exception as err:  # argparse.ArgumentTypeError: one line
        raise UserError(f"bad --backend-args {backend_args!r}: {err}", "use KEY=VALUE,KEY=VALUE") from None
    given = {}
    for i, a in enumerate(train_args):
        flag, eq, val = a.partition("=")
        if flag in {f"--{k}" for k in TRAIN_KEYS}:
            given[flag[2:]] = val if eq else (train_args[i + 1] if i + 1 < len(train_args) else "")
    out = []
    for key in TRAIN_KEYS:
        if key not in kv:
            continue
        val = kv[key]
        text = str(val).lower() if isinstance(val, bool) else str(val)
        if key in given:
            if given[key].lower() != text.lower():
                raise UserError(f"--backend-args {key}={text} but --train-args --{key} {given[key]}: the projector "
                                "would be trained on other tokens than the ones it is evaluated on",
                                f"give {key} once, in --backend-args")
            continue
        out += [f"--{key}", text]
    return out


def _run(cmd: list[str], dry: bool) -> None:
    print("$ " + shlex.join(cmd), flush=True)
    if not dry:
        rc = subprocess.run(cmd, cwd=REPO).returncode
        if rc:
            raise UserError(f"{Path(cmd[1]).name} exited with status {rc}", "see its messages above; re-run to resume")


@cli_entry
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    out, root = Path(a.out).resolve(), Path(a.data_root).resolve()
    clips = [root / "davis480" / c / "JPEGImages" for c in MASK_ONLY_CLIPS]
    missing = [str(c) for c in clips if not c.is_dir()]
    if missing:
        raise UserError(f"training clips missing under {root}: {missing[0]} ...", "pass --data-root DIR")
    train_args = shlex.split(a.train_args)
    extra_train = train_flags(a.backend_args, train_args)  # checked before any work
    projector = Path(a.projector).resolve() if a.projector else out / f"proj_{a.backend}" / "projector.safetensors"
    if a.projector is None and not projector.is_file():
        lst = out / "train16.txt"
        if not a.dry_run:
            out.mkdir(parents=True, exist_ok=True)
            lst.write_text("".join(f"{c}\n" for c in clips))
        _run([sys.executable, str(REPO / "scripts" / "train_projector.py"), "--backend", a.backend, "--data", str(lst),
              "--out", str(projector.parent), "--progress", "false", *extra_train, *train_args], a.dry_run)
    elif not projector.is_file():
        raise UserError(f"projector not found: {projector}", "check --projector")
    cmd = [sys.executable, str(REPO / "badja_eval" / "run.py"), "--benchmark", "davis-vos", "--data-root", str(root),
           "--split", a.split, "--backends", f"{a.backend},{a.backend}+cosettle:{projector}",
           "--out", str(out / f"vos_{a.backend}")]
    if a.backend_args:
        cmd += ["--backend-args", a.backend_args]
    _run(cmd, a.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
