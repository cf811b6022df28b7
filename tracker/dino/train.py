"""Test-time training of DeltaDINO + TrackerHead on one preprocessed video (dino_tracker.md §4).

Checkpoints ``ckpt_<iter>.pt`` (weights, optimiser, RNG states) are written atomically every
``checkpoint_every`` iterations; ``train`` resumes from the latest one, so an interrupted run continues
where it stopped and gives the same result as an uninterrupted one.

Differences from the reference: raw features are multiplied by one global scale so that the mean token
norm is sqrt(C) (per-channel RMS 1) -- cosine losses are unaffected, and the BN gamma init (0.05) then
means the same relative residual for any backend (dsift, DINOv2, Co-Settle; spec §11 F3). The cycle
loss draws its points once (the reference resamples until one survives) and pairs with s == t are
skipped in the refined best-buddy loss (their mutual NNs are the identity).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from cosettle.hashing import verify_checksum
from cosettle.io.atomic import write_json
from cosettle.io.verified import load_verified, remove_verified, save_verified
from cosettle.progress import tqdm

from ..config import TrackerConfig, scaled_px, train_switch
from ..eta import StageTimes
from . import losses as L
from .models import DinoTrackerModel
from .sampler import TrajectorySampler
from .sampling import l2n, sample_frames, sample_points

log = logging.getLogger(__name__)


def feature_scale(features: torch.Tensor, max_frames: int = 8) -> float:
    """Global factor making the mean token norm sqrt(C) (computed on <= max_frames even frames)."""
    t = features.shape[0]
    idx = np.unique(np.linspace(0, t - 1, min(t, max_frames)).round().astype(int))
    norms = torch.stack([features[i].float().norm(dim=0).mean() for i in idx])
    return float(math.sqrt(features.shape[1]) / norms.mean().clamp_min(1e-12))


def build_model(feat_dim: int, cfg: TrackerConfig) -> DinoTrackerModel:
    torch.manual_seed(cfg.seed)
    return DinoTrackerModel(feat_dim, cfg.cnn_width, cfg.bn_gamma, cfg.head_width,
                            cfg.softargmax_radius_cells, cfg.cnn_last_kernel)


def frames_tensor(frames: np.ndarray, idx) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(frames[np.asarray(idx)]))
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint whose content matches its checksum (``ckpt_*.pt.blake2b``).

    A truncated or corrupt newer one (full disk, a copied-in file, bit rot) costs one log line and is
    removed; the next older valid one is used (training redoes the lost iterations).
    """
    for path in sorted(Path(ckpt_dir).glob("ckpt_*.pt"), reverse=True):
        why = verify_checksum(path)
        if why is None:
            return path
        log.warning("checkpoint %s is unusable (%s); falling back to an older one", path, why)
        remove_verified(path)
    return None


def _save(path: Path, model, opt, it: int, rng: np.random.Generator) -> None:
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "iteration": it,
             "np_rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state()}
    save_verified(state, path)  # a checkpoint without its checksum is treated as incomplete


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint after verifying its checksum (ValueError if it does not match)."""
    try:
        return load_verified(path)
    except ValueError as err:
        raise ValueError(f"checkpoint {path}: {err}") from None


@dataclass
class Coverage:
    """How much supervision the iterations of this process actually received.

    A DINO best-buddy pair drawn by the trainer counts as *missing* when no best buddies were computed
    for it (it then contributes nothing), *empty* when they were computed and there are none, *used*
    otherwise. ``active`` counts the iterations in which each loss term was non-zero.
    """
    iterations: int = 0
    dbb_pairs_drawn: int = 0
    dbb_pairs_used: int = 0
    dbb_pairs_missing: int = 0
    dbb_pairs_empty: int = 0
    dbb_points: int = 0
    active: dict = field(default_factory=dict)

    def count_iteration(self, parts: dict) -> None:
        self.iterations += 1
        for k, v in parts.items():
            if bool(v.detach() != 0):
                self.active[k] = self.active.get(k, 0) + 1

    def save(self, path: Path, iteration: int) -> None:
        write_json(path, {"iteration": iteration, **asdict(self)})

    @classmethod
    def load(cls, path: Path, iteration: int) -> "Coverage":
        """The counts saved with checkpoint ``iteration``; empty counts (logged) when absent or stale."""
        try:
            d = json.loads(Path(path).read_text())
            if int(d.pop("iteration")) == iteration:
                return cls(**d)
        except (OSError, ValueError, TypeError, KeyError):
            pass
        log.info("no supervision coverage saved for iteration %d: counting from here", iteration)
        return cls()

    def summary(self) -> dict:
        it = max(1, self.iterations)
        drawn = max(1, self.dbb_pairs_drawn)
        return {"iterations": self.iterations,
                "dbb_pairs_per_iteration": round(self.dbb_pairs_drawn / it, 3),
                "dbb_pairs_used_per_iteration": round(self.dbb_pairs_used / it, 3),
                "dbb_used_share": round(self.dbb_pairs_used / drawn, 4),
                "dbb_missing_share": round(self.dbb_pairs_missing / drawn, 4),
                "dbb_empty_share": round(self.dbb_pairs_empty / drawn, 4),
                "dbb_points_per_iteration": round(self.dbb_points / it, 1),
                "active_share": {k: round(v / it, 4) for k, v in sorted(self.active.items())}}


class Trainer:
    def __init__(self, prep, cfg: TrackerConfig, ckpt_dir: Path | None = None):
        self.prep = prep
        self.cfg = cfg
        self.geom = prep.geometry
        self.hw = (self.geom.input_h, self.geom.input_w)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        self.device = torch.device(cfg.device)
        self.scale = feature_scale(prep.features)
        self.model = build_model(prep.features.shape[1], cfg).to(self.device)
        self.sampler = TrajectorySampler(prep.trajectories, prep.traj_fg, cfg.batch_size,
                                         cfg.fg_traj_ratio, cfg.batch_n_frames,
                                         separate_frames=cfg.separate_fg_bg_frames,
                                         frame_stride=cfg.train_frame_stride)
        self._opt: torch.optim.Adam | None = None  # built when training runs (see ``opt``)
        self.rng = np.random.default_rng(cfg.seed)
        self.masks = np.asarray(prep.masks, bool)
        self.cyc_thresh = scaled_px(cfg.cyc_thresh_px, self.geom.input_h)
        self.start = 0
        self.resumed_from: str | None = None  # the checkpoint ``resume`` loaded
        self.history: list[dict] = []
        self.coverage = Coverage()
        # told of the session (begin / saved / end): the Tracker's ``fit_info.FitRecord``; None: nothing recorded
        self.record = None

    @property
    def opt(self) -> torch.optim.Adam:
        """The optimizer, built on first use: a finished fit (a cached re-run) never builds one -- the first
        optimizer of a process imports torch._dynamo, 4 s of a 7.7-s cached demo re-run."""
        if self._opt is None:
            self._opt = torch.optim.Adam([
                {"params": self.model.delta.parameters(), "lr": self.cfg.lr_delta},
                {"params": self.model.head.parameters(), "lr": self.cfg.lr_head}])
        return self._opt

    # -- checkpoints -------------------------------------------------------------------------
    def resume(self) -> int:
        if self.ckpt_dir is None:
            return 0
        while True:  # the newest checkpoint that verifies AND loads
            path = latest_checkpoint(self.ckpt_dir)
            if path is None:
                return 0
            try:
                st = load_checkpoint(path)
                break
            except Exception as err:  # passes its checksum but torch refuses it (a foreign file)
                log.warning("checkpoint %s does not load (%s: %s); falling back to an older one", path,
                            type(err).__name__, str(err).splitlines()[0][:120])
                remove_verified(path)
        self.model.load_state_dict(st["model"])
        if int(st["iteration"]) < self.cfg.iterations:  # training goes on from here: its optimizer state too
            self.opt.load_state_dict(st["opt"])
        self.rng.bit_generator.state = json.loads(st["np_rng"])
        torch.set_rng_state(st["torch_rng"])
        self.start = int(st["iteration"])
        self.resumed_from = path.name
        log.info("resuming training from %s (iteration %d)", path.name, self.start)
        self.coverage = Coverage.load(self.ckpt_dir / "coverage.json", self.start)
        return self.start

    def save(self, it: int) -> None:
        if self.ckpt_dir is None:
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        _save(self.ckpt_dir / f"ckpt_{it:07d}.pt", self.model, self.opt, it, self.rng)
        for old in sorted(self.ckpt_dir.glob("ckpt_*.pt"))[:-2]:  # keep the last two
            remove_verified(old)
        self.coverage.save(self.ckpt_dir / "coverage.json", it)
        if self.record is not None:
            self.record.saved(it)

    # -- one iteration -------------------------------------------------------------------------
    def _set_lr(self, it: int) -> None:
        c = self.cfg
        self.opt.param_groups[0]["lr"] = c.lr_delta * c.scheduler_gamma ** (it // c.scheduler_every)
        self.opt.param_groups[1]["lr"] = c.lr_head  # the head's lr stays constant (reference)

    def _split_fg(self, frame: int, xy: np.ndarray, n: int, ratio: float) -> np.ndarray:
        """Indices of <= round(n*ratio) FG + the rest BG points (by the mask at ``frame``)."""
        if len(xy) == 0:
            return np.zeros(0, np.int64)
        m = self.masks[frame]
        xi = np.clip(np.round(xy[:, 0]).astype(int), 0, m.shape[1] - 1)
        yi = np.clip(np.round(xy[:, 1]).astype(int), 0, m.shape[0] - 1)
        fg = m[yi, xi]
        n_fg = int(round(n * ratio))
        fi, bi = np.flatnonzero(fg), np.flatnonzero(~fg)
        fi = self.rng.permutation(fi)[:n_fg]
        bi = self.rng.permutation(bi)[: n - n_fg]
        return np.concatenate([fi, bi])

    def _pairs(self, n_frames: int, n_pairs: int, distinct: bool) -> list[tuple[int, int]]:
        out = []
        for _ in range(n_pairs):
            s = int(self.rng.integers(n_frames))
            t = int(self.rng.integers(n_frames))
            while distinct and t == s and n_frames > 1:
                t = int(self.rng.integers(n_frames))
            out.append((s, t))
        return out

    def _dbb_loss(self, frames, refined):
        c = self.cfg
        bbs = self.prep.best_buddies or {}
        total = refined.new_zeros(())
        cov = self.coverage
        for s, t in self._pairs(len(frames), c.cl_pairs, distinct=True):
            cov.dbb_pairs_drawn += 1
            bb = bbs.get((int(frames[s]), int(frames[t])))
            if bb is None:
                cov.dbb_pairs_missing += 1  # no best buddies computed for this pair: no supervision
                continue
            if len(bb["src"]) == 0:
                cov.dbb_pairs_empty += 1    # computed, but the pair has no best buddy (legitimately)
                continue
            src = np.asarray(bb["src"], np.float32)
            sel = self._split_fg(int(frames[s]), src, c.cl_points, c.cl_fg_ratio)
            if len(sel) == 0:
                continue
            cov.dbb_pairs_used += 1
            cov.dbb_points += len(sel)
            ps = torch.from_numpy(src[sel]).to(self.device)
            pt = torch.from_numpy(np.asarray(bb["dst"], np.float32)[sel]).to(self.device)
            r = torch.as_tensor(np.asarray(bb["r"], np.float32)[sel], device=self.device)
            cs = torch.as_tensor(np.asarray(bb["cos"], np.float32)[sel], device=self.device)
            w = L.bb_weight_dino(r, cs, c.bb_sig_a, c.bb_sig_b)
            fs = sample_points(refined[s], ps, self.geom)
            ft = sample_points(refined[t], pt, self.geom)
            total = total + L.symmetric_nce(fs, refined[s], ft, refined[t], w, c.cl_temp)
        return 0.5 * total / c.cl_div_dbb

    def _rbb_loss(self, frames, refined):
        c = self.cfg
        total = refined.new_zeros(())
        centres = self.geom.cell_centers("input").reshape(-1, 2).astype(np.float32)
        cdim = refined.shape[1]
        for s, t in self._pairs(len(frames), c.cl_pairs, distinct=True):
            if s == t:
                continue
            idx_s, idx_t, aff = L.mutual_nn(refined[s], refined[t])
            if len(idx_s) == 0:
                continue
            sel = self._split_fg(int(frames[s]), centres[idx_s.cpu().numpy()], c.cl_points, c.cl_fg_ratio)
            sel_t = torch.as_tensor(sel, device=self.device)
            fs = refined[s].reshape(cdim, -1)[:, idx_s[sel_t]].t()
            ft = refined[t].reshape(cdim, -1)[:, idx_t[sel_t]].t()
            w = L.bb_weight_refined(aff[sel_t])
            total = total + L.symmetric_nce(fs, refined[s], ft, refined[t], w, c.cl_temp)
        return 0.5 * total / c.cl_div_rbb

    def _cycle_loss(self, frames, refined, refined_n):
        c = self.cfg
        xs, si, ti = [], [], []
        for s, t in self._pairs(len(frames), c.cyc_pairs, distinct=False):
            m = self.masks[int(frames[s])]
            n_fg = int(round(c.cyc_points * c.cyc_fg_ratio))
            yy, xx = np.nonzero(m)
            pf = self.rng.choice(len(xx), size=min(n_fg, len(xx)), replace=False) if len(xx) else []
            yb, xb = np.nonzero(~m)
            n_bg = c.cyc_points - len(pf)
            pb = self.rng.choice(len(xb), size=min(n_bg, len(xb)), replace=False) if len(xb) else []
            pts = np.concatenate([np.stack([xx[pf], yy[pf]], 1), np.stack([xb[pb], yb[pb]], 1)])
            xs.append(pts.astype(np.float32))
            si += [s] * len(pts)
            ti += [t] * len(pts)
        x_s = torch.from_numpy(np.concatenate(xs)).to(self.device)
        si = torch.as_tensor(si, device=self.device)
        ti = torch.as_tensor(ti, device=self.device)
        model, geom = self.model, self.geom
        with torch.no_grad():
            rd, rnd = refined.detach(), refined_n.detach()
            y_t = model.predict(sample_frames(rd, si, x_s, geom), rnd, ti, geom)
            x_back = model.predict(sample_frames(rd, ti, y_t, geom), rnd, si, geom)
            d = (x_back - x_s).norm(dim=1)
            keep = d <= self.cyc_thresh
        if not bool(keep.any()):
            return refined.new_zeros(())
        x_s, y_t, d, si, ti = x_s[keep], y_t[keep], d[keep], si[keep], ti[keep]
        pf = model.predict(sample_frames(refined, si, x_s, geom), refined_n, ti, geom)
        pb = model.predict(sample_frames(refined, ti, y_t, geom), refined_n, si, geom)
        return L.cycle_loss(pf, y_t, pb, x_s, d, self.hw, c.huber_delta, c.cyc_gamma)

    def step(self, it: int) -> dict:
        c, geom, dev = self.cfg, self.geom, self.device
        self._set_lr(it)
        b = self.sampler.sample(self.rng)
        rgb = frames_tensor(self.prep.frames, b.frames).to(dev)
        raw = self.prep.features[torch.as_tensor(b.frames)].float().to(dev) * self.scale
        self.model.train()
        refined = self.model.refine(rgb, raw, geom)
        refined_n = l2n(refined)
        src_fi = torch.from_numpy(b.src_fi).to(dev)
        tgt_fi = torch.from_numpy(b.tgt_fi).to(dev)
        src = sample_frames(refined, src_fi, torch.from_numpy(b.src_xy).to(dev), geom)
        pred = self.model.predict(src, refined_n, tgt_fi, geom)
        parts = {"flow": L.flow_loss(pred, torch.from_numpy(b.tgt_xy).to(dev), self.hw, c.huber_delta)}
        if c.lambda_dbb:
            parts["dbb"] = c.lambda_dbb * self._dbb_loss(b.frames, refined)
        if c.lambda_norm:
            parts["norm"] = c.lambda_norm * L.norm_loss(refined, raw)
        if c.lambda_angle:
            parts["angle"] = c.lambda_angle * L.angle_loss(refined, raw)
        if it >= c.cyc_after and c.lambda_cyc:
            parts["cyc"] = c.lambda_cyc * self._cycle_loss(b.frames, refined, refined_n)
        if it >= c.rbb_after and c.lambda_rbb:
            parts["rbb"] = c.lambda_rbb * self._rbb_loss(b.frames, refined)
        self.coverage.count_iteration(parts)
        loss = sum(parts.values())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {k: float(v.detach()) for k, v in parts.items()} | {"loss": float(loss.detach())}

    def run(self, progress: bool = True, stop_after: int | None = None,
            eta: StageTimes | None = None) -> DinoTrackerModel:
        """Train to ``cfg.iterations`` (resuming). ``stop_after``: stop early (tests of resume). ``eta``: the run's
        time estimate, told of every iteration (None: nothing is estimated)."""
        eta = eta if eta is not None else StageTimes()
        c = self.cfg
        start = self.resume()
        if self.record is not None:
            self.record.begin(start, self.resumed_from)
        if start == 0 and self.ckpt_dir is not None and c.iterations > 0:
            self.save(0)

        bar = tqdm(total=c.iterations, initial=start, desc="train", unit="it", disable=not progress,
                   leave=False)
        t0 = time.perf_counter()
        # the time-left estimate counts only the iterations left after a resume, timed one by one, in two
        # stages: before and after the cycle / refined best-buddy losses start (dearer iterations)

        switch = train_switch(c)

        def eta_stage(i):
            return ("train", i) if i < switch else ("train+cyc", i - switch)

        name, done0 = eta_stage(start)
        eta.begin(name, done=done0)
        for it in range(start, c.iterations):
            if stop_after is not None and it >= stop_after:
                break
            rec = self.step(it)
            done = it + 1
            if done % c.log_every == 0 or done == c.iterations:
                rec["iteration"] = done
                self.history.append(rec)
                log.info("iter %d/%d loss %.5f (%s)", done, c.iterations, rec["loss"],
                         ", ".join(f"{k} {v:.2e}" for k, v in rec.items() if k not in ("loss", "iteration")))
            if done % c.checkpoint_every == 0 or done == c.iterations:
                self.save(done)
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}")
            eta.advance(name)
            if name == "train" and done == switch and done < c.iterations:
                eta.finish("train")
                name = "train+cyc"
                eta.begin(name)
        bar.close()
        if self.record is not None:
            self.record.end()
        if stop_after is None or stop_after >= c.iterations:
            eta.finish(name, cached=start >= c.iterations)
        log.info("training: %d iterations in %.1f s", max(0, c.iterations - start),
                 time.perf_counter() - t0)
        if self.coverage.iterations:
            log.info("supervision coverage: %s", self.coverage.summary())
        self.model.eval()
        return self.model


def train(prep, cfg: TrackerConfig, ckpt_dir: Path | None = None, progress: bool = True):
    """Train (or resume) and return (model in eval mode, feature scale)."""
    tr = Trainer(prep, cfg, ckpt_dir)
    model = tr.run(progress)
    return model, tr.scale
