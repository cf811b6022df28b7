"""The Co-Settle projector: a small per-token map g shared across frames (spec §2).

Variants (``variant=``):
    ``linear``     Linear(C->C) -> Tanh -> LayerNorm(C). The authors' code (``--fusion_net linear``);
                   the default. 592,128 parameters at C = 768.
    ``linear-ln``  Linear -> LayerNorm, the paper's wording (no Tanh). Same parameter count.
    ``mlp2``       Linear -> Tanh -> Linear -> LayerNorm   (authors' ablation)
    ``mlp3``       Linear -> Tanh -> Linear -> Tanh -> Linear -> LayerNorm

The projector always computes in float32, even inside a bf16/fp16 autocast region: the authors'
CLIP path cast it to fp16 and GradScaler then rejected its gradients (spec §2, "CLIP quirk").
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .errors import UserError

VARIANTS = ("linear", "linear-ln", "mlp2", "mlp3")
INITS = ("trunc_normal", "xavier", "torch", "orthogonal")


def _layers(variant: str, c_in: int, c_out: int) -> list[tuple[str, nn.Module]]:
    if variant == "linear":
        return [("fc1", nn.Linear(c_in, c_out)), ("act1", nn.Tanh()), ("norm", nn.LayerNorm(c_out))]
    if variant == "linear-ln":
        return [("fc1", nn.Linear(c_in, c_out)), ("norm", nn.LayerNorm(c_out))]
    if variant == "mlp2":
        return [("fc1", nn.Linear(c_in, c_out)), ("act1", nn.Tanh()), ("fc2", nn.Linear(c_out, c_out)),
                ("norm", nn.LayerNorm(c_out))]
    if variant == "mlp3":
        return [("fc1", nn.Linear(c_in, c_out)), ("act1", nn.Tanh()), ("fc2", nn.Linear(c_out, c_out)),
                ("act2", nn.Tanh()), ("fc3", nn.Linear(c_out, c_out)), ("norm", nn.LayerNorm(c_out))]
    raise UserError(f"unknown projector variant {variant!r}", f"choose one of {', '.join(VARIANTS)}")


class Projector(nn.Module):
    """(..., C_in) tokens -> (..., C_out), float32. Holds its own ``variant``/dims for saving."""

    def __init__(self, in_dim: int, out_dim: int | None = None, variant: str = "linear",
                 init: str = "trunc_normal", seed: int | None = None):
        super().__init__()
        self.in_dim = int(in_dim)
        self.out_dim = int(out_dim or in_dim)
        self.variant = variant
        self.net = nn.Sequential(OrderedDict(_layers(variant, self.in_dim, self.out_dim)))
        self.reset_parameters(init, seed)

    def reset_parameters(self, init: str = "trunc_normal", seed: int | None = None) -> None:
        """Linear init per the authors' encoder files: trunc_normal(0.02) for DINO/DINOv2/iBOT/BLIP/
        I-JEPA, xavier_uniform for MAE/MoCo v3, PyTorch's default for CLIP; biases 0, LN (1, 0).
        ``orthogonal`` (ours): singular values all 0.02*sqrt(C_in), the trunc_normal scale."""
        if init not in INITS:
            raise UserError(f"unknown projector init {init!r}", f"choose one of {', '.join(INITS)}")
        gen = None
        if seed is not None:
            gen = torch.Generator().manual_seed(int(seed))
        for m in self.net:
            if isinstance(m, nn.Linear):
                if init == "trunc_normal":
                    with torch.no_grad():
                        w = torch.empty_like(m.weight)
                        # the authors' timm trunc_normal_(std=.02): cut at +-2 ABSOLUTE (a=-2, b=2),
                        # i.e. ~100 sigma -- effectively untruncated, std 0.0200 (+-2 sigma gave 0.0176)
                        nn.init.trunc_normal_(w, std=0.02, a=-2.0, b=2.0, generator=gen)
                        m.weight.copy_(w)
                    nn.init.zeros_(m.bias)
                elif init == "xavier":
                    nn.init.xavier_uniform_(m.weight, generator=gen)
                    nn.init.zeros_(m.bias)
                elif init == "orthogonal":
                    # Our addition (not in the authors' files): a scaled isometry with the Frobenius norm of
                    # trunc_normal(0.02). A square Gaussian matrix spreads its singular values from ~0 to
                    # 2x, which already distorts the input's similarities before any training.
                    gain = 0.02 * m.in_features ** 0.5
                    nn.init.orthogonal_(m.weight, gain=gain, generator=gen)
                    nn.init.zeros_(m.bias)
                elif init == "torch" and gen is not None:
                    # nn.Linear's own init, but reproducible
                    bound = 1.0 / m.in_features ** 0.5
                    with torch.no_grad():
                        m.weight.uniform_(-bound, bound, generator=gen)
                        m.bias.uniform_(-bound, bound, generator=gen)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.net(x.float())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, in_dim={self.in_dim}, out_dim={self.out_dim}"


def build_projector(in_dim: int, variant: str = "linear", out_dim: int | None = None,
                    init: str = "trunc_normal", seed: int | None = 0) -> Projector:
    return Projector(in_dim, out_dim, variant, init, seed)
