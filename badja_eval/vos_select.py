"""Choose davis-vos settings on the tune half, report the choice on the held-out half (``scripts/vos_select.py``).

The split is the davis-vos one (:data:`badja_eval.davis_vos.HELD_OUT`: the 4 davis-masks held-out clips +
horsejump-high + cows; the other 12 clips are the tune half). For one backend and a small grid of propagation
settings (top-k, queue, neighbourhood, temperature; their product):

1. every setting runs on the **tune** clips; the setting with the highest tune J&F (mean over objects, x100)
   is chosen -- ties go to the earlier setting in grid order. :func:`choose` sees the tune scores only;
2. then the held-out clips run: the chosen setting's held-out J&F is the result (``--heldout all``, the
   default, scores every setting there too, for reference; ``--heldout chosen`` only the chosen one).

    python scripts/vos_select.py --backend dsift --backend-args resolution=240 --topk 1,5,10 --out runs/vos_select/dsift

Writes ``<out>/<setting>/`` per setting (the benchmark's layout: ``masks/<backend>/<clip>/*.png``,
``sequences/<backend>/<clip>.json``, ``contact/...``; one clip is the unit of resume: a re-run reuses every clip
whose JSON has the same fingerprint) and ``<out>/selection.json`` (atomically; also printed on stdout): both
halves' scores per setting, the choice, the protocol, versions and git SHA. Features come from the feature
cache, so they are computed once per clip, not once per setting.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from cosettle.backends.registry import load_backend
from cosettle.cache import FeatureCache
from cosettle.cli import ArgumentParser, device_arg  # one-line argparse errors
from cosettle.errors import UserError, cli_entry
from cosettle.io.atomic import check_output_dir, write_json
from cosettle.progress import tqdm
from cosettle.provenance import run_info, setup_logging

from . import davis_vos
from .davis_masks import chosen_clips
from .run import DEFAULT_DATA_ROOT, _csv, _kv  # the evaluator's own parsers for the shared flags
from .runner import slug

import torch  # noqa: E402 -- after cosettle, which sets torch's OpenMP wait policy first

GRID_KEYS = ("topk", "queue", "neighborhood", "temperature")
HALVES = ("tune", "heldout")
RULE = ("the setting with the highest J&F (mean over objects, x100) on the tune half; ties -> the earlier "
        "setting in grid order; held-out scores are computed after the choice and never read by it")


def _list(tp):
    def parse(text: str) -> list:
        try:
            vals = [tp(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {tp.__name__}s, got {text!r}") from None
        if not vals or len(set(vals)) != len(vals):
            raise argparse.ArgumentTypeError(f"expected distinct comma-separated values, got {text!r}")
        return vals
    return parse


def build_parser() -> argparse.ArgumentParser:
    d = davis_vos.VosSettings()
    p = ArgumentParser(prog="scripts/vos_select.py", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", required=True, help="one backend, e.g. dsift or NAME+cosettle:PROJ.safetensors")
    p.add_argument("--backend-args", type=_kv, default={}, help="backend keyword arguments, e.g. resolution=240")
    p.add_argument("--topk", type=_list(int), default=[d.topk], help=f"top-k values to try ({d.topk})")
    p.add_argument("--queue", type=_list(int), default=[d.queue], help=f"previous-frame counts to try ({d.queue})")
    p.add_argument("--neighborhood", type=_list(int), default=[d.neighborhood],
                   help=f"neighbourhood radii in cells to try, 0 = whole frame ({d.neighborhood})")
    p.add_argument("--temperature", type=_list(float), default=[d.temperature],
                   help=f"softmax temperatures to try ({d.temperature:g})")
    p.add_argument("--heldout", choices=("all", "chosen"), default="all",
                   help="score every setting on the held-out half (for reference) or only the chosen one")
    p.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT), help="folder holding davis480/<clip>/")
    p.add_argument("--sequences", type=_csv, default=[], help="restrict to these clips (each keeps its half)")
    p.add_argument("--max-frames", type=int, help="cut every clip to its first N frames (>= 3)")
    p.add_argument("--feature-cache", help="feature cache folder (default $COSETTLE_CACHE/features)")
    p.add_argument("--device", type=device_arg, help="torch device for the backend (default: its own)")
    p.add_argument("--out", help="output folder (default runs/vos_select/<backend>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def grid(a) -> list[davis_vos.VosSettings]:
    """The product of the value lists, in order (the first value of each list first)."""
    out = []
    for k, q, r, t in itertools.product(a.topk, a.queue, a.neighborhood, a.temperature):
        out.append(davis_vos.VosSettings(topk=k, queue=q, neighborhood=r, temperature=t,
                                         max_frames=a.max_frames).check())
    return out


def label(s: davis_vos.VosSettings) -> str:
    return f"topk{s.topk}-queue{s.queue}-nb{s.neighborhood}-t{s.temperature:g}"


def split_score(results: dict[str, dict]) -> dict:
    """{clip: evaluate_clip result} -> J&F, J, F (x100, mean over all objects, as the benchmark's mean row),
    the object and clip counts, and J&F per clip."""
    objs = [o for res in results.values() for o in res["objects"].values()]
    j = 100 * float(np.nanmean([o["J"]["mean"] for o in objs])) if objs else math.nan
    f = 100 * float(np.nanmean([o["F"]["mean"] for o in objs])) if objs else math.nan
    return {"jf": (j + f) / 2, "j": j, "f": f, "n_objects": len(objs), "clips": list(results),
            "per_clip_jf": {c: 100 * res["summary"]["JF"] for c, res in results.items()}}


def choose(tune: dict[str, dict]) -> str:
    """The label with the highest tune J&F; ties (and NaN) resolved towards the first in ``tune``'s order."""
    best, best_jf = None, -math.inf
    for lab, score in tune.items():
        jf = score["jf"]
        if best is None or (not math.isnan(jf) and jf > best_jf):
            best, best_jf = lab, (jf if not math.isnan(jf) else -math.inf)
    if best is None:
        raise UserError("no setting to choose from", "give at least one value per grid flag")
    return best


Evaluate = Callable[[davis_vos.VosSettings, str], dict]


def select(settings: list[davis_vos.VosSettings], evaluate: Evaluate, heldout: str = "all") -> dict:
    """Tune every setting, choose on the tune half alone, then score the held-out half. ``evaluate(settings,
    half)`` -> :func:`split_score`'s dict. Returns the selection record (without provenance)."""
    labels = [label(s) for s in settings]
    if len(set(labels)) != len(labels):
        raise UserError("the grid has repeated settings", "give each value once")
    tune = {lab: evaluate(s, "tune") for lab, s in zip(labels, settings)}
    chosen = choose(tune)  # only the tune scores exist at this point
    held = {lab: evaluate(s, "heldout") for lab, s in zip(labels, settings) if heldout == "all" or lab == chosen}
    rows = [{"label": lab, **{k: getattr(s, k) for k in GRID_KEYS}, "tune": tune[lab], "heldout": held.get(lab)}
            for lab, s in zip(labels, settings)]
    pick = settings[labels.index(chosen)]
    return {"chosen": chosen, "chosen_settings": asdict(pick), "tune_jf": tune[chosen]["jf"],
            "heldout_jf": held[chosen]["jf"], "heldout": held[chosen], "rule": RULE, "settings": rows}


class BenchmarkEvaluator:
    """``evaluate(settings, half)`` through the davis-vos benchmark: one folder per setting, per-clip resume."""

    def __init__(self, a, progress: bool = True):
        self.root, self.out = Path(a.data_root), Path(a.out)
        self.backend_label = a.backend
        kw = dict(a.backend_args)
        if a.device:
            kw["device"] = a.device
        self.backend = load_backend(a.backend, **kw)  # a bad name / projector: an error before any work
        self.cache = FeatureCache(a.feature_cache) if a.feature_cache else FeatureCache()
        self.max_frames, self.progress = a.max_frames, progress
        self.clips = {h: chosen_clips(self.root, a.sequences, h, davis_vos.available_clips, davis_vos.select_clips)
                      for h in HALVES}
        for h, names in self.clips.items():
            if not names:
                raise UserError(f"no davis-vos clips of the {h} half under {self.root / 'davis480'}"
                                + (f" among {','.join(a.sequences)}" if a.sequences else ""),
                                "both halves are needed: choose on tune, report on heldout (see --sequences)")
        self.calls: list[tuple[str, str]] = []  # (setting label, half), in order

    def folder(self, s: davis_vos.VosSettings) -> Path:
        return self.out / label(s)

    def __call__(self, s: davis_vos.VosSettings, half: str) -> dict:
        self.calls.append((label(s), half))
        results = {}
        bar = tqdm(self.clips[half], desc=f"{half} {label(s)}", unit="clip", disable=not self.progress)
        for name in bar:
            clip = davis_vos.load_clip(self.root, name, self.max_frames)
            with torch.inference_mode():
                results[name] = davis_vos.evaluate_clip(self.backend, clip, s, self.folder(s),
                                                        backend_label=self.backend_label, cache=self.cache)
        bar.close()
        return split_score(results)


@cli_entry
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    setup_logging(False, quiet=True)
    if a.out is None:
        a.out = str(Path("runs") / "vos_select" / slug(a.backend))
    check_output_dir(a.out)
    if not Path(a.data_root).is_dir():
        raise UserError(f"data root not found: {a.data_root}", "pass --data-root DIR (holding davis480/<clip>/)")
    settings = grid(a)
    ev = BenchmarkEvaluator(a, progress=not a.quiet)
    print(f"vos_select: {len(settings)} setting(s) x tune {len(ev.clips['tune'])} clip(s), then held-out "
          f"{len(ev.clips['heldout'])} clip(s) ({a.heldout}); backend {a.backend} {a.backend_args or ''}; "
          f"results under {a.out}", file=sys.stderr)
    record = select(settings, ev, a.heldout)
    pick = davis_vos.VosSettings(**record["chosen_settings"])
    record = {"backend": a.backend, "backend_args": a.backend_args,
              "grid": {k: getattr(a, k) for k in GRID_KEYS}, "halves": {h: ev.clips[h] for h in HALVES}, **record,
              "protocol": davis_vos.protocol(pick, len(ev.clips["heldout"]), "heldout", a.backend_args),
              "order": [f"{lab}:{h}" for lab, h in ev.calls], "run_info": run_info()}
    path = Path(a.out) / "selection.json"
    write_json(path, record)
    print(json.dumps(record, indent=1, default=str))
    print(f"chosen on tune: {record['chosen']} (tune J&F {record['tune_jf']:.2f}); held-out J&F "
          f"{record['heldout_jf']:.2f}; wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
