"""DAVIS semi-supervised video object segmentation by frozen-feature label propagation (``--benchmark davis-vos``).

Per backend and clip: features from the project's feature cache (:class:`cosettle.cache.FeatureCache`, read one
frame at a time from the memory-mapped entry), the first frame's annotation given, every later frame's labels
propagated (``badja_eval/vos_propagation.py``: DINO's protocol), masks written as indexed PNGs in the DAVIS
layout, scored with the DAVIS 2017 J and F (``badja_eval/vos_metrics.py``). Rows: one per object
(``<sequence>_<id>``, the official per-sequence naming), the official mean over all objects, and a mean per split.

Clips: the 18 of ``../shared/data/davis480`` -- the 16 mask-only DAVIS-2016 clips of the davis-masks benchmark
plus horsejump-high and cows. Split: ``tune`` = the davis-masks tune clips (choose settings there),
``heldout`` = the davis-masks held-out clips + horsejump-high + cows (report there). horsejump-high and cows
are held out because no projector is ever trained on them (the projectors of docs/evaluation.md are trained on
the 16 mask-only clips), so the held-out half holds clips unseen by every step.

Python API::

    from badja_eval.davis_vos import VosSettings, evaluate_clip
    res = evaluate_clip(backend, clip, VosSettings(), out_dir)     # one clip: J, F per object + files
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from cosettle.backends.registry import load_backend
from cosettle.cache import FeatureCache
from cosettle.errors import UserError
from cosettle.io.atomic import write_json
from cosettle.io.masks import read_labels
from cosettle.io.video import read_video
from cosettle.progress import tqdm

from . import vos_io
from .davis_masks import CLIPS as MASK_CLIPS, HELD_OUT as MASK_HELD_OUT, chosen_clips, clip_dir
from .report import MEAN, build_rows, format_table, write_report
from .runner import Method, slug
from .vos_metrics import BOUND_TH, VOID, frame_scores, object_ids, scored_frames, statistics, summarize
from .vos_propagation import PropagationConfig, propagate_clip

log = logging.getLogger(__name__)

CLIPS = (*MASK_CLIPS, "horsejump-high", "cows")
HELD_OUT = (*MASK_HELD_OUT, "horsejump-high", "cows")
SPLITS = ("all", "tune", "heldout")
TRACKER = "labelprop"  # the 'tracker' column of the result tables
METRICS = ("jf", "j", "f")
HEADERS = {"jf": "J&F", "j": "J", "f": "F", "gain_jf": "ΔJ&F", "gain_j": "ΔJ", "gain_f": "ΔF"}
RESULT_VERSION = 1  # bump when a change alters the per-sequence results


@dataclass(frozen=True)
class VosSettings:
    """Benchmark settings (propagation defaults: DINO's ``eval_video_segmentation.py``)."""

    topk: int = 5
    queue: int = 7
    neighborhood: int = 12
    temperature: float = 0.1
    bound_th: float = BOUND_TH
    max_frames: int | None = None
    contact_frames: int = 4

    def propagation(self) -> PropagationConfig:
        return PropagationConfig(topk=self.topk, n_last=self.queue, radius=self.neighborhood,
                                 temperature=self.temperature).check()

    def check(self) -> "VosSettings":
        self.propagation()
        if self.max_frames is not None and self.max_frames < 3:
            raise UserError(f"--max-frames must be >= 3 for davis-vos, got {self.max_frames}",
                            "the first and last frames are not scored")
        return self


@dataclass
class VosClip:
    """One clip: frame files and annotation files (every frame's, for scoring)."""

    name: str
    frame_dir: Path
    frame_paths: list[Path]
    mask_paths: list[Path]

    @property
    def num_frames(self) -> int:
        return len(self.frame_paths)

    def content(self) -> str:
        text = ";".join(f"{p.name}:{p.stat().st_size}" for p in self.frame_paths + self.mask_paths)
        return hashlib.sha1(text.encode()).hexdigest()


def load_clip(root: str | Path, name: str, max_frames: int | None = None) -> VosClip:
    """``davis480/<name>/JPEGImages/*.jpg`` with ``Annotations/<stem>.png`` for each frame."""
    d = clip_dir(root, name)
    frames = sorted((d / "JPEGImages").glob("*.jpg"))
    if not frames:
        raise UserError(f"no frames for clip {name!r}: expected {d}/JPEGImages/00000.jpg ...",
                        "check --data-root / --sequences")
    if max_frames is not None:
        frames = frames[:max_frames]
    masks = [d / "Annotations" / f"{p.stem}.png" for p in frames]
    missing = [m for m in masks if not m.is_file()]
    if missing:
        raise UserError(f"missing annotation {missing[0]} ({len(missing)} in all)",
                        f"clip {name!r} needs an annotation PNG for every frame")
    if len(frames) < 3:
        raise UserError(f"clip {name!r} has {len(frames)} frame(s)", "need at least 3 (check --max-frames)")
    return VosClip(name, d / "JPEGImages", frames, masks)


def available_clips(root: str | Path) -> list[str]:
    return [c for c in CLIPS if (clip_dir(root, c) / "JPEGImages").is_dir()
            and (clip_dir(root, c) / "Annotations").is_dir()]


def select_clips(names: list[str], split: str) -> list[str]:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}", f"choose from {', '.join(SPLITS)}")
    if split == "all":
        return list(names)
    return [n for n in names if (n in HELD_OUT) == (split == "heldout")]


def read_annotation(path: Path) -> np.ndarray:
    """(H, W) uint8 object indices with void (255) as background (as the DAVIS evaluation counts it)."""
    lab = read_labels(path, "annotation")
    return np.where(lab == VOID, 0, lab).astype(np.uint8)


# ------------------------------------------------------------------------------------------- one clip
def fingerprint(backend, clip: VosClip, settings: VosSettings) -> str:
    """What determines a clip's result: the backend's cache fields, the clip's files, the settings."""
    text = json.dumps({"v": RESULT_VERSION, "backend": backend.cache_fields(), "clip": clip.name,
                       "content": clip.content(), "settings": asdict(settings)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def clip_paths(out: str | Path, backend_label: str, name: str) -> dict[str, Path]:
    b = slug(backend_label)
    out = Path(out)
    return {"masks": out / "masks" / b / name, "json": out / "sequences" / b / f"{name}.json",
            "csv": out / "sequences" / b / f"{name}.csv", "contact": out / "contact" / b / f"{name}.png"}


def load_done(paths: dict[str, Path], fp: str) -> dict | None:
    """The stored result of a clip when its JSON exists with this fingerprint (else None: compute)."""
    if not paths["json"].is_file():
        return None
    try:
        data = json.loads(paths["json"].read_text())
    except (OSError, json.JSONDecodeError) as err:
        log.warning("ignoring unreadable %s (%s)", paths["json"], err)
        return None
    if data.get("fingerprint") != fp or not paths["masks"].is_dir():
        return None
    return data


def evaluate_clip(backend, clip: VosClip, settings: VosSettings, out: str | Path, backend_label: str | None = None,
                  cache: FeatureCache | None = None, progress: bool = False) -> dict:
    """Propagate frame 0's annotation through ``clip`` with ``backend``'s features, write the masks, the
    per-sequence CSV/JSON and the contact sheet under ``out``, and return the JSON's content. A clip already
    done with the same fingerprint is read back, not recomputed."""
    settings = settings.check()
    label = backend_label or backend.name
    paths = clip_paths(out, label, clip.name)
    fp = fingerprint(backend, clip, settings)
    done = load_done(paths, fp)
    if done is not None:
        log.info("%s / %s: done before (%s); skipped", label, clip.name, paths["json"])
        return done
    video = read_video(clip.frame_dir, max_frames=clip.num_frames)
    feats = (cache or FeatureCache()).get_or_compute(backend, video, progress=progress)
    T = clip.num_frames
    if feats.features.shape[0] != T:
        raise RuntimeError(f"{clip.name}: {feats.features.shape[0]} feature frames for {T} frames")
    labels0 = read_annotation(clip.mask_paths[0])
    ids = object_ids(labels0)
    if not ids:
        raise UserError(f"clip {clip.name!r}: the first annotation {clip.mask_paths[0]} has no object",
                        "the semi-supervised protocol needs the objects in frame 0")
    if labels0.shape != (video.height, video.width):
        raise UserError(f"annotation {clip.mask_paths[0]} is {labels0.shape}, the frames {video.height}x{video.width}",
                        "annotations must have the frames' size")
    scored = set(scored_frames(T))
    per_obj = {f"{clip.name}_{k}": {"J": [], "F": []} for k in ids}
    show = set(vos_io.contact_indices(T, settings.contact_frames))
    tiles = []
    writer = vos_io.MaskWriter(paths["masks"])
    try:
        writer.write(0, labels0)  # the given first frame (ref: imwrite_indexed(00000.png, seg_ori))
        if 0 in show:
            tiles.append((0, vos_io.overlay(video[0], labels0, labels0)))
        frames = (feats.features[t].float() for t in range(T))
        preds = propagate_clip(frames, labels0, feats.geometry, settings.propagation())
        bar = tqdm(preds, total=T - 1, desc=f"{label} {clip.name}", unit="frame", disable=not progress, leave=False)
        for t, pred in enumerate(bar, start=1):
            writer.write(t, pred)
            if t in scored or t in show:
                gt = read_annotation(clip.mask_paths[t])
                if t in scored:
                    for k, (j, f) in frame_scores(pred, gt, ids, settings.bound_th).items():
                        per_obj[f"{clip.name}_{k}"]["J"].append(j)
                        per_obj[f"{clip.name}_{k}"]["F"].append(f)
                if t in show:
                    tiles.append((t, vos_io.overlay(video[t], pred, gt)))
        bar.close()
        writer.commit()
    finally:
        writer.discard()
    frames_scored = sorted(scored)
    vos_io.write_png(paths["contact"], vos_io.contact_sheet(
        tiles, f"{clip.name} | {label} | prediction (tint) over image, GT outline (white)"))
    vos_io.write_csv(paths["csv"], vos_io.per_frame_csv(frames_scored, per_obj))
    objects = {}
    for name, vals in per_obj.items():
        js, fs = statistics(vals["J"]), statistics(vals["F"])
        objects[name] = {"J": js, "F": fs, "JF": (js["mean"] + fs["mean"]) / 2}
    result = {"sequence": clip.name, "backend": label, "fingerprint": fp, "num_frames": T,
              "scored_frames": [frames_scored[0], frames_scored[-1]] if frames_scored else [],
              "grid_hw": [feats.geometry.grid_h, feats.geometry.grid_w],
              "input_hw": [feats.geometry.input_h, feats.geometry.input_w],
              "settings": asdict(settings), "objects": objects, "per_frame": per_obj,
              "summary": summarize(per_obj),
              "note": "fractions in [0, 1]; J, F per object over frames 1..T-2 (DAVIS 2017 semi-supervised)"}
    write_json(paths["json"], result)  # last: its presence marks the clip as done
    return result


# ------------------------------------------------------------------------------------------- benchmark
def settings_from(cfg) -> VosSettings:
    return VosSettings(topk=cfg.topk, queue=cfg.queue, neighborhood=cfg.neighborhood,
                       max_frames=cfg.max_frames).check()


def clip_names(cfg) -> list[str]:
    root = Path(cfg.data_root)
    names = chosen_clips(root, cfg.sequences, cfg.split, available_clips, select_clips)  # this module's clips
    if not names:
        raise UserError(f"no DAVIS clips of split {cfg.split!r} under {root / 'davis480'}",
                        "expected davis480/<clip>/{JPEGImages,Annotations} (see docs/evaluation.md)")
    return names


def object_scores(results: dict[tuple[str, str], dict]) -> dict[tuple[str, str], dict]:
    """{(object name, method label): {jf, j, f} x100, count = frames scored} from the per-clip results keyed
    (clip, backend)."""
    out = {}
    for (_, backend), res in results.items():
        for name, o in res["objects"].items():
            out[(name, Method(TRACKER, backend).label)] = {"j": 100 * o["J"]["mean"], "f": 100 * o["F"]["mean"],
                                                            "jf": 100 * o["JF"],
                                                            "count": len(res["per_frame"][name]["J"])}
    return out


def table_rows(results: dict, names: list[str], methods: list[Method]) -> list[dict]:
    """Rows per object, the official mean over all objects, and a mean per split (when both are present)."""
    scores = object_scores(results)
    objects = list(dict.fromkeys(o for o, _ in scores))
    rows = build_rows(scores, objects, methods, METRICS)
    seq_of = {o: o.rsplit("_", 1)[0] for o in objects}
    for split in ("tune", "heldout"):
        part = select_clips(names, split)
        if not part or len(part) == len(names):
            continue
        objs = [o for o in objects if seq_of[o] in part]
        rows += [{**r, "sequence": f"{MEAN}[{split}]"} for r in build_rows(scores, objs, methods, METRICS)
                 if r["sequence"] == MEAN]
    return rows


def protocol(settings: VosSettings, n_clips: int, split: str, backend_args: dict) -> str:
    cut = f"first {settings.max_frames} frames" if settings.max_frames else "whole clips"
    args = f"; backend args {backend_args}" if backend_args else ""
    return (f"DAVIS VOS label propagation ({split} split, {cut}{args}): frame-0 annotation given; each later frame "
            f"from the top-{settings.topk} cosine neighbours (weights exp(sim/{settings.temperature:g})) among "
            f"frame 0 + the last {settings.queue} frames, within ±{settings.neighborhood} cells, at the backend's "
            f"grid; J = region IoU, F = boundary F at {settings.bound_th:g} x diagonal; frames 1..T-2; "
            f"mean over objects of {n_clips} clip(s); x100")


def run(cfg, progress: bool = True) -> int:
    """``badja_eval/run.py --benchmark davis-vos``: every backend over every clip, then the report."""
    settings = settings_from(cfg)
    names = clip_names(cfg)
    root = Path(cfg.data_root)
    clips = [load_clip(root, n, settings.max_frames) for n in names]
    out = Path(cfg.out)
    cache = FeatureCache(cfg.feature_cache) if cfg.feature_cache else FeatureCache()
    kw = dict(cfg.backend_args)
    if cfg.device:
        kw["device"] = cfg.device
    backends = {b: load_backend(b, **kw) for b in cfg.backends}  # fail fast on a bad name / projector file
    methods = [Method(TRACKER, b) for b in cfg.backends]
    print(f"davis-vos: {len(clips)} clip(s) x {len(backends)} backend(s) ({', '.join(backends)}); "
          f"features cached in {cache.root}; per-clip results in {out / 'sequences'} (re-run resumes)")
    results = {}
    jobs = [(b, c) for b in backends for c in clips]
    bar = tqdm(jobs, desc="davis-vos", unit="clip", disable=not progress)
    for b, clip in bar:
        bar.set_postfix_str(f"{b} {clip.name}"[:60])
        with torch.inference_mode():
            results[(clip.name, b)] = evaluate_clip(backends[b], clip, settings, out, backend_label=b,
                                                    cache=cache, progress=progress)
    bar.close()
    rows = table_rows(results, names, methods)
    proto = protocol(settings, len(clips), cfg.split, cfg.backend_args)
    print(proto)
    print(format_table(rows, METRICS, HEADERS))
    per_video = {f"{name}|{TRACKER}/{b}": {k: v for k, v in res["summary"].items()}
                 for (name, b), res in results.items()}
    paths = write_report(out, rows, METRICS, benchmark="davis-vos", config=asdict(cfg), per_video=per_video,
                         headers=HEADERS, protocol=proto,
                         extra_info={"settings": asdict(settings), "clips": names,
                                     "masks": {b: str(out / "masks" / slug(b)) for b in backends}})
    print("wrote " + ", ".join(str(p) for p in paths.values()) + f", masks under {out / 'masks'}, "
          f"contact sheets under {out / 'contact'}")
    return 0


__all__ = ["CLIPS", "HELD_OUT", "SPLITS", "METRICS", "VosSettings", "VosClip", "load_clip", "available_clips",
           "select_clips", "read_annotation", "evaluate_clip", "table_rows", "protocol", "run"]
