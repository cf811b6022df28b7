"""Co-Settle losses, following the authors' code (spec §3, §5).

Shapes: tokens are (B, N, C) with N = gh*gw patch tokens of one frame.

* :func:`cycle_loss` -- L2-normalise tokens, 2x2 average-pool to nodes (NOT re-normalised), affinities
  = dot products / tau, softmax over targets, walk t1 -> t2 -> t1(PEA), cross-entropy of
  ``log(S + eps)`` against the identity (= mean -log(S_ii + eps) up to ~M*eps).
* :func:`kl_anchor` -- KL(softmax_channels(z) || softmax_channels(p)) on the L2-normalised un-pooled
  tokens, ``batchmean`` (sum over frames x tokens x channels, divided by B only).
* :func:`cosettle_loss` -- L_cyc + lambda * L_reg. Everything runs in float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import UserError


@dataclass
class LossConfig:
    tau: float = 0.03          # softmax temperature of the walk (argparse default 0.1 is not used)
    pool: int = 2              # node pooling (kernel = stride); 1 disables pooling
    eps: float = 1e-6          # inside log(S + eps)
    lambda_reg: float = 3.0    # weight of the anchor (training scripts; argparse default 1)
    reg: str = "kl"            # "kl" (default) | "mse" | "none"


def pool_nodes(tokens: torch.Tensor, grid: tuple[int, int], pool: int = 2) -> torch.Tensor:
    """(B, gh*gw, C) -> (B, M, C) average-pooled nodes (kernel = stride = ``pool``, floor)."""
    B, N, C = tokens.shape
    gh, gw = grid
    if gh * gw != N:
        raise ValueError(f"grid {grid} does not match {N} tokens")
    if pool <= 1:
        return tokens
    if gh < pool or gw < pool:
        raise UserError(f"feature grid {gh}x{gw} is smaller than the {pool}x{pool} node pooling",
                        "use a larger --input-size")
    x = tokens.transpose(1, 2).reshape(B, C, gh, gw)
    x = F.avg_pool2d(x, kernel_size=pool, stride=pool)
    return x.flatten(2).transpose(1, 2)


def transition(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """Row-stochastic transitions from nodes ``a`` (B,M,C) to nodes ``b`` (B,M',C)."""
    return torch.softmax(torch.bmm(a, b.transpose(1, 2)) / tau, dim=-1)


def walk_loss(S: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Cross-entropy of logits log(S + eps) against target i for row i, mean over B*M rows."""
    B, M, _ = S.shape
    logits = torch.log(S + eps).reshape(B * M, M)
    target = torch.arange(M, device=S.device).repeat(B)
    return F.cross_entropy(logits, target)


def cycle_loss(p1: torch.Tensor, p2: torch.Tensor, p1_back: torch.Tensor, grid: tuple[int, int],
               tau: float = 0.03, pool: int = 2, eps: float = 1e-6):
    """Walk t1 -> t2 -> t1' (t1' = the PEA copy of t1). Returns (loss, stats).

    stats (logged only): ``acc`` = mean(argmax_j S_ij == i), ``sim_identity`` = cos(flat S, flat I).
    """
    n1, n2, n1b = (pool_nodes(F.normalize(t.float(), dim=-1), grid, pool) for t in (p1, p2, p1_back))
    S = torch.bmm(transition(n1, n2, tau), transition(n2, n1b, tau))
    loss = walk_loss(S, eps)
    with torch.no_grad():
        M = S.shape[-1]
        eye = torch.eye(M, device=S.device).expand_as(S)
        acc = (S.argmax(-1) == torch.arange(M, device=S.device)).float().mean()
        sim = F.cosine_similarity(S.flatten(1), eye.flatten(1), dim=1).mean()
    return loss, {"acc": float(acc), "sim_identity": float(sim)}


def kl_anchor(z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(softmax(z) || softmax(p)) over channels; z, p (B, F, N, C) already L2-normalised.

    ``batchmean`` as in the code: the sum over all F*N*C elements divided by B only.
    """
    B = z.shape[0]
    return F.kl_div(torch.log_softmax(p.float(), dim=-1), torch.softmax(z.float(), dim=-1),
                    reduction="sum") / B


def mse_anchor(z: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``--reg_loss mse`` (honoured only by the authors' MAE and DINO files): mean squared error."""
    return F.mse_loss(p.float(), z.float())


def cosettle_loss(z: torch.Tensor, p: torch.Tensor, grid: tuple[int, int], cfg: LossConfig | None = None):
    """Total loss. ``z`` frozen tokens and ``p`` projected tokens, both (B, 3, N, C) in the order
    (t1, t2, t1-PEA). Returns (loss, stats dict of floats)."""
    cfg = cfg or LossConfig()
    pn = F.normalize(p.float(), dim=-1)
    l_cyc, stats = cycle_loss(pn[:, 0], pn[:, 1], pn[:, 2], grid, cfg.tau, cfg.pool, cfg.eps)
    if cfg.reg == "none" or cfg.lambda_reg == 0:
        l_reg = torch.zeros((), device=p.device)
    else:
        zn = F.normalize(z.float(), dim=-1)
        if cfg.reg == "kl":
            l_reg = kl_anchor(zn, pn)
        elif cfg.reg == "mse":
            l_reg = mse_anchor(zn, pn)
        else:
            raise UserError(f"unknown regulariser {cfg.reg!r}", "use kl, mse or none")
    loss = l_cyc + cfg.lambda_reg * l_reg
    stats.update(l_cyc=float(l_cyc.detach()), l_reg=float(l_reg.detach()))
    return loss, stats
