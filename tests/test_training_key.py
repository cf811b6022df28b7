"""The training key (the ``train_<key>`` folder of a fit) holds every TrackerConfig field except those marked,
where they are defined, as inference-only, run settings or keyed by the work folder (tracker/config.py)."""
from __future__ import annotations

from dataclasses import dataclass, fields

from tracker.api import training_key
from tracker.config import TrackerConfig, inference, preset, run_setting, training_fields

# The hand-kept set that tracker/api.py held before the fields were marked (main 542fcfb), copied from that
# code, not from the new marks: the marks must leave out exactly these, or every cached fit retrains.
OLD_HAND_KEPT = {"occlusion", "anchor_cos", "visible_cos", "fb_thresh_cells", "infer_chunk_maps",
                 "infer_block_frames", "work_dir", "preprocess", "device", "log_every", "checkpoint_every",
                 "fusion_snap_cells", "fusion_fb_px", "fusion_dis_preset", "fusion_verify_ncc",
                 "fusion_drift_frames", "fusion_verify_cells"}


@dataclass
class _WithNewKnobs(TrackerConfig):
    new_training_knob: float = 1.0            # forgotten mark: must retrain
    new_fusion_knob: float = inference(1.0)   # marked beside its definition: must not
    new_log_knob: int = run_setting(10)


def test_a_new_unmarked_field_changes_the_key_and_a_marked_one_does_not():
    base = _WithNewKnobs(**{f.name: getattr(preset("fast"), f.name) for f in fields(TrackerConfig)})
    key = training_key(base)
    assert training_key(base.replace(new_training_knob=2.0)) != key
    assert training_key(base.replace(new_fusion_knob=2.0)) == key
    assert training_key(base.replace(new_log_knob=99)) == key
    # the unmarked field is in the key, so the subclass's key differs from the plain preset's
    assert key != training_key(preset("fast"))


# fields added after 542fcfb that do not change the trained model (each marked inference-only where defined)
ADDED_SINCE = {"fusion_train",        # issue 26: whether dino-flow trains at all, not what it trains
               "fusion_head_weight",  # issue 26: where dino-flow reports a point, after training
               "fusion_head_gate"}    # issue 26: which points that weight moves


def test_the_marked_fields_are_the_old_hand_kept_set():
    names = {f.name for f in fields(TrackerConfig)}
    assert names - set(training_fields()) == OLD_HAND_KEPT | ADDED_SINCE


def test_default_keys_are_those_of_the_hand_kept_set():
    # digests computed with main 542fcfb's training_key (the hand-kept set): cached fits stay valid
    assert training_key(preset("fast")) == "39014f0eba7beb22"
    assert training_key(preset("paper")) == "ebfac2b5bbae78bf"
    assert training_key(TrackerConfig()) == "fa765f1a5d4ce08b"


def test_inference_settings_reuse_the_fit_training_settings_do_not():
    cfg = preset("fast")
    same = cfg.replace(occlusion="anchors", fusion_snap_cells=3.0, fusion_verify_ncc=0.9, device="cuda",
                       work_dir="/elsewhere", checkpoint_every=7, infer_block_frames=4)
    assert training_key(same) == training_key(cfg)
    for change in ({"seed": 3}, {"iterations": 301}, {"lambda_cyc": 0.25}, {"scale_preprocess_px": False}):
        assert training_key(cfg.replace(**change)) != training_key(cfg), change
