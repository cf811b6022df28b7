"""The Co-Settle training loop (spec §3, §6).

Per batch: the frozen encoder runs under ``inference_mode`` on t1 and t2 (normal position embedding,
one batched pass) and on t1 again with PEA; the fp32 projector (the only trainable, DDP-wrapped
module) maps the three token sets in one call; loss = L_cyc + lambda * L_reg.

Exact resume: the checkpoint holds projector, optimizer, GradScaler, global step, epoch and batch
position. Everything stochastic is a pure function of (seed, epoch, index) for data and of
(seed, rank, step) for PEA windows, so the batches and windows after a resume are exactly those an
uninterrupted run would have seen. Checkpoints are loaded with ``weights_only=True`` (our own files
hold only tensors and plain Python values).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ..backends.registry import load_backend
from ..backends.timm_vit import TimmViTBackend
from ..config import dump_yaml, to_dict
from ..data import IMAGENET_MEAN, IMAGENET_STD, ClipPairDataset, ResumableSampler, discover_clips
from ..errors import UserError
from ..io.atomic import atomic_path, write_json
from ..losses import LossConfig, cosettle_loss
from ..pea import PEA
from ..progress import tqdm
from ..projector import Projector
from ..projector_io import save_projector
from ..provenance import write_run_info
from ..released import ensure_registered
from .config import TrainConfig
from .dist import DistContext, all_reduce_mean, barrier, cleanup, init_distributed
from .optim import absolute_lr, build_optimizer, lr_at, set_lr

log = logging.getLogger(__name__)


def _mix_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def build_encoder(cfg: TrainConfig, device: torch.device):
    """The frozen encoder: any FeatureBackend. The trainer only uses its small interface:
    ``forward_tokens(x, position_transform=...)``, ``position_encoding``, ``token_metadata()``,
    ``autocast()`` / ``autocast_dtype()``, ``input_size()``, ``mean``/``std``."""
    kw: dict[str, Any] = dict(layer=cfg.layer, norm=cfg.norm, device=device, precision=cfg.precision,
                              seed=cfg.seed)
    if cfg.weights is not None:
        kw["weights"] = cfg.weights
    if cfg.stride is not None:
        kw["stride"] = cfg.stride
    if cfg.trust_checkpoint:
        kw["allow_pickle"] = True
    if "+" in cfg.backend:
        raise UserError(f"cannot train a projector on the projected backend {cfg.backend!r}",
                        "train on its base backend (the name before '+')")
    if cfg.backend.startswith("timm:"):  # e.g. an imported released encoder (cosettle_vit_...)

        ensure_registered(cfg.backend[len("timm:"):])
    if cfg.backend == "dsift":
        for k in ("layer", "norm", "precision", "seed"):
            kw.pop(k)
    enc = load_backend(cfg.backend, **kw)
    if enc.input_size(cfg.input_size, cfg.input_size) != (cfg.input_size, cfg.input_size):
        h, _ = enc.input_size(cfg.input_size, cfg.input_size)
        raise UserError(f"--input-size {cfg.input_size} is not a valid input size for {enc.name} "
                        f"(patch {enc.patch_size}, stride {enc.stride})", f"use --input-size {h}")
    return enc


def input_normalization(cfg: TrainConfig, encoder) -> tuple[tuple, tuple]:
    """(mean, std) for the training frames: the authors use ImageNet stats for every (ViT) encoder;
    other backends get their own (dsift expects raw [0, 1] RGB, mean 0 / std 1)."""
    mode = cfg.normalize
    if mode == "auto":
        mode = "imagenet" if isinstance(encoder, TimmViTBackend) else "backend"
    if mode == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(encoder.mean), tuple(encoder.std)


def pairs_per_clip(cfg: TrainConfig, n_clips: int) -> int:
    if cfg.pairs_per_clip:
        return int(cfg.pairs_per_clip)
    return max(1, -(-int(cfg.min_epoch_pairs) // max(1, n_clips)))


class Trainer:
    def __init__(self, cfg: TrainConfig, ctx: DistContext | None = None):
        self.cfg = cfg.validate()
        self.ctx = ctx or init_distributed(cfg.device)
        self.device = self.ctx.device
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints"
        torch.manual_seed(_mix_seed(cfg.seed, self.ctx.rank))
        clips = discover_clips(cfg.data)
        self.encoder = build_encoder(cfg, self.device)
        self.ac_dtype = self.encoder.autocast_dtype()
        self.projector = Projector(self.encoder.feat_dim, variant=cfg.variant, init=cfg.init,
                                   seed=cfg.seed).to(self.device)  # same init on every rank
        self.model = self.projector
        if self.ctx.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.projector, device_ids=ids)
        total_batch = cfg.batch_size * self.ctx.world_size
        self.base_lr = absolute_lr(cfg.blr, total_batch, cfg.lr)
        self.optimizer = build_optimizer(self.projector, self.base_lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
        use_scaler = self.device.type == "cuda" and self.ac_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.loss_cfg = LossConfig(cfg.tau, cfg.pool, cfg.eps, cfg.lambda_reg, cfg.reg)
        self.pea = PEA(cfg.pea_ratio, seed=cfg.seed)
        mean, std = input_normalization(cfg, self.encoder)
        self.pairs_per_clip = pairs_per_clip(cfg, len(clips))
        self.dataset = ClipPairDataset(clips, cfg.input_size, cfg.gap_spec(), (cfg.crop_scale_min, 1.0),
                                       flip_p=cfg.flip_p, mean=mean, std=std, seed=cfg.seed,
                                       pairs_per_clip=self.pairs_per_clip)
        self.sampler = ResumableSampler(len(self.dataset), self.ctx.world_size, self.ctx.rank, True, cfg.seed,
                                        cfg.batch_size)
        self.steps_per_epoch = self.sampler.batches_per_epoch()
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, int(cfg.max_steps))
        self.step = 0  # optimizer steps done
        self.history: list[dict[str, float]] = []
        if self.ctx.is_main:
            meta = self.encoder.token_metadata()
            tokens = "+".join(map(str, meta["hypercolumn"])) if meta.get("hypercolumn") else meta["layer"]
            log.info("Co-Settle: %d clips x %d pairs, %d steps/epoch x %d epochs, batch %d x %d, lr %.3g, "
                     "encoder %s (layer %s, norm %s, position encoding %s -> PEA %s), %s autocast", len(clips),
                     self.pairs_per_clip, self.steps_per_epoch, cfg.epochs, cfg.batch_size, self.ctx.world_size,
                     self.base_lr, self.encoder.name, tokens, meta["norm"], meta["position_encoding"],
                     "on" if self.use_pea else "off", self.ac_dtype)

    @property
    def use_pea(self) -> bool:
        """PEA where the backend has position encodings (added or rotary), none where it has not."""
        return bool(self.cfg.pea and self.encoder.position_encoding is not None)

    # -- one step --------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 2, 3, S, S) -> frozen tokens (B, 3, N, C) for (t1, t2, t1-PEA), float32."""
        B = x.shape[0]
        x1, x2 = x[:, 0], x[:, 1]
        with torch.inference_mode(), self.encoder.autocast():
            z12, grid = self.encoder.forward_tokens(torch.cat([x1, x2]))
            if self.use_pea:
                z1b, _ = self.encoder.forward_tokens(x1, position_transform=self.pea)
            else:  # no PEA: the return copy of t1 is the same pass
                z1b = z12[:B]
            z = torch.stack([z12[:B], z12[B:], z1b], dim=1).float()
        return z.clone(), grid  # clone outside inference_mode -> a normal tensor autograd can save

    def forward_loss(self, x: torch.Tensor):
        z, grid = self.encode(x)
        p = self.model(z)
        return cosettle_loss(z, p, grid, self.loss_cfg)

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        epoch_f = self.step / self.steps_per_epoch
        lr = lr_at(epoch_f, self.base_lr, self.cfg.min_lr, self.cfg.warmup_epochs, self.cfg.epochs)
        set_lr(self.optimizer, lr)
        self.pea.generator.manual_seed(_mix_seed(self.cfg.seed, self.ctx.rank, self.step, 7))
        self.projector.train()
        loss, stats = self.forward_loss(x.to(self.device, non_blocking=True))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {self.step}: {stats}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        stats.update(loss=float(loss.detach()), lr=lr)
        return stats

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self, epoch: int, batch_in_epoch: int) -> dict[str, Any]:
        return {"projector": self.projector.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "epoch": epoch,
                "batch_in_epoch": batch_in_epoch, "world_size": self.ctx.world_size,
                "torch_rng": torch.get_rng_state(), "config": to_dict(self.cfg)}

    def save_checkpoint(self, epoch: int, batch_in_epoch: int, tag: str | None = None) -> None:
        if not self.ctx.is_main:
            return
        state = self.state_dict(epoch, batch_in_epoch)
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        for name in ["last.pt"] + ([f"{tag}.pt"] if tag else []):
            with atomic_path(self.ckpt_dir / name) as tmp:
                torch.save(state, tmp)

    def load_checkpoint(self, path: Path) -> tuple[int, int]:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:
            raise UserError(f"cannot read checkpoint {path}: {type(err).__name__}",
                            "delete it to start over, or pass --resume false") from None
        if state.get("world_size") != self.ctx.world_size:
            raise UserError(f"checkpoint {path} was written by {state.get('world_size')} process(es), "
                            f"this run has {self.ctx.world_size}", "resume with the same number of processes")
        old = state.get("config", {})
        for key in ("backend", "batch_size", "input_size", "variant", "layer", "norm", "epochs"):
            if key in old and old[key] != getattr(self.cfg, key):
                raise UserError(f"checkpoint {path} has {key}={old[key]!r}, this run {getattr(self.cfg, key)!r}",
                                "use the same settings, another --out, or --resume false")
        self.projector.load_state_dict(state["projector"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        return int(state["epoch"]), int(state["batch_in_epoch"])

    def export_projector(self, epoch: int) -> Path | None:
        if not self.ctx.is_main:
            return None
        tok = self.encoder.token_metadata()
        meta = {"base_backend": self.cfg.backend, "timm_name": tok["timm_name"], "weights": self.cfg.weights,
                "layer": tok["layer"], "depth": tok["depth"], "norm": tok["norm"],
                "hypercolumn": tok.get("hypercolumn"),
                "patch_size": tok["patch_size"], "stride": tok["stride"],
                "position_encoding": tok["position_encoding"], "pea": self.use_pea,
                "train_input_size": self.cfg.input_size,
                "mean": list(self.dataset.mean.flatten().tolist()), "std": list(self.dataset.std.flatten().tolist()),
                "step": self.step, "epoch": epoch, "training": to_dict(self.cfg), "source": "trained"}
        return save_projector(self.out / "projector.safetensors", self.projector, meta)

    # -- loop ------------------------------------------------------------------------------------
    def _loader(self, epoch: int, start_batch: int):
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch, start_batch)
        nw = self.cfg.num_workers
        return torch.utils.data.DataLoader(self.dataset, batch_size=self.cfg.batch_size, sampler=self.sampler,
                                           num_workers=nw, drop_last=True, pin_memory=self.device.type == "cuda",
                                           persistent_workers=False, prefetch_factor=2 if nw else None)

    def _log(self, record: dict[str, Any]) -> None:
        if self.ctx.is_main:
            with open(self.out / "log.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def _trim_log(self, step: int) -> None:
        """Keep log lines up to ``step`` (a fresh run: none; a resumed one: drop the steps after the
        checkpoint that will be re-done)."""
        path = self.out / "log.jsonl"
        if not path.is_file():
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:  # a line cut by the kill
                continue
        with atomic_path(path) as tmp:
            tmp.write_text("".join(x + "\n" for x in keep))

    def run(self) -> list[dict[str, float]]:
        cfg = self.cfg
        start_epoch, start_batch = 0, 0
        last = self.ckpt_dir / "last.pt"
        if cfg.resume and last.is_file():
            start_epoch, start_batch = self.load_checkpoint(last)
            if start_batch >= self.steps_per_epoch:
                start_epoch, start_batch = start_epoch + 1, 0
            if self.ctx.is_main:
                log.info("resumed from %s at step %d (epoch %d, batch %d)", last, self.step, start_epoch, start_batch)
        if self.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)

            self._trim_log(self.step)
            dump_yaml(cfg, self.out / "config.yaml")
            write_run_info(self.out, {"world_size": self.ctx.world_size, "resumed_at_step": self.step})
        bar = tqdm(total=self.total_steps, initial=self.step, desc="co-settle", unit="step",
                   disable=not (cfg.progress and self.ctx.is_main), dynamic_ncols=True)
        done = self.step >= self.total_steps
        epoch = start_epoch
        for epoch in range(start_epoch, cfg.epochs):
            if done:
                break
            batch_i = start_batch if epoch == start_epoch else 0
            t_data = time.perf_counter()
            for x in self._loader(epoch, batch_i):
                t0 = time.perf_counter()
                stats = self.train_step(x)
                dt = time.perf_counter() - t0
                stats["data_s"] = t0 - t_data  # time spent waiting for this batch (I/O-bound if large)
                batch_i += 1
                stats = all_reduce_mean(stats, self.ctx)
                stats.update(step=self.step, epoch=epoch, batch=batch_i,
                             samples_per_s=cfg.batch_size * self.ctx.world_size / max(dt, 1e-9))
                self.history.append(stats)
                if self.step % cfg.log_every == 0 or self.step == 1:
                    self._log({k: (round(v, 6) if isinstance(v, float) and k != "lr" else v) for k, v in stats.items()})
                bar.set_postfix(loss=f"{stats['loss']:.4f}", acc=f"{stats['acc']:.3f}", lr=f"{stats['lr']:.2e}")
                bar.update(1)
                end_of_epoch = batch_i == self.steps_per_epoch
                done = self.step >= self.total_steps
                saved = True
                if end_of_epoch:
                    self.save_checkpoint(epoch, batch_i, tag=f"epoch_{epoch:03d}")
                    self.export_projector(epoch)
                elif done:
                    self.save_checkpoint(epoch, batch_i)
                    self.export_projector(epoch)
                elif self.step % cfg.save_every == 0:
                    self.save_checkpoint(epoch, batch_i)
                else:
                    saved = False
                if saved:
                    barrier(self.ctx)  # no rank runs ahead of a checkpoint being written
                if cfg.kill_after_step and self.step == cfg.kill_after_step:
                    os.kill(os.getpid(), signal.SIGKILL)  # fault injection: die like `kill -9`
                if done:
                    break
                t_data = time.perf_counter()
        bar.close()
        if self.ctx.is_main and not (self.out / "projector.safetensors").exists():
            self.export_projector(epoch)
        if self.ctx.is_main:
            write_json(self.out / "summary.json", {"steps": self.step, "final": self.history[-1] if self.history else None,
                                                   "projector": str(self.out / "projector.safetensors")})
        return self.history


def train(cfg: TrainConfig) -> list[dict[str, float]]:
    """Run training in this process (or in each torchrun process); returns the per-step stats."""
    ctx = init_distributed(cfg.device)
    try:
        return Trainer(cfg, ctx).run()
    finally:
        cleanup(ctx)
