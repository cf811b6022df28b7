"""``TrackerConfig``: every knob of DINO-Tracker training and inference, with two presets.

* ``paper``: the reference settings (dino_tracker.md §1.3): 10k iterations, batch 512, loss weights
  and switch-on iterations as published, Adam lr 0.01 with 0.999^(i//40) decay on DeltaDINO, CNN
  width 64, the backend at its native (snapped) resolution (476x854 for a /14 stride-7 ViT on DAVIS).
* ``fast``: CPU-feasible. Internal resolution short side 240 (the backend's ``resolution``), CNN width
  16, last conv kernel 3, batch 256, 300 iterations with the late losses (cycle, refined best buddies)
  switched on at 150. Chosen from measurements on 2 CPU cores (docs/tracking.md, "Presets"): ~0.8 s per
  iteration at 240x424 with dsift, so training takes ~4 minutes and the whole run fits 10 minutes.

Thresholds that the reference gives in pixels at 476x854 (cycle threshold 4 px, soft-argmax radius
35 px) are expressed here in **feature cells** (35 px / stride 7 = 5 cells) or scaled by the work
resolution, so one setting means the same thing at any resolution and for any backend stride.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from cosettle.config import to_dict
from cosettle.errors import UserError

PRESETS = ("fast", "paper")
FUSION_TRAIN = ("auto", "always", "never")  # when dino-flow trains (TrackerConfig.fusion_train)
HEAD_GATES = ("flow-failed", "always")  # which points the head weight moves (TrackerConfig.fusion_head_gate)
REF_HEIGHT = 476  # the reference's model height; pixel thresholds below are given at this height

# The training key (``training_key`` in tracker/api.py: the name of a fit's ``train_<key>`` folder) holds every
# ``TrackerConfig`` field except those marked, where they are defined, with one of the helpers below. A new
# field is in the key unless marked, so forgetting the mark costs a retrain, never a stale fit served for a
# setting that changes training.
NOT_TRAINED = "not_in_training_key"  # the field metadata key; its value says why


def inference(default: Any) -> Any:
    """A setting read only after training (occlusion rule, fusion, inference memory bounds): changing it
    reuses the cached fit."""
    return field(default=default, metadata={NOT_TRAINED: "inference"})


def run_setting(default: Any) -> Any:
    """How a run goes, not what it trains: device, log and checkpoint cadence, the work folder."""
    return field(default=default, metadata={NOT_TRAINED: "run"})


def training_fields(cls: type | None = None) -> list[str]:
    """The fields of ``cls`` (default ``TrackerConfig``) that the training key holds, in definition order."""
    return [f.name for f in dataclasses.fields(cls or TrackerConfig) if NOT_TRAINED not in f.metadata]


@dataclass
class PreprocessConfig:
    """Defaults are DINO-Tracker's where they apply; CPU-motivated deviations are marked."""

    flow: str = field(default="dis", metadata={"help": "optical flow: dis (OpenCV, no weights) | raft"})
    dis_preset: str = field(default="medium", metadata={"help": "DIS preset: ultrafast|fast|medium"})
    dis_finest_scale: int | None = field(default=None, metadata={
        "help": "DIS finest pyramid level (None = preset's, 0 = full resolution, slower)"})
    raft_weights: str | None = field(default=None, metadata={"help": "local raft_large weights file"})
    fb_threshold: float = field(default=1.5, metadata={"help": "forward-backward consistency, px"})
    direct_threshold: float = field(default=2.5, metadata={"help": "direct-flow filter, px"})
    direct_window: int = field(default=8, metadata={
        "help": "direct flows s->s+2..s+window (reference: every later frame, O(T^2)); <2 disables"})
    min_traj_len: int = 2
    traj_stride: int = field(default=2, metadata={
        "help": "seed trajectories on a stride-s pixel lattice (reference: 1 = every pixel)"})
    mask_source: str = field(default="auto", metadata={
        "help": "foreground masks: auto (the user's if given, else saliency for a DINO ViT backend and "
                "motion for any other) | user (required) | saliency (PCA of the features) | motion (flow "
                "residual to the dominant motion); saliency/motion replace given masks"})
    fg_threshold: float = field(default=0.6, metadata={"help": "PCA saliency threshold"})
    motion_threshold: float = field(default=3.0, metadata={
        "help": "motion masks: flow residual > this x the frame's median residual (and > 0.5 % of the "
                "frame diagonal) = foreground"})
    bb_box: int = field(default=30, metadata={"help": "NMS half box size, work px"})
    bb_iou: float = 0.2
    bb_topk: int = 400
    bb_max_pairs: int = field(default=100, metadata={
        "help": "best buddies on at most this many unordered frame pairs, seeded (0 = all T(T-1)/2)"})
    bb_window: int = field(default=0, metadata={"help": "best-buddy pairs only within this many frames (0 = any)"})
    bb_flow_filter: bool = True
    bb_on_demand: bool = field(default=False, metadata={
        "help": "best buddies of every frame pair the trainer draws, computed when first drawn (LRU cache, "
                "bounded memory) instead of the precomputed bb_max_pairs subset; the stage is skipped"})
    bb_cache_pairs: int = field(default=512, metadata={"help": "on-demand best buddies: LRU cache size, pairs"})
    seed: int = 0
    device: str = "cpu"
    feature_chunk: int | None = field(default=2, metadata={
        "help": "frames per backend forward pass (memory vs speed; None = the backend's default)"})
    threads: int | None = field(default=None, metadata={
        "help": "torch CPU threads while preprocessing (None = leave as is; 1 is 3-5x faster on an "
                "oversubscribed machine)"})


@dataclass
class TrackerConfig:
    # --- resolution / model -------------------------------------------------------------------
    resolution: Any = None          # backend input short side (int) or (H, W); None = native size
    cnn_width: int = 64             # DeltaDINO channels (w, 2w, 4w); reference 64
    cnn_last_kernel: int = 5         # last conv kernel (dilation 2); reference 5
    bn_gamma: float = 0.05          # last BN gamma init (relative to features scaled to RMS 1/channel)
    head_width: int = 16            # refiner hidden channels; 16 gives the reference's 305 params
    softargmax_radius_cells: float = 5.0  # 35 px at stride 7
    # --- training -----------------------------------------------------------------------------
    iterations: int = 10000
    batch_size: int = 512
    fg_traj_ratio: float = 0.5
    batch_n_frames: int = 4
    separate_fg_bg_frames: bool = False  # FG and BG halves draw their own frames (reference: True)
    train_frame_stride: int = 1     # training draws frames 0, k, 2k, ... only (tracking: every frame)
    lr_delta: float = 0.01
    lr_head: float = 0.01
    scheduler_every: int = 40
    scheduler_gamma: float = 0.999
    huber_delta: float = 1.0 / 32   # in normalised [-1, 1] units
    lambda_cyc: float = 0.5
    cyc_after: int = 5000
    cyc_pairs: int = 4
    cyc_points: int = 256
    cyc_fg_ratio: float = 0.7
    cyc_thresh_px: float = 4.0      # at the reference height 476; scaled to the work resolution
    cyc_gamma: float = 0.8
    lambda_norm: float = 1e-4
    lambda_angle: float = 1e-4
    lambda_dbb: float = 2.5e-4
    lambda_rbb: float = 5e-5
    cl_pairs: int = 4
    cl_points: int = 256
    cl_fg_ratio: float = 0.7
    cl_temp: float = 0.1
    cl_div_dbb: float = 700.0
    cl_div_rbb: float = 900.0
    rbb_after: int = 5000
    bb_sig_a: float = 27.0
    bb_sig_b: float = -5.7
    checkpoint_every: int = run_setting(2500)
    log_every: int = run_setting(100)
    seed: int = 2                   # reference seed
    device: str = run_setting("cpu")
    # --- inference ----------------------------------------------------------------------------
    occlusion: str = inference("fb")  # "fb": O(N*T) forward-backward check (default); "anchors": spec §5.2
    anchor_cos: float = inference(0.7)
    visible_cos: float = inference(0.6)
    fb_thresh_cells: float = inference(1.0)  # fb rule: back-tracking error above this (in cells) = occluded
    infer_chunk_maps: int = inference(2048)  # cost volumes per head call at inference (memory bound)
    infer_block_frames: int = inference(32)  # frames whose normalised maps are held at once at inference (memory bound)
    # --- flow-guided inference (tracker ``dino-flow`` only; not in the paper, see tracker/fusion.py)
    fusion_snap_cells: float | None = inference(None)  # the head "agrees" with flow within this many feature
    #                                                    cells; None: the measured value for the backend
    #                                                    (snap_cells: MEASURED_SNAP_CELLS, else 6)
    fusion_head_weight: float | None = inference(None)  # where consistent flow and a seeing head agree, the
    #                                                     reported position moves this share of the way from flow's
    #                                                     to the head's (the chain goes on from flow's); None: the
    #                                                     measured value for the backend (head_weight:
    #                                                     MEASURED_HEAD_WEIGHT, else 0 = flow's position)
    fusion_head_gate: str = inference("flow-failed")  # which points the head weight moves: "flow-failed" (only a
    #                                                    point whose flow failed a check earlier in the pass, so
    #                                                    flow's pixel precision stays where flow never failed) or
    #                                                    "always" (every agreeing point, the first variant)
    fusion_fb_px: float = inference(1.5)  # forward-backward error (original px) above which flow is broken
    fusion_drift_frames: int = inference(1)  # frames in a row that consistent flow must stay off the
    #                                          foreground (while the head sees the point elsewhere) before a drift
    #                                          candidate
    fusion_verify_ncc: float = inference(0.5)  # a candidate is accepted only where the query's own patch
    #                                             correlates at least this much within fusion_verify_cells (else lost)
    fusion_verify_cells: float = inference(2.0)  # search radius of that patch around the head's candidate, in cells
    fusion_dis_preset: str = inference("medium")  # DIS preset of the full-resolution flow
    fusion_train: str = inference("auto")  # "auto": train only when the flow pre-pass finds a query the head
    #                                        could change (tracker/fusion_gate.py); "always": train first (the path
    #                                        before the gate); "never": flow's positions with honest visibility,
    #                                        no training
    scale_preprocess_px: bool = True  # preprocessing px thresholds are at 476 px height: scale them
    # --- files --------------------------------------------------------------------------------
    work_dir: Any = run_setting(None)  # None: ~/.cache/cosettle/tracker/<content+settings hash>
    # PreprocessConfig (or its dict form); keyed by the work folder (tracker/api.py), so not by the training key
    preprocess: Any = field(default=None, metadata={NOT_TRAINED: "work folder"})

    def __post_init__(self):
        if self.preprocess is None:
            self.preprocess = PreprocessConfig()
        elif isinstance(self.preprocess, dict):
            names = {f.name for f in dataclasses.fields(PreprocessConfig)}
            unknown = set(self.preprocess) - names
            if unknown:
                raise UserError(f"unknown preprocess config keys: {sorted(unknown)}", f"valid keys: {sorted(names)}")
            self.preprocess = PreprocessConfig(**self.preprocess)
        if isinstance(self.resolution, list):
            self.resolution = tuple(self.resolution)
        if self.occlusion not in ("fb", "anchors"):
            raise UserError(f"unknown occlusion rule {self.occlusion!r}", "use 'fb' or 'anchors'")
        # verify_ncc > -1: -1 is the peak of a patch that cannot be compared (off the frame, flat), never a match
        if self.fusion_drift_frames < 1 or not -1.0 < self.fusion_verify_ncc <= 1.0 or self.fusion_verify_cells < 0:
            raise UserError("fusion_drift_frames must be >= 1, fusion_verify_ncc in (-1, 1], fusion_verify_cells >= 0")
        if self.fusion_snap_cells is not None and self.fusion_snap_cells < 0:
            raise UserError(f"fusion_snap_cells must be >= 0 (or unset for the backend's value), not {self.fusion_snap_cells}")
        if self.fusion_head_weight is not None and not 0.0 <= self.fusion_head_weight <= 1.0:
            raise UserError(f"fusion_head_weight must be in [0, 1] (or unset for the backend's value), not "
                            f"{self.fusion_head_weight}")
        if self.fusion_head_gate not in HEAD_GATES:
            raise UserError(f"unknown fusion_head_gate {self.fusion_head_gate!r}",
                            f"use one of {', '.join(HEAD_GATES)}")
        if self.fusion_train not in FUSION_TRAIN:
            raise UserError(f"unknown fusion_train {self.fusion_train!r}", f"use one of {', '.join(FUSION_TRAIN)}")
        if self.iterations < 0 or self.batch_size < 1 or self.batch_n_frames < 2:
            raise UserError("iterations must be >= 0, batch_size >= 1 and batch_n_frames >= 2")

    def replace(self, **kw) -> "TrackerConfig":
        return dataclasses.replace(self, **kw)


# fusion_snap_cells measured per backend and stride on both labelled BADJA clips, 3 tracker seeds
# (docs/tracking.md#the-agreement-radius-per-backend): with the DINOv2 ViT-S/14 head (28-px cells at the fast
# preset's work size) 2 cells beat 6 on horsejump-high on every seed (61.37 vs 51.88 mean delta_seg) and
# were >= 6 on cows on every seed (76.38 vs 75.13), with fewer wrong-visible points. Every other backend keeps 6:
# dsift and dinov2_vits14_imgfocus at stride 7 were swept too (3 seeds each) and no smaller radius passed.
DEFAULT_SNAP_CELLS = 6.0
MEASURED_SNAP_CELLS = {("dinov2_vits14_imgfocus", 14): 2.0}


# fusion_head_weight measured per backend, stride and feature variant the same way, with the default
# fusion_head_gate (docs/tracking.md, "Only where flow has failed"; scripts/tune_fusion.py --head-weight
# --head-gate): the DINOv2 ViT-S/14 head at stride 14 on block 7 + the final LayerNorm (norm=True) at 0.75 raised
# BADJA delta_seg on every fit of both clips and 3 seeds (64.55 -> 67.53, fewer wrong-visible points, delta_3px
# still >= flow's) and synthetic TAP AJ on every seed (55.58 -> 56.24); without the gate it cost 10.7 synthetic AJ.
# At stride 7 (the backend's default, raw tokens) 0.75 raised horsejump-high on every seed, left cows unchanged,
# cut wrong-visible points (10.76 -> 9.33) and raised synthetic AJ on every seed (56.23 -> 57.52). At stride 14
# the raw tokens (norm=False) lost a cows fit by 4 joints at 0.75 (2 fits at 0.5), dsift a cows fit by one joint at
# 0.5: they keep 0, as does every backend not measured.
DEFAULT_HEAD_WEIGHT = 0.0
MEASURED_HEAD_WEIGHT = {("dinov2_vits14_imgfocus", 14, "norm"): 0.75, ("dinov2_vits14_imgfocus", 7): 0.75}


def _table_token(table: dict, default: float, *tag: str) -> str:
    return json.dumps([*tag, default, sorted([list(k), v] for k, v in table.items())])


def measured_snap_token() -> str:
    """The radius table as text: what a cache of fused predictions made with an unset ``fusion_snap_cells``
    must key on besides the config, so that a re-measured table does not return old predictions."""
    return _table_token(MEASURED_SNAP_CELLS, DEFAULT_SNAP_CELLS)  # untagged: the keys made before the weight


def measured_head_weight_token() -> str:
    """The same for an unset ``fusion_head_weight`` and its table ("gated": the keys made since the weight moves
    only the points whose flow failed, ``fusion_head_gate``'s default)."""
    return _table_token(MEASURED_HEAD_WEIGHT, DEFAULT_HEAD_WEIGHT, "head_weight", "gated")


def _per_backend(value, table: dict, default: float, backend, *variant: str) -> float:
    """A dino-flow setting: the config's ``value``, else ``table``'s entry for ``backend`` (its registry name and
    stride, then ``variant``), else ``default``."""
    if value is not None:
        return float(value)
    return table.get((getattr(backend, "name", None), getattr(backend, "stride", None), *variant), default)


def snap_cells(cfg: "TrackerConfig", backend) -> float:
    """The agreement radius of dino-flow in feature cells (MEASURED_SNAP_CELLS, else DEFAULT_SNAP_CELLS)."""
    return _per_backend(cfg.fusion_snap_cells, MEASURED_SNAP_CELLS, DEFAULT_SNAP_CELLS, backend)


def head_weight(cfg: "TrackerConfig", backend) -> float:
    """The head's share of dino-flow's reported position where flow and the head agree (MEASURED_HEAD_WEIGHT,
    else DEFAULT_HEAD_WEIGHT)."""
    # the features' final LayerNorm changes what the head learns: measured apart (a backend's ``norm`` flag)
    variant = ("norm",) if getattr(backend, "norm", None) is True else ()
    return _per_backend(cfg.fusion_head_weight, MEASURED_HEAD_WEIGHT, DEFAULT_HEAD_WEIGHT, backend, *variant)


@dataclass
class FlowTrackerConfig:
    """The ``flow`` baseline (``tracker/baselines.py``): chained flow at the video's own resolution."""

    flow: str = "dis"              # "dis" | "raft"
    dis_preset: str = "medium"
    dis_finest_scale: int | None = 0  # full-resolution last level: BADJA delta_3px 10.6 vs 6.6 (docs)
    raft_weights: str | None = None
    fb_threshold: float = 1.5      # px at the original resolution
    device: str = "cpu"


@dataclass
class FeatureTrackerConfig:
    """The ``features`` baseline (``tracker/baselines.py``): nearest neighbour of the query feature."""

    window: int = 2                # soft-argmax over (2*window+1)^2 cells around the best cell
    temperature: float = 0.02      # softmax temperature on cosines inside the window
    visible_threshold: float = 0.5  # cosine below this -> occluded
    query_sampling: str = "nearest"  # query feature of the nearest cell ("bilinear": blend of 4 cells)
    chunk_points: int = 64


# a direct-flow window longer than any clip: the reference checks every later frame (O(T^2) flows)
EVERY_LATER_FRAME = 1_000_000


def _paper_preprocess():
    """The reference's preprocessing: trajectories from every pixel, the direct-flow filter against every
    later frame, best buddies for every frame pair (computed when the trainer draws the pair, with the
    same rule; the reference precomputes all T(T-1) of them)."""
    return PreprocessConfig(traj_stride=1, direct_window=EVERY_LATER_FRAME, bb_on_demand=True)


def _fast_preprocess():
    """CPU preprocessing (PreprocessConfig defaults: stride-2 trajectories, 8-frame direct window) with
    best buddies for every pair the trainer draws: the precomputed 100-pair subset left ~92 % of the
    drawn pairs without supervision (docs/tracking.md, "Differences from the original")."""
    return PreprocessConfig(bb_on_demand=True)


def preset(name: str, **overrides) -> TrackerConfig:
    """``paper`` or ``fast`` (see the module docstring), with field overrides."""
    if name == "paper":
        cfg = TrackerConfig(occlusion="anchors", separate_fg_bg_frames=True, preprocess=_paper_preprocess())
    elif name == "fast":
        cfg = TrackerConfig(resolution=240, cnn_width=16, cnn_last_kernel=3, iterations=300,
                            batch_size=256, cyc_after=150, rbb_after=150, checkpoint_every=50,
                            log_every=50, cl_points=128, cyc_points=128, preprocess=_fast_preprocess())
    else:
        raise UserError(f"unknown preset {name!r}", f"choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def merge_dict(cfg: TrackerConfig, data: dict[str, Any]) -> TrackerConfig:
    """Apply a (YAML) mapping over ``cfg``; a nested ``preprocess`` mapping is merged key by key."""
    names = {f.name for f in dataclasses.fields(TrackerConfig)}
    unknown = set(data) - names
    if unknown:
        raise UserError(f"unknown tracker config keys: {sorted(unknown)}", f"valid keys: {sorted(names)}")
    data = dict(data)
    if isinstance(data.get("preprocess"), dict):
        base = cfg.preprocess
        base = dataclasses.asdict(base) if dataclasses.is_dataclass(base) else dict(base or {})
        base.update(data["preprocess"])
        data["preprocess"] = base
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrackerConfig)}
    if dataclasses.is_dataclass(values["preprocess"]):
        values["preprocess"] = dataclasses.asdict(values["preprocess"])
    values.update(data)
    try:
        return TrackerConfig(**values)
    except TypeError as err:
        raise UserError(f"invalid tracker config: {err}") from None


def config_dict(cfg: TrackerConfig) -> dict[str, Any]:
    """Plain-data form (for YAML, hashing)."""
    return to_dict(cfg)


def scaled_px(cfg_px: float, input_h: int) -> float:
    """A pixel threshold given at the reference height (476) -> pixels at the work resolution."""
    return cfg_px * input_h / REF_HEIGHT


# preprocessing thresholds that the reference gives in pixels at its 476-px model height
PREPROCESS_PX_FIELDS = ("fb_threshold", "direct_threshold", "bb_box")


def preprocess_at(cfg: TrackerConfig, input_h: int):
    """The preprocessing config with its pixel thresholds scaled to a work height ``input_h`` (when
    ``cfg.scale_preprocess_px``), so a 240-px work size uses the same thresholds *relative to the
    image* as the reference at 476 px. At 476 px (the ``paper`` preset on 480p) nothing changes."""
    pre = cfg.preprocess
    if not cfg.scale_preprocess_px or not dataclasses.is_dataclass(pre) or input_h == REF_HEIGHT:
        return pre
    return dataclasses.replace(pre, **{k: scaled_px(getattr(pre, k), input_h) for k in PREPROCESS_PX_FIELDS
                                      if hasattr(pre, k)})


def train_switch(cfg: TrackerConfig) -> int:
    """The iteration from which the cycle / refined best-buddy losses are on (``cfg.iterations`` if never)."""
    on = [a for a, lam in ((cfg.cyc_after, cfg.lambda_cyc), (cfg.rbb_after, cfg.lambda_rbb)) if lam]
    return int(min([cfg.iterations] + [max(0, a) for a in on]))
