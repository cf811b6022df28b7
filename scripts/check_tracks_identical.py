#!/usr/bin/env python
"""Check that a refactor left the tracks bit-identical: record track digests before, compare after.

    python scripts/check_tracks_identical.py --record before.json     # on the old code
    python scripts/check_tracks_identical.py --compare before.json    # on the new code: exit 1 on any change

Runs, each in a fresh temporary work folder (no cache can hide a change), with one torch thread (bit-reproducible
fits), through the command-line tools exactly as a user calls them:

- ``demo``: ``scripts/track.py`` on the built-in demo clip (default tracker, fast preset);
- ``badja``: ``badja_eval/run.py`` on one labelled BADJA clip (default horsejump-high) with ``flow`` and the
  default ``dino-flow`` tracker, training shortened to ``--iterations`` so the check takes minutes, not an hour.

It digests every array of the demo's ``tracks.npz`` and of the evaluator's cached predictions (positions,
visibility, confidence: the raw float bytes, so a one-ulp change shows), plus the scored metrics.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


def npz_digests(path: Path, tmp_root: Path) -> dict[str, str]:
    """sha256 of each array's dtype, shape and raw bytes (the run's temporary folder, which the metadata
    names, replaced by a fixed string first)."""
    with np.load(path, allow_pickle=False) as z:
        out = {}
        for key in sorted(z.files):
            a = z[key]
            if a.dtype.kind == "U":
                a = np.char.replace(a, str(tmp_root), "<tmp>")
            a = np.ascontiguousarray(a)
            h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
            out[key] = h.hexdigest()[:16]
        return out


def run(cmd: list[str], env: dict[str, str]) -> None:
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"error: {cmd[1]} failed with exit status {proc.returncode} -- see its output above")


def measure(data_root: Path, sequence: str, iterations: int) -> dict:
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="check-tracks-") as tmp:
        tmp_path = Path(tmp)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COSETTLE_CACHE=str(tmp_path / "cache"))
        run([sys.executable, "scripts/track.py", "--out", str(tmp_path / "demo"), "--quiet", "--no-overlay",
             "--work-dir", str(tmp_path / "demo-work")], env)
        result["demo"] = npz_digests(tmp_path / "demo" / "tracks.npz", tmp_path)

        out = tmp_path / "badja"
        run([sys.executable, "badja_eval/run.py", "--data-root", str(data_root), "--sequences", sequence,
             "--trackers", "flow,dino-flow", "--tracker-args", f"dino-flow.iterations={iterations}",
             "--out", str(out), "--quiet"], env)
        for pred in sorted((out / "cache").glob("*/*.npz")):
            result[f"badja/{pred.parent.name}/{pred.stem}"] = npz_digests(pred, tmp_path)
        rows = json.loads((out / "results.json").read_text())
        result["badja/metrics"] = rows
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", type=Path, metavar="FILE.json", help="write the digests here")
    mode.add_argument("--compare", type=Path, metavar="FILE.json", help="compare against digests recorded before")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="shared data folder (default: %(default)s)")
    p.add_argument("--sequence", default="horsejump-high", help="BADJA clip (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=40, help="dino-flow training iterations (default: %(default)s)")
    args = p.parse_args(argv)
    if args.compare is not None and not args.compare.is_file():
        print(f"error: {args.compare} does not exist -- record it first with --record on the old code",
              file=sys.stderr)
        return 2
    if not (args.data_root / "davis480" / args.sequence).is_dir():
        print(f"error: no clip {args.sequence} under {args.data_root}/davis480 -- pass --data-root", file=sys.stderr)
        return 2
    current = measure(args.data_root, args.sequence, args.iterations)
    if args.record is not None:
        tmp = args.record.with_name(args.record.name + ".tmp")
        tmp.write_text(json.dumps(current, indent=1, sort_keys=True))
        os.replace(tmp, args.record)
        print(f"recorded {len(current)} digests in {args.record}")
        return 0
    before = json.loads(args.compare.read_text())
    changed = [k for k in sorted(set(before) | set(current)) if before.get(k) != current.get(k)]
    for key in changed:
        print(f"CHANGED {key}:\n  before {before.get(key)}\n  now    {current.get(key)}")
    print("bit-identical" if not changed else f"{len(changed)} of {len(before)} entries changed")
    return 1 if changed else 0


if __name__ == "__main__":
    raise SystemExit(main())
