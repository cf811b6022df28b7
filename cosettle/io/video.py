"""Reading and writing videos: mp4/avi/mov/mkv/webm/gif files and folders of jpg/png frames.

``read_video`` returns a :class:`Video`: a sequence of (H, W, 3) uint8 RGB frames plus ``fps``.
Folders of frames are decoded lazily (one frame at a time), so feature extraction over long videos keeps
bounded memory; video files are decoded once, keeping only the frames selected by
``frame_stride``/``max_frames``.
"""
from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import imageio.v2 as iio2
import imageio.v3 as iio
import numpy as np

from ..errors import UserError
from .atomic import _os_error, atomic_path

log = logging.getLogger(__name__)

VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".gif"}
FRAME_EXTS = {".jpg", ".jpeg", ".png", ".bmp"}
DEFAULT_FPS = 24.0


@dataclass
class Video(Sequence):
    """A clip: ``len(video)`` frames, ``video[i]`` -> (H, W, 3) uint8 RGB."""

    frames: Sequence  # np.ndarray (T,H,W,3) or a list of frame file paths (lazy)
    fps: float
    height: int
    width: int
    source: str = ""
    frame_indices: list[int] = field(default_factory=list)  # indices in the source file/folder

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i):
        if isinstance(i, slice):
            idx = range(*i.indices(len(self)))
            if not len(idx):
                return np.zeros((0, self.height, self.width, 3), np.uint8)
            first = np.asarray(self[idx[0]])
            out = np.empty((len(idx),) + first.shape, first.dtype)
            out[0] = first
            for j, k in enumerate(idx[1:], 1):  # filled in place: a list of frames + np.stack held the clip
                out[j] = self[k]                # twice, and the freed frames stayed in the heap (RSS)
            return out
        item = self.frames[i]
        if isinstance(item, (str, os.PathLike)):
            return _read_image(Path(item), (self.height, self.width))
        return item

    @property
    def shape(self) -> None:  # a lazy sequence, not an array (see backends.base.frames_layout)
        return None

    def numpy(self) -> np.ndarray:
        """All frames as one (T, H, W, 3) uint8 array."""
        if isinstance(self.frames, np.ndarray):
            return self.frames
        return self[0:len(self)]

    @classmethod
    def from_array(cls, frames: np.ndarray, fps: float = DEFAULT_FPS, source: str = "array") -> "Video":
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise UserError(f"expected (T,H,W,3) uint8 frames, got {frames.shape} {frames.dtype}")
        return cls(frames, float(fps), frames.shape[1], frames.shape[2], source,
                   list(range(len(frames))))


def read_video(path: str | os.PathLike, max_frames: int | None = None, frame_stride: int = 1,
               fps: float | None = None, shown_as: str | None = None) -> Video:
    """Open a video file or a folder of frames. ``fps`` overrides the file's (folders default 24).
    ``shown_as``: the path the log names (a file read from a staging folder that moves away afterwards)."""
    path = Path(path)
    if fps is not None:
        fps = check_fps(fps)
    if frame_stride < 1:
        raise UserError(f"frame stride must be >= 1, got {frame_stride}")
    if max_frames is not None and max_frames < 1:
        raise UserError(f"--max-frames must be >= 1, got {max_frames}")
    if not path.exists():
        raise UserError(f"video not found: {path}", "check the path passed to --video")
    if path.is_dir():
        video = _read_folder(path, max_frames, frame_stride)
    elif path.suffix.lower() in VIDEO_EXTS:
        video = _read_file(path, max_frames, frame_stride)
    else:
        raise UserError(f"unsupported video format {path.suffix!r}: {path}",
                        f"use one of {sorted(VIDEO_EXTS)} or a folder of jpg/png frames")
    if fps is not None:
        video.fps = float(fps)
    elif not (np.isfinite(video.fps) and video.fps > 0):  # a broken header: the documented default
        log.warning("video %s reports %r fps; using %g", path, video.fps, DEFAULT_FPS)
        video.fps = DEFAULT_FPS
    elif frame_stride > 1:
        video.fps = video.fps / frame_stride
    log.info("video %s: %d frames, %dx%d (HxW), %.2f fps", shown_as or path, len(video), video.height, video.width,
             video.fps)
    return video


def check_fps(fps, flag: str = "--fps") -> float:
    """A frame rate must be a finite number > 0 (ffmpeg fails on 0, negatives and nan after the work)."""
    try:
        val = float(fps)
    except (TypeError, ValueError):
        raise UserError(f"{flag} must be a number, got {fps!r}", f"e.g. {flag} 24") from None
    if not (np.isfinite(val) and val > 0):
        raise UserError(f"{flag} must be a finite number > 0, got {fps!r}", f"e.g. {flag} 24")
    return val


def _select(n: int, max_frames: int | None, stride: int) -> list[int]:
    idx = list(range(0, n, stride))
    return idx[:max_frames] if max_frames else idx


def _read_folder(path: Path, max_frames, stride) -> Video:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_EXTS and not p.name.startswith("."))
    if not files:
        raise UserError(f"no frames (jpg/png) in folder {path}", "point --video at a folder of frames or a video file")
    keep = _select(len(files), max_frames, stride)
    first = _read_image(files[keep[0]], None)
    h, w = first.shape[:2]
    return Video([files[i] for i in keep], DEFAULT_FPS, h, w, str(path), keep)


def _read_image(path: Path, expect_hw) -> np.ndarray:
    try:
        img = iio.imread(path)
    except Exception as err:  # imageio raises many types for corrupt files
        raise UserError(f"cannot decode frame {path}: {type(err).__name__}",
                        "replace or remove the corrupt frame") from None
    if img.dtype == bool:  # 1-bit PNGs decode to bool: black/white
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = (img.astype(np.float64) / np.iinfo(img.dtype).max * 255).round().astype(np.uint8)
    if expect_hw is not None and img.shape[:2] != tuple(expect_hw):
        raise UserError(f"frame {path} is {img.shape[0]}x{img.shape[1]} (HxW), others are "
                        f"{expect_hw[0]}x{expect_hw[1]}", "all frames of a folder must have one size")
    return np.ascontiguousarray(img)


def _read_file(path: Path, max_frames, stride) -> Video:
    if path.suffix.lower() == ".gif":
        return _read_gif(path, max_frames, stride)
    frames, kept = [], []
    try:
        reader = iio2.get_reader(str(path), format="ffmpeg")
        meta = reader.get_meta_data()
        fps = float(meta.get("fps") or DEFAULT_FPS)
        for i, frame in enumerate(reader):
            if i % stride:
                continue
            frames.append(np.asarray(frame)[..., :3])
            kept.append(i)
            if max_frames and len(frames) >= max_frames:
                break
        reader.close()
    except Exception as err:
        if frames:  # truncated file: keep what decoded, but say so
            log.warning("video %s is truncated after %d frames (%s)", path, len(frames), err)
        else:
            raise UserError(f"cannot decode video {path}: {str(err).splitlines()[0][:120]}",
                            "check the file is a valid video (re-encode with ffmpeg if needed)") from None
    if not frames:
        raise UserError(f"video {path} has zero frames", "check the file is a valid, non-empty video")
    arr = np.stack(frames).astype(np.uint8)
    return Video(arr, fps, arr.shape[1], arr.shape[2], str(path), kept)


def _read_gif(path: Path, max_frames, stride) -> Video:
    try:
        arr = iio.imread(path, index=None)
        meta = iio.immeta(path)
    except Exception as err:
        raise UserError(f"cannot decode gif {path}: {type(err).__name__}", "check the file") from None
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim == 3 or arr.shape[0] == 0:
        raise UserError(f"video {path} has zero frames", "check the file")
    arr = arr[..., :3] if arr.shape[-1] >= 3 else np.repeat(arr[..., :1], 3, axis=-1)
    keep = _select(arr.shape[0], max_frames, stride)
    duration_ms = float(meta.get("duration") or 0)
    fps = 1000.0 / duration_ms if duration_ms > 0 else DEFAULT_FPS
    out = np.ascontiguousarray(arr[keep]).astype(np.uint8)
    return Video(out, fps, out.shape[1], out.shape[2], str(path), keep)


def write_video(path: str | os.PathLike, frames, fps: float) -> Path:
    """Write RGB uint8 frames (sequence of (H,W,3)) to mp4 (H.264, yuv420p) atomically.

    Odd sizes are padded by one pixel (H.264 needs even sizes); .gif is written with pillow. The file is
    renamed into place only when the writer finished without error AND the written file decodes to as
    many frames as were given (a full disk or a killed ffmpeg leaves an unplayable, short file);
    otherwise UserError and nothing at ``path``.
    """
    path = Path(path)
    fps = check_fps(fps, "fps")
    with atomic_path(path) as tmp:
        try:
            n = _write_gif(tmp, frames, fps) if path.suffix.lower() == ".gif" else _write_mp4(tmp, frames, fps)
        except OSError as err:
            raise _os_error(err, path) from None
        except RuntimeError as err:  # ffmpeg exited with an error status
            raise UserError(f"writing {path.name} failed: {str(err).strip().splitlines()[-1][:160]}",
                            "check free disk space and the ffmpeg install (imageio-ffmpeg)") from None
        got = count_video_frames(tmp)
        # pillow merges identical consecutive gif frames (summing their durations): fewer is fine there
        if got != n and not (path.suffix.lower() == ".gif" and 0 < got <= n):
            raise UserError(f"{path.name}: the written video has {got} of {n} frames",
                            "check free disk space and re-run")
    return path


def _write_gif(tmp: Path, frames, fps: float) -> int:
    arr = np.stack(list(frames))
    iio.imwrite(tmp, arr, duration=1000.0 / fps, loop=0)
    return len(arr)


def _write_mp4(tmp: Path, frames, fps: float) -> int:
    """Pipe raw RGB frames into imageio-ffmpeg's ffmpeg (H.264, yuv420p, crf 15 = imageio quality 7) and
    check its exit status: imageio's own writer does not report a failed ffmpeg at close."""
    import imageio_ffmpeg  # deferred: ffmpeg-backed video I/O only

    proc, n, size = None, 0, None
    with tempfile.TemporaryFile() as errlog:
        try:
            for frame in frames:
                frame = np.asarray(frame, dtype=np.uint8)
                ph, pw = frame.shape[0] % 2, frame.shape[1] % 2
                if ph or pw:
                    frame = np.pad(frame, ((0, ph), (0, pw), (0, 0)), mode="edge")
                if proc is None:
                    size = frame.shape[:2]
                    proc = subprocess.Popen(
                        [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo",
                         "-pix_fmt", "rgb24", "-s", f"{size[1]}x{size[0]}", "-r", f"{fps:.6g}", "-i", "-",
                         "-an", "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", "15", str(tmp)],
                        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errlog)
                if frame.shape[:2] != size:
                    raise UserError(f"frame {n} is {frame.shape[0]}x{frame.shape[1]} (HxW), the first was "
                                    f"{size[0]}x{size[1]}", "every frame of a video must have one size")
                try:
                    proc.stdin.write(np.ascontiguousarray(frame).tobytes())
                except BrokenPipeError:  # ffmpeg died: its exit status and message are reported below
                    break
                n += 1
        finally:
            if proc is not None:
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
                rc = proc.wait()
        if proc is None:
            raise UserError("no frames to write", "the video is empty")
        if rc != 0:
            errlog.seek(0)
            tail = [ln for ln in errlog.read().decode(errors="replace").splitlines() if ln.strip()]
            raise RuntimeError(f"ffmpeg exited with status {rc}: {tail[-1] if tail else 'no message'}")
    return n


def count_video_frames(path: str | os.PathLike) -> int:
    """Frames that actually decode from a written video (0 for an unreadable file)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".gif":
            return int(len(iio.imread(path, index=None)))
        import imageio_ffmpeg  # deferred: ffmpeg-backed video I/O only

        return int(imageio_ffmpeg.count_frames_and_secs(str(path))[0])
    except Exception:  # a truncated file makes ffmpeg fail: it has no usable frames
        return 0


def write_frames(folder: str | os.PathLike, frames, ext: str = "png") -> Path:
    """Write frames as ``00000.<ext>`` ... into ``folder`` (used for demo clips and tests)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        with atomic_path(folder / f"{i:05d}.{ext}") as tmp:
            iio.imwrite(tmp, np.asarray(frame, dtype=np.uint8))
    return folder
