"""Training clips for Co-Settle (spec §6): pairs of frames (t1, t2) of one video.

Sources (``discover_clips``):
    * a text file listing one frame folder (or video file) per line -- the authors' Kinetics-400 list
      layout (relative lines are resolved against the list file's folder; ``#`` starts a comment);
    * a folder of video files (mp4, avi, ...), searched recursively;
    * a folder of frame folders (e.g. ``frames/train/<class>/<video>/00000.jpg``) or one frame folder
      (e.g. DAVIS ``JPEGImages/480p/<seq>``); sub-folders named Annotations/masks are skipped.

Sampling per clip of n frames: gap = int(0.15 n) (or, with a (lo, hi) range, a fraction drawn per
sample); if n <= 4 or gap < 1 two random frames, else t1 ~ U{1..n-gap-1}, t2 = t1 + gap. The authors
also load frames t1-1 and t2-1 and never use them; we do not load them.

Augmentation: squash-resize to the input size (bilinear), one RandomResizedCrop (scale 0.5-1, ratio
3/4-4/3, a single draw clamped to the image, bicubic) and one horizontal flip (p 0.5) shared by both
frames, then ImageNet mean/std (for every encoder, as the authors do).

Determinism: sample ``i`` of epoch ``e`` draws from ``np.random.default_rng([seed, e, i])``, so the
result does not depend on the number of workers, the rank, or on resuming mid-epoch.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError
from .io.video import FRAME_EXTS, VIDEO_EXTS, read_video

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_DIRS = {"annotations", "masks", "mask", "segmentations"}


@dataclass(frozen=True)
class Clip:
    path: str
    kind: str  # "frames" | "video"


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in FRAME_EXTS and not p.name.startswith("."))


def _has_frames(folder: Path) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(e.is_file() and Path(e.name).suffix.lower() in FRAME_EXTS for e in it)
    except OSError:
        return False


def _scan_folder(root: Path) -> list[Clip]:
    if _has_frames(root):
        return [Clip(str(root), "frames")]
    clips = []
    for dirpath, dirnames, filenames in os.walk(root):
        # segmentation masks next to the frames (DAVIS/YouTube-VOS layout) are not training video
        dirnames[:] = sorted(d for d in dirnames if d.lower() not in MASK_DIRS)
        d = Path(dirpath)
        if any(Path(f).suffix.lower() in FRAME_EXTS for f in filenames):
            clips.append(Clip(str(d), "frames"))
            dirnames[:] = []  # a frame folder is a leaf
            continue
        clips.extend(Clip(str(d / f), "video") for f in sorted(filenames)
                     if Path(f).suffix.lower() in VIDEO_EXTS)
    return clips


def _read_list(list_file: Path) -> list[Clip]:
    clips, missing = [], []
    for raw in list_file.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        line = line.split(",")[0].strip()  # CSV lists: first column is the path
        p = Path(line).expanduser()
        if not p.is_absolute():
            p = (list_file.parent / p)
        # no directory scan per entry (Kinetics lists have ~240k lines); empty folders fail when read
        clip = (Clip(str(p), "video") if p.suffix.lower() in VIDEO_EXTS and p.is_file()
                else Clip(str(p), "frames") if p.is_dir() else None)
        if clip is None:
            missing.append(line)
        else:
            clips.append(clip)
    if missing:
        log.warning("%d of %d entries in %s are not frame folders/videos and are skipped (first: %s)",
                    len(missing), len(missing) + len(clips), list_file, missing[0])
    return clips


def discover_clips(sources: str | os.PathLike | Sequence[str | os.PathLike], flag: str = "--data") -> list[Clip]:
    """All clips of one or more sources (list files, video folders, frame folders, video files)."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    clips: list[Clip] = []
    for src in sources:
        p = Path(src).expanduser()
        if not p.exists():
            raise UserError(f"{flag} path not found: {p}",
                            f"pass {flag} LIST.txt, a folder of videos or a folder of frame folders")
        if p.is_file() and p.suffix.lower() in VIDEO_EXTS:
            clips.append(Clip(str(p), "video"))
        elif p.is_file():
            clips.extend(_read_list(p))
        else:
            clips.extend(_scan_folder(p))
    if not clips:
        raise UserError(f"no clips found in {', '.join(map(str, sources))}",
                        "a list file needs one frame folder or video per line; folders need jpg/png frames "
                        f"or videos ({', '.join(sorted(VIDEO_EXTS))})")
    return clips


def sample_pair(n: int, rng: np.random.Generator, gap=0.15) -> tuple[int, int]:
    """Frame indices (t1, t2) for a clip of ``n`` frames (authors' rule; ``gap`` a fraction or range)."""
    frac = float(rng.uniform(gap[0], gap[1])) if isinstance(gap, (tuple, list)) else float(gap)
    g = int(frac * n)
    if n <= 4 or g < 1:
        return int(rng.integers(0, n)), int(rng.integers(0, n))
    t1 = int(rng.integers(1, n - g))  # U{1 .. n-g-1}
    return t1, t1 + g


def random_resized_crop_box(h: int, w: int, rng: np.random.Generator, scale=(0.5, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, height, width): one draw, clamped to the image (BYOL style)."""
    area = h * w * float(rng.uniform(scale[0], scale[1]))
    r = math.exp(float(rng.uniform(math.log(ratio[0]), math.log(ratio[1]))))
    cw = min(w, max(1, int(round(math.sqrt(area * r)))))
    ch = min(h, max(1, int(round(math.sqrt(area / r)))))
    top = int(rng.integers(0, h - ch + 1))
    left = int(rng.integers(0, w - cw + 1))
    return top, left, ch, cw


class FrameReader:
    """Random access to frames of a frame folder or a video file (cv2; one open file per worker)."""

    def __init__(self):
        self._files: dict[str, list[Path]] = {}
        self._counts: dict[str, int] = {}

    def num_frames(self, clip: Clip) -> int:
        if clip.kind == "frames":
            if clip.path not in self._files:
                self._files[clip.path] = _frame_files(Path(clip.path))
            return len(self._files[clip.path])
        if clip.path not in self._counts:
            cap = cv2.VideoCapture(clip.path)
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
            cap.release()
            if n <= 0:  # containers without a frame count: decode once

                n = len(read_video(clip.path))
            self._counts[clip.path] = n
        return self._counts[clip.path]

    def read(self, clip: Clip, indices: Sequence[int]) -> list[np.ndarray]:
        if clip.kind == "frames":
            out = []
            for i in indices:
                img = cv2.imread(str(self._files[clip.path][i]), cv2.IMREAD_COLOR)
                if img is None:
                    raise UserError(f"cannot decode frame {self._files[clip.path][i]}",
                                    "remove the corrupt frame or its folder from the list")
                out.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
            return out
        want = sorted(set(indices))
        got: dict[int, np.ndarray] = {}
        cap = cv2.VideoCapture(clip.path)
        try:
            cap.set(cv2.CAP_PROP_POS_FRAMES, want[0])
            i = want[0]
            while i <= want[-1]:
                ok, frame = cap.read()
                if not ok:
                    break
                if i in want:
                    got[i] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                i += 1
        finally:
            cap.release()
        if len(got) != len(want):  # seek failed (some codecs): fall back to a full decode

            v = read_video(clip.path)
            got = {i: np.asarray(v[min(i, len(v) - 1)]) for i in want}
        return [got[i] for i in indices]


class ClipPairDataset(torch.utils.data.Dataset):
    """``ds[i]`` -> float32 (2, 3, S, S): frames (t1, t2) of clip ``i % n_clips``, augmented and
    normalised. ``pairs_per_clip`` > 1 draws several independent pairs per clip per epoch (small
    collections); with 1 it is the authors' one pair per clip."""

    def __init__(self, clips: Sequence[Clip], input_size: int = 224, gap=0.15, scale=(0.5, 1.0),
                 ratio=(3 / 4, 4 / 3), flip_p: float = 0.5, squash: bool = True,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, seed: int = 0, pairs_per_clip: int = 1):
        self.clips = list(clips)
        self.pairs_per_clip = max(1, int(pairs_per_clip))
        self.size = int(input_size)
        self.gap, self.scale, self.ratio = gap, tuple(scale), tuple(ratio)
        self.flip_p, self.squash = float(flip_p), bool(squash)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.seed = int(seed)
        self.epoch = 0
        self.reader = FrameReader()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.clips) * self.pairs_per_clip

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __getitem__(self, index: int) -> torch.Tensor:
        clip = self.clips[index % len(self.clips)]  # pair k of clip c is sample c + k * n_clips
        rng = self.rng(index)
        n = self.reader.num_frames(clip)
        if n < 1:
            raise UserError(f"clip {clip.path} has no frames", "remove it from the training list")
        t1, t2 = sample_pair(n, rng, self.gap)
        frames = self.reader.read(clip, [t1, t2])
        S = self.size
        if self.squash:  # authors: Resize((224, 224)) first, aspect not kept
            # PIL's bilinear resize antialiases when shrinking; INTER_AREA is cv2's equivalent there
            frames = [cv2.resize(f, (S, S), interpolation=cv2.INTER_AREA if min(f.shape[:2]) > S
                                 else cv2.INTER_LINEAR) for f in frames]
        x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255.0)
        h, w = x.shape[-2:]
        top, left, ch, cw = random_resized_crop_box(h, w, rng, self.scale, self.ratio)
        x = x[:, :, top:top + ch, left:left + cw]
        x = F.interpolate(x, size=(S, S), mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
        if rng.random() < self.flip_p:
            x = x.flip(-1)
        return ((x - self.mean) / self.std).contiguous()


class ResumableSampler(torch.utils.data.Sampler):
    """Distributed, shuffled (seed + epoch), drop-last sampler that can start mid-epoch.

    Like ``DistributedSampler`` (same partition for every rank) plus ``start`` = number of this rank's
    samples already consumed in the epoch, so a resumed run sees exactly the remaining batches.
    """

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0, batch_size: int = 1):
        self.n, self.world, self.rank = int(n), int(num_replicas), int(rank)
        self.shuffle, self.seed, self.batch = bool(shuffle), int(seed), int(batch_size)
        per_rank = self.n // self.world
        self.num_samples = (per_rank // self.batch) * self.batch  # drop_last on both levels
        if self.num_samples == 0:
            raise UserError(f"{self.n} clips are too few for batch size {self.batch} x {self.world} "
                            "process(es)", "lower --batch-size or add clips")
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = int(epoch)
        self.start = int(start_batch) * self.batch

    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        order = order[: (self.n // self.world) * self.world]
        return order[self.rank::self.world][: self.num_samples]

    def __iter__(self):
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start
