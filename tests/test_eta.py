"""The time-left estimate (tracker/eta.py) with a fake clock: measured throughput replaces the prior,
a resumed run counts only what is left, cached stages are not speed samples. Expected values are worked
out by hand from the plans below."""
from __future__ import annotations

import pytest

from tracker.eta import RunETA


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def tick(self, s: float) -> None:
        self.t += s


def test_prior_then_speed_factor_then_own_rate():
    clock = Clock()
    eta = RunETA({"features": (10, 1.0), "train": (100, 2.0)}, clock=clock, prior_weight_s=0)
    assert eta.left() == pytest.approx(10 * 1.0 + 100 * 2.0)      # nothing timed: the priors
    eta.begin("features")
    clock.tick(5.0)
    eta.finish("features")                                          # 10 frames in 5 s: half the prior
    assert eta.left() == pytest.approx(100 * 2.0 * 0.5)             # train prior x 0.5
    eta.begin("train")
    for _ in range(4):
        clock.tick(3.0)                                             # training is slower than its prior
        eta.advance("train")
    assert eta.left() == pytest.approx(96 * 3.0)                    # its own rate, not the factor
    clock.tick(1.0)                                                 # a third into the next iteration
    assert eta.left() == pytest.approx(96 * 3.0 - 1.0)


def test_resume_counts_only_what_is_left_and_cache_hits_are_not_speed_samples():
    clock = Clock()
    eta = RunETA({"frames": (50, 0.1), "trajectories": (50, 1.0), "train": (300, 2.0)}, clock=clock)
    eta.begin("frames")
    clock.tick(0.01)
    eta.finish("frames", cached=True)                               # cache hit: done, untimed
    eta.begin("trajectories")
    clock.tick(0.02)
    eta.finish("trajectories", cached=True)
    assert eta.speed_factor() == 1.0
    eta.begin("train", done=100)                                    # 100 of 300 iterations from a checkpoint
    assert eta.left() == pytest.approx(200 * 2.0)
    assert eta.reports[-1].startswith("overall: train 100/300") and eta.reports[-1].endswith("about 7 min left")
    for _ in range(5):
        clock.tick(0.5)
        eta.advance("train")
    assert eta.left() == pytest.approx(195 * 0.5)


def test_a_checkpoint_found_before_preprocessing_counts_at_once():
    import tracker.eta as eta

    clock = Clock()
    run = eta.begin_run({"frames": (50, 0.1), "train": (150, 2.0), "train+cyc": (150, 3.0)}, clock=clock)
    try:
        eta.training_resumes_at(200, switch=150)                    # ckpt_0000200.pt in the work folder
        assert run.left() == pytest.approx(50 * 0.1 + 100 * 3.0)
        assert run.reports[-1].endswith("about 5 min left")
    finally:
        eta.begin_run(None)


def test_stage_timed_as_a_whole_and_elapsed_time_of_a_running_stage():
    clock = Clock()
    eta = RunETA({"a": (4, 1.0), "b": (6, 1.0)}, clock=clock, prior_weight_s=0)
    eta.begin("a")
    clock.tick(1.0)
    assert eta.left() == pytest.approx(3.0 + 6.0)                   # 1 s of a's 4 s prior spent
    clock.tick(7.0)
    eta.finish("a")                                                 # 4 units in 8 s: factor 2
    assert eta.left() == pytest.approx(12.0)
    eta.finish("b", seconds=3.0)
    assert eta.left() == 0.0


def test_the_first_unit_is_warm_up_not_the_rate():
    clock = Clock()
    eta = RunETA({"train": (120, 1.0)}, clock=clock, prior_weight_s=0)
    eta.begin("train")
    clock.tick(9.0)                                                 # first iteration: allocations, caches
    eta.advance("train")
    assert eta.left() == pytest.approx(119 * 1.0)                   # one unit: still the prior
    for _ in range(3):
        clock.tick(1.5)
        eta.advance("train")
    assert eta.left() == pytest.approx(116 * 1.5)                   # the steady rate, not (9 + 4.5) / 4


def test_the_rate_follows_the_last_units_when_the_machine_slows_down():
    from tracker.eta import RECENT

    clock = Clock()
    eta = RunETA({"train": (100, 1.0)}, clock=clock, prior_weight_s=0)
    eta.begin("train")
    for _ in range(40):
        clock.tick(1.0)
        eta.advance("train")
    for _ in range(RECENT):                                         # another job starts: 3x slower
        clock.tick(3.0)
        eta.advance("train")
    assert eta.left() == pytest.approx((100 - 40 - RECENT) * 3.0)   # not the 1.33 s/it cumulative mean


def test_a_tiny_stage_does_not_swing_the_estimate():
    clock = Clock()
    eta = RunETA({"frames": (24, 0.015), "train": (120, 1.0)}, clock=clock, prior_weight_s=5.0)
    eta.begin("frames")
    clock.tick(0.02)                                                # 0.36 s prior, done in 0.02 s
    eta.finish("frames")
    # raw factor 0.02 / 0.36 = 0.056 would say 6.7 s; shrunk: (0.02 + 5) / (0.36 + 5) = 0.937
    assert eta.left() == pytest.approx(120 * (0.02 + 5) / (0.36 + 5))


def test_a_skipped_stage_stops_counting_once_a_later_one_begins():
    clock = Clock()
    eta = RunETA({"masks": (10, 1.0), "train": (5, 1.0)}, clock=clock)
    assert eta.left() == pytest.approx(15.0)
    eta.begin("train")                                              # masks were given: never ran
    assert eta.left() == pytest.approx(5.0)


def test_progress_lines_are_throttled_and_say_what_is_left(caplog):
    clock = Clock()
    eta = RunETA({"train": (10, 1.0)}, clock=clock, report_every=20.0)
    eta.begin("train")
    lines = []
    for _ in range(10):
        clock.tick(6.0)
        lines.append(eta.advance("train"))
    said = [x for x in lines if x]
    assert len(said) == 2                                           # at 24 s and at 48 s, not every iteration
    assert "train 4/10" in said[0] and "about 36 s left" in said[0]
    assert eta.finish("train").endswith("about 0 s left")
    assert [round(a) for a, _ in eta.history] == [24, 48, 60]


def test_plan_covers_every_stage_in_run_order_and_scales_with_the_work_size():
    from cosettle.backends.registry import load_backend
    from tracker.config import preset
    from tracker.memory import time_plan

    cfg = preset("fast")
    plan = time_plan(50, 480, 854, load_backend("dsift"), cfg, "dino-flow")
    assert list(plan)[-4:] == ["train", "train+cyc", "refine", "track"]
    # training splits where the cycle / refined best-buddy losses start (dearer iterations after it)
    assert plan["train"][0] == cfg.cyc_after == 150 and plan["train+cyc"][0] == cfg.iterations - 150
    assert plan["train+cyc"][1] > plan["train"][1] and plan["features"][0] == 50
    small = time_plan(50, 160, 284, load_backend("dsift"), cfg, "dino")  # below 240: never upsampled
    assert small["features"][1] == pytest.approx(plan["features"][1] * (160 * 280) / (240 * 424), rel=0.05)
