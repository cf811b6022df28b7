"""PEA, positional-encoding augmentation (spec §4), as a ``pos_embed_transform`` for
:meth:`cosettle.backends.timm_vit.TimmViTBackend.forward_tokens`.

The patch position-embedding grid (1, C, gh, gw) is up-sampled bicubically (align_corners=False) to
U = int((1 + r) * side) per side and a random window of the original size is cut out; r = 10 gives
U = 154 for a 14x14 grid (an x11 zoom). One offset per call, i.e. one draw per batch shared by all
samples; CLS/register embeddings are never touched (forward_tokens keeps them). Because the transform
receives the embedding already resampled to the current grid, it works at any input size and for
learned and sin-cos embeddings alike.

Difference from the authors' DINOv2 file: U is computed from the current token grid, not from the
model's configured patch count (their fallback gives U = 407 for a 518-px config).

Rotary encoders (DINOv3; our extension, the paper covers added PEs only): there is no embedding grid,
only the coordinates the rotations are computed from. The same PEA object is passed as the backend's
``position_transform``; the backend asks it for U (:meth:`PEA.upsampled_size`) and an offset
(:meth:`PEA.draw`) and gives the n cells of this pass the coordinates of cells o..o+n-1 of a U-cell
grid over the same extent, per axis: u -> (o + u * n) / U. That is the grid "scaled by (1 + r)" and a
window of the original size cut at random -- exact (coordinates are linear, nothing is interpolated),
applied to the return pass only, and it changes only the rotations (tokens' content is untouched).
Backends without position encodings (CNNs, dsift) train with no PEA: nothing to shortcut through.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class PEA:
    """Callable ``(1, C, gh, gw) -> (1, C, gh, gw)``; draws its window from its own generator."""

    def __init__(self, ratio: float = 10.0, seed: int = 0, generator: torch.Generator | None = None):
        self.ratio = float(ratio)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(int(seed))
        self.last_offset: tuple[int, int] | None = None

    def upsampled_size(self, gh: int, gw: int) -> tuple[int, int]:
        return int((1 + self.ratio) * gh), int((1 + self.ratio) * gw)

    def draw(self, gh: int, gw: int) -> tuple[int, int]:
        uh, uw = self.upsampled_size(gh, gw)
        oh = int(torch.randint(0, uh - gh + 1, (1,), generator=self.generator))
        ow = int(torch.randint(0, uw - gw + 1, (1,), generator=self.generator))
        return oh, ow

    def __call__(self, pe: torch.Tensor) -> torch.Tensor:
        _, _, gh, gw = pe.shape
        oh, ow = self.draw(gh, gw)
        self.last_offset = (oh, ow)
        return apply_pea(pe, self.ratio, oh, ow)

    # exact resume: the generator state is part of the training checkpoint
    def state_dict(self) -> dict:
        return {"ratio": self.ratio, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def apply_pea(pe: torch.Tensor, ratio: float, oh: int, ow: int) -> torch.Tensor:
    """Deterministic PEA with window offset (oh, ow) in the up-sampled grid."""
    _, _, gh, gw = pe.shape
    uh, uw = int((1 + ratio) * gh), int((1 + ratio) * gw)
    if not (0 <= oh <= uh - gh and 0 <= ow <= uw - gw):
        raise ValueError(f"PEA offset {(oh, ow)} outside [0, {uh - gh}] x [0, {uw - gw}]")
    up = F.interpolate(pe.float(), size=(uh, uw), mode="bicubic", align_corners=False)
    return up[:, :, oh:oh + gh, ow:ow + gw].to(pe.dtype)


def make_pea_transform(ratio: float = 10.0, seed: int = 0) -> PEA:
    """Factory used by the trainer: one instance per process, seeded per rank."""
    return PEA(ratio, seed)
