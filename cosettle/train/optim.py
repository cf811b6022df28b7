"""AdamW with the authors' parameter groups and the per-iteration warm-up + cosine schedule."""
from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; 0 on biases and LayerNorm parameters (all 1-D tensors)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas))


def absolute_lr(blr: float, total_batch: int, lr: float | None = None) -> float:
    """lr = blr * total batch / 256 (linear scaling), unless an absolute lr is given."""
    return float(lr) if lr is not None else blr * total_batch / 256


def lr_at(epoch_f: float, base_lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """Learning rate at fractional epoch ``epoch_f`` (= step / steps_per_epoch)."""
    if epoch_f < warmup_epochs:
        return base_lr * epoch_f / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-12)
    t = min(1.0, (epoch_f - warmup_epochs) / span)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr
