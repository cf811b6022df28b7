"""Training configuration (spec §6).

Defaults are the authors' training scripts except where a small real collection (tens of clips, one
CPU) needs otherwise -- deliberate differences: batch 32 (authors 128), blr 1e-3 (authors 1e-4, for
~9k steps; a small collection gets ~160), several frame pairs per clip
per epoch (``pairs_per_clip`` auto; the authors draw one per clip from 240k Kinetics clips), 2 loader
workers. The authors' run: ``--batch-size 128 --blr 1e-4 --pairs-per-clip 1``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..errors import UserError
from ..projector import INITS, VARIANTS


@dataclass
class TrainConfig:
    # what to train on
    backend: str = field(default="dinov2_vitb14", metadata={"help": "frozen encoder: any backend name (ViT, DINOv3, CNN, dsift, timm:NAME)"})
    weights: Optional[str] = field(default=None, metadata={"help": "encoder weights: hub (default), PATH or 'random'"})
    data: list = field(default_factory=list, metadata={"help": "list file(s) of frame folders, video folder(s) or frame folders"})
    out: str = field(default="runs/cosettle", metadata={"help": "output folder (checkpoints, logs, projector)"})
    # None = the backend's own default (ViT/DINOv3: the block at DINO-Tracker's relative depth; CNN: the
    # stride-8 stage), the tokens the tracker reads from NAME without --layer; the file records the
    # resolved index and NAME+cosettle uses it. Differs from the authors, who project the last block
    # (pass --layer -1 for that): a last-block default silently changed a CNN's stride 8 -> 32.
    layer: Optional[int] = field(default=None, metadata={"help": "encoder block (CNN: feature stage) whose tokens "
                                                         "are projected (default: the backend's default; -1 = last)"})
    norm: bool = field(default=True, metadata={"help": "apply the encoder's final LayerNorm to those tokens (ViTs)"})
    # None = the backend's own default stride (e.g. 7 for dinov2_vits14_imgfocus, DINO-Tracker's); the
    # projector acts per token, so one trained at the patch stride (the paper's grid) applies at any stride
    stride: Optional[int] = field(default=None, metadata={"help": "ViT patch stride while training (default: the "
                                                           "backend's own; the patch size = the paper's grid)"})
    input_size: int = field(default=224, metadata={"help": "square training input size"})
    # projector
    variant: str = field(default="linear", metadata={"help": f"projector: {', '.join(VARIANTS)}"})
    init: str = field(default="trunc_normal", metadata={"help": f"Linear init: {', '.join(INITS)}"})
    # losses
    tau: float = field(default=0.03, metadata={"help": "walk temperature"})
    pool: int = field(default=2, metadata={"help": "node pooling (2 = 2x2 average)"})
    eps: float = field(default=1e-6, metadata={"help": "eps in log(S + eps)"})
    lambda_reg: float = field(default=3.0, metadata={"help": "weight of the anchor loss"})
    reg: str = field(default="kl", metadata={"help": "anchor: kl | mse | none"})
    pea: bool = field(default=True, metadata={"help": "positional-encoding augmentation on the return frame "
                                             "(only where the backend has position encodings)"})
    pea_ratio: float = field(default=10.0, metadata={"help": "PEA r: up-sample by (1 + r)"})
    # data
    gap: float = field(default=0.15, metadata={"help": "frame gap as a fraction of the clip length"})
    gap_max: Optional[float] = field(default=None, metadata={"help": "if set, gap ~ U(gap, gap_max) per sample"})
    crop_scale_min: float = field(default=0.5, metadata={"help": "RandomResizedCrop minimum scale"})
    flip_p: float = field(default=0.5, metadata={"help": "probability of the shared horizontal flip"})
    pairs_per_clip: int = field(default=0, metadata={"help": "frame pairs drawn per clip per epoch (0 = auto: "
                                                     "enough for --min-epoch-pairs; 1 on large collections)"})
    min_epoch_pairs: int = field(default=1024, metadata={"help": "auto pairs_per_clip gives each epoch at least this many pairs"})
    normalize: str = field(default="auto", metadata={"help": "input mean/std: imagenet (authors, for every ViT), "
                                                   "backend (the backend's own) or auto (imagenet for ViTs, else backend)"})
    num_workers: int = field(default=2, metadata={"help": "data-loader workers per process"})
    # optimisation
    epochs: int = field(default=5, metadata={"help": "epochs"})
    warmup_epochs: float = field(default=1.0, metadata={"help": "linear warm-up epochs"})
    batch_size: int = field(default=32, metadata={"help": "batch size per process (authors: 128)"})
    blr: float = field(default=1e-3, metadata={"help": "base lr; lr = blr * total batch / 256 (authors: 1e-4 for ~9k steps)"})
    lr: Optional[float] = field(default=None, metadata={"help": "absolute lr (overrides blr)"})
    min_lr: float = field(default=0.0, metadata={"help": "final lr of the cosine"})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay (not on biases/LayerNorm)"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.95, metadata={"help": "AdamW beta2"})
    precision: str = field(default="auto", metadata={"help": "auto (fp16 CUDA / bf16 CPU) | fp32 | bf16 | fp16"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    seed: int = field(default=0, metadata={"help": "seed (per-rank streams derive from it)"})
    # bookkeeping
    save_every: int = field(default=500, metadata={"help": "checkpoint every N steps (and every epoch)"})
    log_every: int = field(default=1, metadata={"help": "JSON-lines log every N steps"})
    max_steps: Optional[int] = field(default=None, metadata={"help": "stop after this many steps (smoke runs)"})
    resume: bool = field(default=True, metadata={"help": "resume from OUT/checkpoints/last.pt if present"})
    progress: bool = field(default=True, metadata={"help": "tqdm progress bar"})
    trust_checkpoint: bool = field(default=False, metadata={"help": "allow pickled encoder weight files "
                                                            "(only for files you trust)"})
    kill_after_step: int = field(default=0, metadata={"help": "fault injection for tests: SIGKILL after this step"})

    def validate(self) -> "TrainConfig":
        if isinstance(self.data, str):
            self.data = [self.data]
        if not self.data:
            raise UserError("no training data given", "pass --data LIST.txt (or a folder of videos/frame folders)")
        if self.variant not in VARIANTS:
            raise UserError(f"unknown projector variant {self.variant!r}", f"choose one of {', '.join(VARIANTS)}")
        if self.reg not in ("kl", "mse", "none"):
            raise UserError(f"unknown --reg {self.reg!r}", "use kl, mse or none")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise UserError(f"unknown --precision {self.precision!r}", "use auto, fp32, bf16 or fp16")
        if self.normalize not in ("auto", "imagenet", "backend"):
            raise UserError(f"unknown --normalize {self.normalize!r}", "use auto, imagenet or backend")
        if self.pairs_per_clip < 0:
            raise UserError(f"--pairs-per-clip must be >= 0, got {self.pairs_per_clip}", "0 = auto")
        for name in ("batch_size", "epochs", "input_size", "save_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.tau <= 0:
            raise UserError(f"--tau must be > 0, got {self.tau}")
        return self

    def gap_spec(self):
        return self.gap if self.gap_max is None else (self.gap, self.gap_max)
