"""The time-left estimate (tracker/eta.py) with a fake clock: measured throughput replaces the prior,
a resumed run counts only what is left, cached stages are not speed samples. Expected values are worked
out by hand from the plans below."""
from __future__ import annotations

import pytest

from tracker.eta import RunETA, StageTimes


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
    run = RunETA({"frames": (50, 0.1), "train": (150, 2.0), "train+cyc": (150, 3.0)}, clock=Clock())
    run.work_found({}, 200, switch=150)                             # ckpt_0000200.pt in the work folder
    assert run.left() == pytest.approx(50 * 0.1 + 100 * 3.0)
    assert run.history == [(0.0, pytest.approx(305.0))]


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


# -- mutation-test survivors (issue 29) -------------------------------------------------------------
def test_fmt_seconds_switches_units_at_90_s_and_90_min():
    from tracker.eta import fmt_seconds

    assert [fmt_seconds(x) for x in (-3, 0, 89.4, 90, 150, 5399, 5400, 9902)] == \
        ["0 s", "0 s", "89 s", "2 min", "2 min", "90 min", "1.5 h", "2.8 h"]  # 9902 / 3600 = 2.7506


def test_stage_times_estimate_nothing_and_a_run_is_driven_through_its_object(caplog):
    """Plan: pre 10 x 1 s, train 100 x 2 s, train+cyc 50 x 2 s; prior weight 5 s (the default).
    work_found: pre cached, read in 4 s (1 unit of 4 s); a checkpoint at iteration 120 with the switch at
    100 -> train 100 done, train+cyc 20 done. Left: 4 + 0 + 30 x 2 = 64 s."""
    import logging

    quiet = StageTimes(clock=Clock())         # what a layer gets when its caller passed no estimate
    quiet.begin("pre")
    quiet.note_done("train", 3)
    assert quiet.advance("pre") is None and quiet.finish("pre") is None
    with caplog.at_level(logging.INFO, logger="tracker.eta"):
        quiet.work_found({"pre": 1.0}, 10, 5)
    assert quiet.times == {} and quiet.history == [] and caplog.messages == []
    clock = Clock()
    run = RunETA({"pre": (10, 1.0), "train": (100, 2.0), "train+cyc": (50, 2.0)}, clock=clock, report_every=7.0)
    assert run.report_every == 7.0 and run.prior_weight_s == 5.0
    with caplog.at_level(logging.INFO, logger="tracker.eta"):
        run.work_found({"pre": 4.0, "other": 9.0}, iterations=120, switch=100)
    assert run.history == [(0.0, 64.0)]
    assert caplog.messages[-1] == "estimated time about 64 s (1 of 3 stages cached, training resumes at " \
        "iteration 120; from reference rates, re-estimated from this run's own timing as stages and " \
        "iterations finish)"
    assert (run.stages["pre"].units, run.stages["pre"].prior, run.stages["train"].done,
            run.stages["train+cyc"].done) == (1.0, 4.0, 100.0, 20.0)
    run.begin("pre")
    clock.tick(2.0)
    run.advance("pre")                       # the first unit is warm-up
    assert run.finish("pre") == "overall: 1/3 stages done, 2 s so far, about 60 s left"
    run.begin("train+cyc", done=20)
    clock.tick(8.0)
    run.advance("train+cyc", 2)
    assert run.stages["train+cyc"].done == 22.0
    clock.tick(8.0)
    run.advance("train+cyc", 2)              # 2 units in 8 s -> 4 s each, 26 left
    assert run.left() == pytest.approx(26 * 4.0)


def test_timed_stages_nest_without_counting_a_second_twice():
    """By hand: a 10-s "track" block with a 3-s "train" block and 2 s of "fusion" (add_time) inside it -> track
    5 s of its own; a second "track" block of 1 s adds to it; a block that raises still counts. The planned
    estimate keeps the same times (one object: the run's stage times and its estimate)."""
    for cls in (StageTimes, RunETA):
        clock = Clock()
        run = cls(clock=clock)
        with run.timed("track"):
            clock.tick(4.0)
            with run.timed("train"):
                clock.tick(3.0)
            run.add_time("fusion", 2.0)
            clock.tick(3.0)
        with run.timed("track"):
            clock.tick(1.0)
        with pytest.raises(KeyError):
            with run.timed("write outputs"):
                clock.tick(0.5)
                raise KeyError("x")
        assert run.times == {"train": 3.0, "fusion": 2.0, "track": 6.0, "write outputs": 0.5}
        assert list(run.times) == ["train", "fusion", "track", "write outputs"]  # in the order they first finish
        assert run.elapsed() == pytest.approx(11.5) and sum(run.times.values()) == pytest.approx(11.5)


def test_work_found_with_nothing_cached_and_no_checkpoint(caplog):
    import logging

    run = RunETA({"pre": (10, 1.0), "train": (100, 2.0), "train+cyc": (50, 2.0)}, clock=Clock())
    with caplog.at_level(logging.INFO, logger="tracker.eta"):
        run.work_found({}, iterations=0, switch=100)
    assert "estimated time about 5 min (nothing cached; from reference rates" in caplog.text  # 310 s
    assert run.report_every == 20.0
    assert [s.done for s in run.stages.values()] == [0.0, 0.0, 0.0]
    assert run.reports == []                                         # logged once, not a progress report
    with caplog.at_level(logging.INFO, logger="tracker.eta"):
        run.work_found({}, iterations=1, switch=100)                 # iteration 1 < switch: none of train+cyc
    assert "nothing cached, training resumes at iteration 1;" in caplog.messages[-1]
    assert [s.done for s in run.stages.values()] == [0.0, 1.0, 0.0]


def test_an_estimate_planned_later_starts_its_clock_at_creation():
    """The track command makes its run's estimate first and plans it once the video is read: the elapsed times
    of its reports count from the run's start."""
    clock = Clock()
    run = RunETA(clock=clock)
    assert run.stages == {} and run.left() == 0.0
    clock.tick(3.0)
    run.set_plan({"train": (10, 1.0)})
    assert run.left() == pytest.approx(10.0) and run.record() == pytest.approx(10.0)
    assert run.history == [(3.0, pytest.approx(10.0))]


def test_runeta_bookkeeping_by_hand(caplog):
    import logging

    assert (RunETA({}).report_every, RunETA({}).prior_weight_s) == (20.0, 5.0)
    clock = Clock()
    # a: 4 units, advanced: warm-up 1 s, then 2 s + 2 s -> 4 s over 2 units at prior 1 s -> factor 2
    eta = RunETA({"a": (4, 1.0), "b": (10, 1.0)}, clock=clock, prior_weight_s=0, report_every=10.0)
    eta.begin("a")
    said = []
    for dt in (1.0, 2.0, 2.0, 5.0):
        clock.tick(dt)
        with caplog.at_level(logging.INFO, logger="tracker.eta"):
            said.append(eta.advance("a"))
    assert said[:3] == [None, None, None] and said[3] is not None  # 10 s since the start: reports at exactly 10
    assert said[3] in caplog.text
    # a's 3 timed units after warm-up: 2 + 2 + 5 = 9 s over prior 3 s -> factor 3; b: 10 x 1 x 3
    assert eta.speed_factor() == pytest.approx(3.0) and eta.stage_left("b") == pytest.approx(30.0)
    eta.begin("b")                                  # a never finished: it still counts (not a skipped stage)
    assert not eta.stages["a"].finished
    eta.note_done("b", 5)                           # b began already: a checkpoint note no longer applies
    assert eta.stages["b"].done == 0.0


def test_finish_times_a_stage_as_a_whole_from_seconds_the_clock_or_nothing():
    clock = Clock()
    # one unit of prior 2 s, done in 4 s by the clock -> factor 2 -> b: 10 x 1 x 2
    eta = RunETA({"a": (1, 2.0), "b": (10, 1.0)}, clock=clock, prior_weight_s=0)
    eta.begin("a")
    clock.tick(4.0)
    eta.finish("a")
    assert eta.left() == pytest.approx(20.0)
    # the seconds given win over the clock: 6 s -> factor 3
    eta = RunETA({"a": (1, 2.0), "b": (10, 1.0)}, clock=clock, prior_weight_s=0)
    eta.begin("a")
    clock.tick(4.0)
    eta.finish("a", seconds=6.0)
    assert eta.left() == pytest.approx(30.0)
    # never begun, no seconds: 0 s measured -> no evidence, factor 1
    eta = RunETA({"a": (1, 2.0), "b": (10, 1.0)}, clock=clock, prior_weight_s=0)
    eta.finish("a")
    assert eta.left() == pytest.approx(10.0)
    # resumed at 2 of 4: the 2 units left took 8 s at prior 1 s -> factor 4; re-planned b: 5 units
    eta = RunETA({"a": (4, 1.0), "b": (10, 1.0)}, clock=clock, prior_weight_s=0)
    eta.begin("a", done=1)
    assert len(eta.reports) == 1 and "a 1/4" in eta.reports[0]  # a resume reports at once
    eta.begin("a", done=2)
    clock.tick(8.0)
    eta.finish("a")
    eta.begin("b", units=5)
    assert eta.left() == pytest.approx(5 * 4.0)


def test_an_unplanned_stage_is_measured_only():
    clock = Clock()
    eta = RunETA({"b": (10, 1.0)}, clock=clock, prior_weight_s=5.0, report_every=0.0)
    for _ in range(3):
        clock.tick(7.0)
        msg = eta.advance("extra")
    assert "extra" not in msg                      # no units planned: no "extra i/n" progress
    assert eta.speed_factor() == 1.0 and eta.left() == pytest.approx(10.0)  # no prior: not a speed sample


def test_stage_events_and_the_factor_guards():
    clock = Clock()
    run = RunETA({"a": (4, 1.0), "b": (10, 1.0)}, clock=clock)
    run.begin("a")
    assert run.stages["a"].done == 0.0
    run.begin("a", units=8)                           # re-planned
    assert run.stages["a"].units == 8.0
    clock.tick(3.0)
    run.finish("a", cached=True)                      # a cache hit: untimed
    assert run.stages["a"].timed_units == 0 and run.speed_factor() == 1.0
    run.begin("b")
    clock.tick(3.0)
    run.finish("b", seconds=15.0)                     # 10 units in 15 s (not the clock's 3 s)
    assert run.stages["b"].timed_s == 15.0
    clock = Clock()
    # a running stage whose prior is spent shows 0 s left, not more
    r = RunETA({"a": (4, 1.0)}, clock=clock, prior_weight_s=0)
    r.begin("a")
    clock.tick(10.0)
    assert r.left() == 0.0
    # a stage advanced without begin() is running, not skipped, when the next one begins
    r = RunETA({"a": (4, 1.0), "b": (4, 1.0)}, clock=clock)
    r.advance("a")
    r.begin("b")
    assert not r.stages["a"].finished
    # factor guards, no prior weight: a stage resumed at its end and finished (3 s over 0 prior units) -> 1
    r = RunETA({"a": (4, 1.0), "b": (10, 1.0)}, clock=clock, prior_weight_s=0)
    r.begin("a", done=4)
    clock.tick(3.0)
    r.finish("a")
    assert r.speed_factor() == 1.0
    # small sums still count: 1 unit of prior 0.5 s in 1 s -> 2; of prior 1 s in 0.5 s -> 0.5
    for prior, took, factor in ((0.5, 1.0, 2.0), (1.0, 0.5, 0.5)):
        r = RunETA({"a": (1, prior), "b": (10, 1.0)}, clock=clock, prior_weight_s=0)
        r.begin("a")
        clock.tick(took)
        r.finish("a")
        assert r.speed_factor() == pytest.approx(factor) and r.left() == pytest.approx(10 * factor)
