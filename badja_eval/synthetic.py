"""Offline synthetic TAP benchmark: procedural textured scenes with exact ground-truth tracks.

Every video is a textured background that pans plus several textured objects (blob shapes), each with
its own per-frame translation, rotation and scale and a smooth non-rigid warp. Objects are drawn in a
fixed depth order, so later objects occlude earlier ones (and everything occludes the background); some
objects leave the frame. Nothing third-party is used: all content is seeded noise.

Geometry (exact, no approximation beyond float64 rounding). For object k at frame t, a *canonical*
texture point q maps to the frame through a warp and a similarity:

    u = W_t^{-1}(q)   with   W_t(u) = u + w_t(u),   w_t(u) = A·(sin(2π u_y/λ + φ₁ + ωt), sin(2π u_x/λ + φ₂ + ωt))
    x = c_t + s_t · R(θ_t) · u

Rendering needs the inverse x -> q, which is closed-form (undo the similarity, then apply W_t). The GT
track of a canonical point needs W_t^{-1}, computed by the fixed-point iteration u <- q - w_t(u); it is
a contraction because A·2π/λ <= 0.4, so 60 iterations reach float64 precision. A point is occluded when
it is outside the frame or inside the shape of any object drawn in front of it at that frame (the same
analytic test the renderer uses per pixel centre). Coordinates are pixel-centre internally and are
written in TAP-Vid's corner-origin normalised convention: norm = (x + 0.5) / W.

Output: the TAP-Vid DAVIS pickle layout ``{name: {"video", "points", "occluded"}}``, so the TAP-Vid
evaluator and every tracker run on it unchanged.
"""
from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cosettle.errors import UserError
from cosettle.io.atomic import atomic_path
from cosettle.progress import tqdm

# Per-level scene parameters (speeds in px/frame at 256 px width; angles in rad over the clip).
DIFFICULTIES: dict[str, dict] = {
    "easy": dict(n_objects=2, speed=1.0, rotation=0.2, scale=0.08, warp=0.0, bg_speed=0.4, exits=0,
                 noise=0.0, light=0.0),
    "medium": dict(n_objects=3, speed=2.0, rotation=0.7, scale=0.2, warp=1.5, bg_speed=1.0, exits=1,
                   noise=2.0, light=0.05),
    "hard": dict(n_objects=5, speed=3.5, rotation=1.5, scale=0.35, warp=3.0, bg_speed=2.0, exits=2,
                 noise=4.0, light=0.12),
}
_WARP_LIPSCHITZ = 0.4


@dataclass
class SceneObject:
    texture: np.ndarray  # (s, s, 3) uint8, canonical coords q = texture index - (s-1)/2
    radius: float
    shape_amp: float  # blob radius: radius * (1 + shape_amp * cos(shape_k * angle + shape_phase))
    shape_k: int
    shape_phase: float
    centers: np.ndarray  # (T, 2) x, y (pixel-centre)
    angles: np.ndarray  # (T,)
    scales: np.ndarray  # (T,)
    warp_amp: float = 0.0
    warp_lambda: float = 40.0
    warp_omega: float = 0.0
    warp_phase: tuple[float, float] = (0.0, 0.0)

    def warp(self, u: np.ndarray, t: int) -> np.ndarray:
        if self.warp_amp == 0.0:
            return np.zeros_like(u)
        k = 2 * math.pi / self.warp_lambda
        ph = self.warp_omega * t
        return self.warp_amp * np.stack([np.sin(k * u[..., 1] + self.warp_phase[0] + ph),
                                         np.sin(k * u[..., 0] + self.warp_phase[1] + ph)], axis=-1)

    def to_canonical(self, xy: np.ndarray, t: int) -> np.ndarray:
        """Frame (x, y) -> canonical q (closed form)."""
        d = (np.asarray(xy, dtype=np.float64) - self.centers[t]) / self.scales[t]
        c, s = math.cos(self.angles[t]), math.sin(self.angles[t])
        u = np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], axis=-1)  # R^T d
        return u + self.warp(u, t)

    def to_frame(self, q: np.ndarray, t: int, iters: int = 60) -> np.ndarray:
        """Canonical q -> frame (x, y): invert the warp by fixed-point iteration, then the similarity."""
        q = np.asarray(q, dtype=np.float64)
        u = q.copy()
        for _ in range(iters if self.warp_amp else 0):
            u = q - self.warp(u, t)
        c, s = math.cos(self.angles[t]), math.sin(self.angles[t])
        ru = np.stack([c * u[..., 0] - s * u[..., 1], s * u[..., 0] + c * u[..., 1]], axis=-1)
        return self.centers[t] + self.scales[t] * ru

    def inside(self, q: np.ndarray) -> np.ndarray:
        """Is canonical q inside the blob shape?"""
        r = np.hypot(q[..., 0], q[..., 1])
        ang = np.arctan2(q[..., 1], q[..., 0])
        return r < self.radius * (1 + self.shape_amp * np.cos(self.shape_k * ang + self.shape_phase))


@dataclass
class Scene:
    height: int
    width: int
    background: np.ndarray  # (Hb, Wb, 3) uint8
    bg_offsets: np.ndarray  # (T, 2): frame (x, y) shows background at (x, y) + offset_t
    objects: list[SceneObject] = field(default_factory=list)  # back to front
    noise: float = 0.0
    light: np.ndarray | None = None  # (T,) brightness gain
    seed: int = 0

    @property
    def num_frames(self) -> int:
        return len(self.bg_offsets)


# ---------------------------------------------------------------------------------------------- textures
def make_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Multi-octave colour noise plus random discs: smooth regions with trackable detail."""
    img = np.zeros((h, w, 3), np.float32)
    for scale, amp in ((3, 0.2), (8, 0.45), (24, 0.8), (64, 1.0)):
        small = rng.random((max(2, h // scale), max(2, w // scale), 3)).astype(np.float32)
        img += amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img -= img.min()
    img /= max(float(img.max()), 1e-6)
    img = (img * 255).astype(np.uint8)
    for _ in range(max(4, h * w // 900)):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.circle(img, c, int(rng.integers(2, max(3, min(h, w) // 10))), col, -1, cv2.LINE_AA)
    return img


# ---------------------------------------------------------------------------------------------- rendering
def render(scene: Scene, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T,H,W,3) uint8 and labels (T,H,W) int16: the index of the object seen at each pixel
    centre (-1 = background)."""
    H, W, T = scene.height, scene.width, scene.num_frames
    rng = rng or np.random.default_rng(scene.seed + 1)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    grid = np.stack([xs, ys], axis=-1)
    frames = np.zeros((T, H, W, 3), np.uint8)
    labels = np.full((T, H, W), -1, np.int16)
    for t in range(T):
        ox, oy = scene.bg_offsets[t]
        frame = cv2.remap(scene.background, (xs + ox).astype(np.float32), (ys + oy).astype(np.float32),
                          cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101).astype(np.float32)
        for k, obj in enumerate(scene.objects):
            q = obj.to_canonical(grid, t)
            inside = obj.inside(q)
            if not inside.any():
                continue
            c = (obj.texture.shape[0] - 1) / 2
            tex = cv2.remap(obj.texture, (q[..., 0] + c).astype(np.float32), (q[..., 1] + c).astype(np.float32),
                            cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
            frame[inside] = tex[inside]
            labels[t][inside] = k
        if scene.light is not None:
            frame *= scene.light[t]
        if scene.noise:
            frame += rng.normal(0.0, scene.noise, frame.shape).astype(np.float32)
        frames[t] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return frames, labels


def track_points(scene: Scene, layers: np.ndarray, canon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact tracks (N,T,2) pixel-centre x,y and occlusion (N,T) of canonical points.

    ``layers[i]``: object index, or -1 for the background (canonical = background texture coords)."""
    T, H, W = scene.num_frames, scene.height, scene.width
    n = len(layers)
    xy = np.zeros((n, T, 2), np.float64)
    occ = np.zeros((n, T), bool)
    for t in range(T):
        for i in range(n):
            k = int(layers[i])
            xy[i, t] = canon[i] - scene.bg_offsets[t] if k < 0 else scene.objects[k].to_frame(canon[i], t)
        out = (xy[:, t, 0] < -0.5) | (xy[:, t, 0] >= W - 0.5) | (xy[:, t, 1] < -0.5) | (xy[:, t, 1] >= H - 0.5)
        occ[:, t] = out
        for j, obj in enumerate(scene.objects):  # anything drawn in front hides the point
            front = layers < j
            if front.any():
                hit = obj.inside(obj.to_canonical(xy[front, t], t))
                occ[np.flatnonzero(front)[hit], t] = True
    return xy, occ


# ---------------------------------------------------------------------------------------------- sampling
def sample_scene(rng: np.random.Generator, difficulty: str, num_frames: int = 24, height: int = 192,
                 width: int = 256) -> Scene:
    if difficulty not in DIFFICULTIES:
        raise UserError(f"unknown difficulty {difficulty!r}", f"choose from {', '.join(DIFFICULTIES)}")
    p = DIFFICULTIES[difficulty]
    T, H, W = num_frames, height, width
    unit = W / 256.0
    tt = np.arange(T, dtype=np.float64)
    # background pan: constant velocity plus a slow wobble
    ang = rng.uniform(0, 2 * math.pi)
    vb = p["bg_speed"] * unit * np.array([math.cos(ang), math.sin(ang)])
    wob = rng.uniform(0, 2 * math.pi)
    rel = vb[None] * tt[:, None] + 0.5 * p["bg_speed"] * unit * np.stack(
        [np.sin(tt / 4 + wob), np.cos(tt / 5 + wob)], axis=1)
    margin = int(math.ceil(np.abs(rel).max())) + 4
    background = make_texture(rng, H + 2 * margin, W + 2 * margin)
    offsets = rel + margin
    objects: list[SceneObject] = []
    t_mid = (T - 1) / 2
    exit_ids = set(rng.choice(np.arange(p["n_objects"]), size=min(p["exits"], p["n_objects"]),
                              replace=False).tolist())
    for k in range(p["n_objects"]):
        radius = min(H, W) * rng.uniform(0.12, 0.2)
        dirn = rng.uniform(0, 2 * math.pi)
        speed = p["speed"] * unit * rng.uniform(0.6, 1.2)
        if k in exit_ids:  # fast enough to leave the frame before the end
            speed = max(speed, (max(H, W) * 0.6 + radius) / max(T - 1, 1))
        v = speed * np.array([math.cos(dirn), math.sin(dirn)])
        if k == 0 or not objects:
            mid = np.array([rng.uniform(0.3, 0.7) * W, rng.uniform(0.3, 0.7) * H])
        else:  # cross object 0's path at mid-clip, so objects occlude each other
            mid = objects[0].centers[int(round(t_mid))] + rng.normal(0, 0.1 * radius, 2)
        centers = mid[None] + v[None] * (tt[:, None] - t_mid)
        if k in exit_ids:  # exit ones start inside the frame and drive out
            start = np.array([rng.uniform(0.35, 0.65) * W, rng.uniform(0.35, 0.65) * H])
            centers = start[None] + v[None] * tt[:, None]
        rot = p["rotation"] * rng.uniform(-1, 1)
        angles = rng.uniform(0, 2 * math.pi) + rot * tt / max(T - 1, 1)
        scales = 1.0 + p["scale"] * np.sin(2 * math.pi * tt / max(T, 2) * rng.uniform(0.5, 1.0)
                                             + rng.uniform(0, 2 * math.pi))
        amp = p["warp"] * unit * rng.uniform(0.6, 1.0)
        lam = max(rng.uniform(0.8, 1.5) * radius, amp * 2 * math.pi / _WARP_LIPSCHITZ if amp else 1.0)
        shape_amp = rng.uniform(0.0, 0.25)
        size = 2 * int(math.ceil(radius * (1 + shape_amp) + amp + 3)) + 1
        objects.append(SceneObject(make_texture(rng, size, size), radius, shape_amp, int(rng.integers(2, 6)),
                                   rng.uniform(0, 2 * math.pi), centers, angles, scales, amp, lam,
                                   rng.uniform(0.1, 0.4) if amp else 0.0,
                                   (rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi))))
    light = None
    if p["light"]:
        light = 1.0 + p["light"] * np.sin(2 * math.pi * tt / max(T, 2) + rng.uniform(0, 2 * math.pi))
    return Scene(H, W, background, offsets, objects, p["noise"], light)


def sample_points(rng: np.random.Generator, scene: Scene, labels: np.ndarray, n: int,
                  fg_fraction: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``n`` points, each visible at a random frame (like TAP-Vid's annotators, who clicked points
    at any frame): (layers (n,), canonical coords (n, 2))."""
    T = scene.num_frames
    layers, canon = [], []
    tries = 0
    while len(layers) < n:
        tries += 1
        if tries > 100 * n:
            raise RuntimeError("could not sample visible points; scene too cluttered")
        t = int(rng.integers(0, T))
        fg = rng.random() < fg_fraction and scene.objects
        k = int(rng.integers(0, len(scene.objects))) if fg else -1
        ys, xs = np.nonzero(labels[t] == k)
        if len(ys) == 0:
            continue
        j = int(rng.integers(0, len(ys)))
        xy = np.array([xs[j], ys[j]], np.float64) + rng.uniform(-0.45, 0.45, 2)
        c = xy + scene.bg_offsets[t] if k < 0 else scene.objects[k].to_canonical(xy, t)
        if k >= 0 and not scene.objects[k].inside(c):
            continue
        _, occ = track_points(scene, np.array([k]), c[None])
        if occ[0, t]:
            continue  # the sub-pixel jitter moved it behind a front object's edge
        layers.append(k)
        canon.append(c)
    return np.array(layers, np.int64), np.array(canon, np.float64)


def generate_video(seed: int, difficulty: str = "medium", num_frames: int = 24, height: int = 192,
                   width: int = 256, num_points: int = 32, return_scene: bool = False) -> dict:
    """One video in the TAP-Vid dict layout: ``video`` uint8 (T,H,W,3), ``points`` float32 (N,T,2)
    normalised (x, y) (corner convention), ``occluded`` bool (N,T). With ``return_scene`` also
    ``scene``, ``labels``, ``layers``, ``tracks_px`` (pixel-centre) for tests."""
    rng = np.random.default_rng([seed, list(DIFFICULTIES).index(difficulty) if difficulty in DIFFICULTIES else 99])
    scene = sample_scene(rng, difficulty, num_frames, height, width)
    scene.seed = seed
    frames, labels = render(scene, np.random.default_rng([seed, 7]))
    layers, canon = sample_points(rng, scene, labels, num_points)
    xy, occ = track_points(scene, layers, canon)
    points = ((xy + 0.5) / np.array([width, height])).astype(np.float32)
    out = {"video": frames, "points": points, "occluded": occ}
    if return_scene:
        out.update(scene=scene, labels=labels, layers=layers, tracks_px=xy)
    return out


def generate_benchmark(path: str | Path, difficulty: str = "medium", num_videos: int = 5, seed: int = 0,
                       num_frames: int = 24, height: int = 192, width: int = 256,
                       num_points: int = 32) -> Path:
    """Write ``num_videos`` videos as a TAP-Vid DAVIS-style pickle (atomically). Same arguments ->
    byte-identical file."""
    data = {}
    for i in tqdm(range(num_videos), desc=f"synthetic {difficulty}", leave=False):
        v = generate_video(seed * 1000 + i, difficulty, num_frames, height, width, num_points)
        data[f"{difficulty}_{i:03d}"] = v
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            pickle.dump(data, fh, protocol=4)
    return path
