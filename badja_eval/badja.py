"""BADJA data: the official joint annotations + DAVIS frames/masks, in two on-disk layouts.

Layouts found under a data root (first match wins per sequence):

* **official** (BADJA repo with DAVIS unpacked next to it): ``<root>/joint_annotations/<seq>.json`` (or
  ``<root>/BADJA/joint_annotations``), frames ``<root>/DAVIS/JPEGImages/{480p,Full-Resolution}/<seq>/%05d.jpg``
  and masks ``<root>/DAVIS/Annotations/{480p,Full-Resolution}/<seq>/%05d.png`` (480p preferred);
* **flat** (what the project ships in ``../shared/data``): ``<root>/badja/joint_annotations/<seq>.json``
  with ``<root>/davis480/<seq>/{JPEGImages,Annotations}/%05d.{jpg,png}``.

Joints are stored as [row, col] at full resolution (1920x1080 for the DAVIS sequences); they are flipped
to (x, y) and scaled to the size of the frames actually read. Masks may be binary (DAVIS-2016) or palette
(DAVIS-2017, several objects): the foreground is every non-zero pixel (index / value), so horse + rider
both count -- unlike PIPs/CoTracker, which read channel 0 of the palette RGB and lose object 2.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import imageio.v3 as iio
import numpy as np
from PIL import Image

from cosettle.errors import UserError
from cosettle.io.masks import read_mask as read_mask_file

from .metrics import badja_metrics

log = logging.getLogger(__name__)

# The 20 evaluated joints (SMAL annotated classes), in this order -- evaluation.md §2.
BADJA_JOINTS = (8, 9, 10, 12, 13, 14, 15, 18, 19, 20, 22, 23, 24, 25, 28, 31, 32, 33, 35, 36)
JOINT_NAMES = ("upper_right_1", "upper_right_2", "upper_right_3", "upper_left_1", "upper_left_2",
               "upper_left_3", "neck_lower", "lower_right_1", "lower_right_2", "lower_right_3",
               "lower_left_1", "lower_left_2", "lower_left_3", "tail_0", "tail_3", "tail_6", "jaw",
               "nose", "right_ear", "left_ear")
NUM_JOINTS_FILE = 37
# The 7 DAVIS sequences used for point tracking; the extra videos are skipped (evaluation.md §3).
BADJA_SEQUENCES = ("bear", "camel", "cows", "dog", "dog-agility", "horsejump-high", "horsejump-low")
DAVIS_FULL_HW = (1080, 1920)
EVAL_HW = (480, 854)  # project setting: 854x480


class FrameMaskFiles:
    """A clip as files: ``frame_paths``, ``mask_paths`` and ``size_hw`` -> decoded arrays
    (BADJA sequences and the DAVIS mask-consistency clips)."""

    frame_paths: list[Path]
    mask_paths: list[Path]
    size_hw: tuple[int, int]

    @property
    def num_frames(self) -> int:
        return len(self.frame_paths)

    def load_frames(self) -> np.ndarray:
        """(S, H, W, 3) uint8 RGB."""
        return np.stack([read_frame(p, self.size_hw) for p in self.frame_paths])

    def load_masks(self) -> np.ndarray:
        """(S, H, W) bool foreground (every non-zero pixel)."""
        return np.stack([read_mask(p, self.size_hw) for p in self.mask_paths])


@dataclass
class BadjaSequence(FrameMaskFiles):
    """One BADJA clip: every DAVIS frame from the first to the last annotated frame.

    ``joints`` (20, S, 2) x,y at the read resolution (``size_hw``); ``visible`` (20, S), False on
    unannotated frames; ``annotated`` (S,) marks the frames that carry annotations.
    """

    name: str
    frame_paths: list[Path]
    mask_paths: list[Path]
    frame_indices: list[int]
    joints: np.ndarray
    visible: np.ndarray
    annotated: np.ndarray
    size_hw: tuple[int, int]
    layout: str = ""
    joint_names: tuple[str, ...] = field(default=JOINT_NAMES)

    def query_points(self, mode: str = "clip0") -> np.ndarray:
        """(20, 3) queries (t, x, y) at the read resolution.

        ``clip0`` (default, PIPs/CoTracker/DINO-Tracker): every joint at clip frame 0 from its stored
        position, with no visibility check. ``first-visible``: each joint at its first visible frame
        (a joint never visible stays at frame 0; it contributes no entries either way).
        """
        if mode not in ("clip0", "first-visible"):
            raise UserError(f"unknown BADJA query mode {mode!r}", "use clip0 or first-visible")
        t = np.zeros(len(self.joints), dtype=np.int64)
        if mode == "first-visible":
            for i, vis in enumerate(self.visible):
                if vis.any():
                    t[i] = int(np.argmax(vis))
        xy = self.joints[np.arange(len(t)), t]
        return np.concatenate([t[:, None].astype(np.float32), xy.astype(np.float32)], axis=1)


def find_annotation_dir(root: Path) -> Path | None:
    for cand in (root / "badja" / "joint_annotations", root / "joint_annotations",
                 root / "BADJA" / "joint_annotations"):
        if cand.is_dir():
            return cand
    return None


def list_sequences(root: str | Path) -> list[str]:
    """The BADJA point-tracking sequences under ``root`` that have both annotations and frames."""
    root = Path(root)
    ann = find_annotation_dir(root)
    if ann is None:
        return []
    return [s for s in BADJA_SEQUENCES if (ann / f"{s}.json").is_file() and _frame_dirs(root, s)]


def skipped_sequences(root: str | Path) -> dict[str, str]:
    """{sequence: why} for every annotated sequence under ``root`` that ``list_sequences`` leaves out:
    a run over "every sequence" must say what it did not evaluate (it once scored 1 of 10 silently)."""
    root = Path(root)
    ann = find_annotation_dir(root)
    if ann is None:
        return {}
    out = {}
    for f in sorted(ann.glob("*.json")):
        seq = f.stem
        if seq not in BADJA_SEQUENCES:
            out[seq] = "not a DAVIS clip (the evaluator reads the DAVIS-based BADJA sequences only)"
        elif not _frame_dirs(root, seq):
            out[seq] = (f"frames missing -- put them in {root / 'davis480' / seq / 'JPEGImages'} "
                        f"(masks in .../Annotations) or {root / 'DAVIS' / 'JPEGImages' / '480p' / seq}")
    return out


def _frame_dirs(root: Path, seq: str) -> tuple[Path, Path, str] | None:
    """(frames dir, masks dir, layout name) for ``seq``, or None when no frame folder exists."""
    cands = [(root / "davis480" / seq / "JPEGImages", root / "davis480" / seq / "Annotations", "flat")]
    for base in (root, root / "BADJA"):
        for res in ("480p", "Full-Resolution"):
            cands.append((base / "DAVIS" / "JPEGImages" / res / seq, base / "DAVIS" / "Annotations" / res / seq,
                          f"official-{res}"))
    for frames, masks, layout in cands:
        if frames.is_dir():
            return frames, masks, layout
    return None


def load_annotations(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"BADJA annotation file not found: {path}", "check --data-root / --sequences")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"malformed BADJA annotation file {path}: {err}", "re-download it") from None
    if not isinstance(data, list) or not data:
        raise UserError(f"{path} must be a non-empty list of per-frame annotations", "re-download it")
    for k, entry in enumerate(data):
        if not isinstance(entry, dict) or not {"image_path", "joints", "visibility"} <= set(entry):
            raise UserError(f"{path} entry {k} lacks image_path/joints/visibility", "re-download it")
        if len(entry["joints"]) != NUM_JOINTS_FILE or len(entry["visibility"]) != NUM_JOINTS_FILE:
            raise UserError(f"{path} entry {k}: expected {NUM_JOINTS_FILE} joints, got "
                            f"{len(entry['joints'])}", "re-download it")
    return data


def _frame_index(image_path: str) -> int:
    stem = Path(image_path).stem
    try:
        return int(stem)
    except ValueError:
        raise UserError(f"cannot read a frame number from {image_path!r}", "expected %05d.jpg names") from None


def load_sequence(root: str | Path, name: str, full_hw: tuple[int, int] | None = None) -> BadjaSequence:
    """Read one sequence. ``full_hw``: the annotation resolution (default: the size of the
    Full-Resolution frame when present on disk, else 1920x1080 as for every DAVIS BADJA sequence)."""
    root = Path(root)
    ann_dir = find_annotation_dir(root)
    if ann_dir is None:
        raise UserError(f"no BADJA joint_annotations folder under {root}",
                        "expected badja/joint_annotations/ or joint_annotations/ (see docs/evaluation.md)")
    entries = load_annotations(ann_dir / f"{name}.json")
    dirs = _frame_dirs(root, name)
    if dirs is None:
        raise UserError(f"no frames for sequence {name!r} under {root}: expected {root}/davis480/{name}/"
                        f"JPEGImages or {root}/DAVIS/JPEGImages/480p/{name}", "check --data-root")
    frames_dir, masks_dir, layout = dirs
    by_index: dict[int, dict] = {}
    for e in entries:
        by_index[_frame_index(e["image_path"])] = e
    first, last = min(by_index), max(by_index)
    indices = list(range(first, last + 1))
    frame_paths = [frames_dir / f"{i:05d}.jpg" for i in indices]
    mask_paths = [masks_dir / f"{i:05d}.png" for i in indices]
    for p in frame_paths + mask_paths:  # fail early, naming the first missing file
        if not p.is_file():
            raise UserError(f"missing {'frame' if p.suffix == '.jpg' else 'mask'} file: {p}",
                            f"sequence {name!r} needs every frame {first}..{last}")
    size_hw = read_frame(frame_paths[0]).shape[:2]
    if full_hw is None:
        full_hw = _full_resolution_hw(root, name, first) or DAVIS_FULL_HW
    sy, sx = size_hw[0] / full_hw[0], size_hw[1] / full_hw[1]
    S, J = len(indices), len(BADJA_JOINTS)
    joints = np.zeros((J, S, 2), dtype=np.float64)
    visible = np.zeros((J, S), dtype=bool)
    annotated = np.zeros(S, dtype=bool)
    for fi, e in by_index.items():
        t = fi - first
        annotated[t] = True
        rc = np.asarray(e["joints"], dtype=np.float64)[list(BADJA_JOINTS)]  # [row, col]
        # [row, col] -> (x, y), then scale to the read resolution like the protocol (x' = x * W/W_full);
        # no half-pixel shift, matching PIPs/CoTracker/DINO-Tracker.
        joints[:, t, 0] = rc[:, 1] * sx
        joints[:, t, 1] = rc[:, 0] * sy
        visible[:, t] = np.asarray(e["visibility"], dtype=bool)[list(BADJA_JOINTS)]
    log.debug("BADJA %s: clip frames %d..%d (%d), %d annotated, %d visible entries, %s layout, %dx%d (HxW)",
             name, first, last, S, int(annotated.sum()), int(visible.sum()), layout, size_hw[0], size_hw[1])
    return BadjaSequence(name, frame_paths, mask_paths, indices, joints, visible, annotated,
                         (int(size_hw[0]), int(size_hw[1])), layout)


def _full_resolution_hw(root: Path, name: str, index: int) -> tuple[int, int] | None:
    for base in (root, root / "BADJA"):
        p = base / "DAVIS" / "JPEGImages" / "Full-Resolution" / name / f"{index:05d}.jpg"
        if p.is_file():
            with Image.open(p) as im:
                return im.height, im.width
    return None


def read_frame(path: Path, expect_hw: tuple[int, int] | None = None) -> np.ndarray:
    if not Path(path).is_file():
        raise UserError(f"missing frame file: {path}", "check the data root")
    try:
        img = iio.imread(path)
    except Exception as err:
        raise UserError(f"cannot decode frame {path}: {type(err).__name__}", "replace the file") from None
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    img = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
    if expect_hw is not None and img.shape[:2] != tuple(expect_hw):
        raise UserError(f"frame {path} is {img.shape[0]}x{img.shape[1]} (HxW), expected "
                        f"{expect_hw[0]}x{expect_hw[1]}", "all frames of a sequence must have one size")
    return img


def read_mask(path: Path, expect_hw: tuple[int, int] | None = None) -> np.ndarray:
    """A mask file -> (H, W) bool by the project's one rule (``cosettle.io.masks``: palette index > 0, else the
    brightest channel above 127, or above 0 for 0/1 masks). Resized with nearest neighbour when ``expect_hw``
    differs (e.g. Full-Resolution masks with 480p frames)."""
    if not Path(path).is_file():
        raise UserError(f"missing mask file: {path}", "check the data root")
    mask = read_mask_file(path, "mask")
    if expect_hw is not None and mask.shape != tuple(expect_hw):
        mask = resize_mask(mask, expect_hw)
    return mask


def resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(hw):
        return mask.astype(bool)
    return cv2.resize(mask.astype(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST) > 0


def to_eval_resolution(xy: np.ndarray, size_hw: tuple[int, int], eval_hw: tuple[int, int] = EVAL_HW) -> np.ndarray:
    """Scale (…, 2) x,y from the read resolution to the evaluation resolution (per axis)."""
    xy = np.asarray(xy, dtype=np.float64).copy()
    xy[..., 0] *= eval_hw[1] / size_hw[1]
    xy[..., 1] *= eval_hw[0] / size_hw[0]
    return xy


def evaluate_badja(seq: BadjaSequence, pred_xy: np.ndarray, query_frames: np.ndarray | None = None,
                   masks: np.ndarray | None = None, eval_hw: tuple[int, int] = EVAL_HW,
                   pred_visible: np.ndarray | None = None) -> dict:
    """δseg/δ3px of one sequence. ``pred_xy``: (20, S, 2) x,y at the read resolution. Distances and mask
    areas are taken at ``eval_hw`` (854x480 by default), so δ3px means 3 px at 854x480. With
    ``pred_visible`` (20, S) also false_visible / visible (see ``badja_metrics``)."""
    if masks is None:
        masks = seq.load_masks()
    areas = np.array([resize_mask(m, eval_hw).sum() for m in masks], dtype=np.float64)
    pred = to_eval_resolution(pred_xy, seq.size_hw, eval_hw)
    gt = to_eval_resolution(seq.joints, seq.size_hw, eval_hw)
    return badja_metrics(pred, gt, seq.visible, areas, query_frames, pred_visible=pred_visible)
