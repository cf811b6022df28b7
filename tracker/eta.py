"""The time-left estimate of a tracking run, from the throughput measured on this machine.

Why: reference rates measured once on another machine (or on this one under a different load) were
3-5x off (the demo estimated 266 s and took 62 s), and a stage-level estimate never looked inside
training, which is most of a run, nor knew that a resumed run had only part of it left. Here

* every stage has a plan: how many units of work (frames, frame pairs, iterations) and a prior
  seconds-per-unit (``tracker.memory.STAGE_RATES``, scaled to the work size);
* the running stage's rate is measured from its own last ``RECENT`` units (``advance``) as they finish --
  training is timed per iteration, so a few iterations in the estimate is this machine's, at its current
  load, and it follows the load as it drifts;
* stages not started yet take their prior times the speed factor seen so far (measured seconds over
  prior seconds of every unit timed in this process, shrunk towards 1 by ``prior_weight_s`` seconds of
  prior evidence: a 0.02-s stage must not swing the whole estimate 5x, as the demo's first stage did),
  so a fast or a loaded machine shows after the first stages;
* cached stages and units finished before a resume (``begin(stage, done=...)``) count as done, never as
  a measurement (a cache hit says nothing about speed); a planned stage that a run skips (masks given,
  say) counts as done once a later stage begins;
* the first estimate is made only after the fit has looked into its work folder (``work_found``): a cached
  stage (preprocessing, refined features) is planned as the reading of its files, the newest checkpoint's
  iterations count as done (a re-run that took 13 s opened with "about 6 min" when the first estimate was
  the fresh run's plan).

The estimate is an object passed in, never a process global: the track command makes one ``RunETA`` per run
and passes it to the tracker's ``fit(video, masks, eta=...)``, which passes it on to the preprocessing (each
stage, the flows and trajectories per frame), the trainer (per iteration) and the refinement. A DINO-Tracker
fit called without one (the Python API) makes its own from the run's plan, so it logs its estimate like the
CLI; the lower layers called alone (``preprocess_video``, ``Trainer.run``) get a ``StageTimes``, which keeps
times and estimates nothing. The same object keeps the run's stage times (``times``: the track command's
summary, ``run_info.json`` and ``tracker.report().timings`` all read it; no second set of timings).

The clock is injectable so the arithmetic is tested with a fake clock (``tests/test_eta.py``).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)
RECENT = 20  # a running stage's rate is its last 20 units: the machine's load drifts during a 10-min fit


@dataclass
class _Stage:
    units: float             # work in this stage (frames, pairs, iterations)
    prior: float             # prior seconds per unit
    done: float = 0.0        # units finished (including those finished before a resume)
    timed_units: float = 0.0  # units finished and timed in this process
    timed_s: float = 0.0     # seconds those took
    started: float | None = None  # clock at begin (None: pending)
    last: float | None = None     # clock at the last timed unit
    first_s: float | None = None  # seconds of the first unit timed by ``advance`` (warm-up: not a rate sample)
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT))  # (seconds, units) of the last units
    finished: bool = False


class StageTimes:
    """A run's stage times and no estimate: ``times`` {stage: wall seconds}, in the order the stages first
    finish; the estimate's events (``begin``, ``note_done``, ``advance``, ``finish``, ``work_found``) do nothing
    here. What a layer records into when its caller passed no estimate; :class:`RunETA` keeps the same times
    and estimates too.

    ``timed(stage)`` times a block. A stage timed inside another (``add_time`` or a nested ``timed``: dino-flow
    trains inside ``track``) counts in its own entry only, not also in the enclosing one's, so no second is
    counted twice and ``times`` adds up to the time the blocks took."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.t_start = clock()
        self.times: dict[str, float] = {}
        self.history: list[tuple[float, float]] = []  # (elapsed, estimated left) at every report: none here
        self._open: list[list] = []  # the blocks being timed: [stage, start, seconds of stages timed inside]

    @contextmanager
    def timed(self, stage: str):
        block = [stage, self.clock(), 0.0]
        self._open.append(block)
        try:
            yield self
        finally:
            self._open.pop()
            took = self.clock() - block[1]
            self._count(stage, took - block[2], took)

    def add_time(self, stage: str, seconds: float) -> None:
        """``seconds`` of ``stage``, timed by the caller (inside an open ``timed`` block: not counted there)."""
        self._count(stage, seconds, seconds)

    def _count(self, stage: str, own: float, took: float) -> None:
        self.times[stage] = self.times.get(stage, 0.0) + max(0.0, own)
        if self._open:
            self._open[-1][2] += took

    def elapsed(self) -> float:
        return self.clock() - self.t_start

    # -- the estimate's events: nothing to estimate here ---------------------------------------------------
    def begin(self, stage: str, done: float = 0.0, units: float | None = None) -> None:
        return None

    def note_done(self, stage: str, done: float) -> None:
        return None

    def advance(self, stage: str, n: float = 1.0) -> str | None:
        return None

    def finish(self, stage: str, seconds: float | None = None, cached: bool = False) -> str | None:
        return None

    def work_found(self, cached: dict[str, float], iterations: int, switch: int) -> None:
        return None


class RunETA(StageTimes):
    """Time left in a run of named stages, and its stage times (:class:`StageTimes`); see the module docstring.

    ``plan``: ordered {stage: (units, prior seconds per unit)}; None: planned later (``set_plan``: the track
    command starts its run's clock before it knows the video). ``report_every``: the least seconds between two
    progress log lines from ``advance`` (stage ends always report)."""

    def __init__(self, plan: dict[str, tuple[float, float]] | None = None,
                 clock: Callable[[], float] = time.monotonic, report_every: float = 20.0,
                 prior_weight_s: float = 5.0):
        super().__init__(clock)
        self.set_plan(plan or {})
        self.report_every = float(report_every)
        self.prior_weight_s = float(prior_weight_s)
        self._last_report = self.t_start
        self.reports: list[str] = []

    def set_plan(self, plan: dict[str, tuple[float, float]]) -> None:
        self.stages = {k: _Stage(float(u), float(p)) for k, (u, p) in plan.items()}

    # -- events ------------------------------------------------------------------------------------
    def _get(self, stage: str) -> _Stage:
        if stage not in self.stages:  # an unplanned stage: no prior, measured only
            self.stages[stage] = _Stage(0.0, 0.0)
        return self.stages[stage]

    def begin(self, stage: str, done: float = 0.0, units: float | None = None) -> None:
        """``stage`` starts now; ``done`` units were finished before (a resume); ``units`` re-plans it."""
        s = self._get(stage)
        for name, other in self.stages.items():  # stages run in plan order: one never begun was skipped
            if name == stage:
                break
            if other.started is None and not other.finished:
                other.finished = True
        if units is not None:
            s.units = float(units)
        # a stage that begins is not done, even when a later stage began first and counted it as skipped:
        # dino-flow trains inside track() when its gate asks for it (tracker/fusion_gate.py)
        s.finished = False
        s.done = float(done)
        s.timed_units, s.timed_s, s.first_s = 0.0, 0.0, None
        s.recent.clear()
        s.started = s.last = self.clock()
        if done > 0:  # a resume: say at once that only the rest is left
            self.report(stage)

    def note_done(self, stage: str, done: float) -> None:
        """Before ``stage`` begins: ``done`` of its units are already finished (a checkpoint found)."""
        s = self._get(stage)
        if s.started is None and not s.finished:
            s.done = min(float(done), s.units)

    def advance(self, stage: str, n: float = 1.0) -> str | None:
        """``n`` more units of ``stage`` finished now (timed since the previous one)."""
        s = self._get(stage)
        now = self.clock()
        if s.started is None:
            s.started = s.last = now
        dt = now - (s.last if s.last is not None else now)
        if s.first_s is None:
            s.first_s = dt
        else:
            s.recent.append((dt, n))
        s.timed_s += dt
        s.timed_units += n
        s.done += n
        s.last = now
        if now - self._last_report >= self.report_every:
            return self.report(stage)
        return None

    def finish(self, stage: str, seconds: float | None = None, cached: bool = False) -> str:
        """``stage`` is complete. A computed stage without per-unit timing is timed as a whole here
        (``seconds``, else the clock since ``begin``); a cached one counts as done, untimed."""
        s = self._get(stage)
        now = self.clock()
        if not cached and s.timed_units == 0 and s.units > 0:
            took = seconds if seconds is not None else (now - s.started if s.started is not None else 0.0)
            s.timed_s, s.timed_units = float(took), s.units - s.done
        s.done, s.finished = s.units, True
        return self.report(stage)

    # -- arithmetic ----------------------------------------------------------------------------------
    def speed_factor(self) -> float:
        """Measured seconds / prior seconds over every unit timed in this process, with
        ``prior_weight_s`` seconds at factor 1 added to both (1 before any); warm-up units left out."""
        timed = [(s.timed_s - (s.first_s or 0.0), s.timed_units - (s.first_s is not None), s.prior)
                 for s in self.stages.values() if s.prior > 0]  # warm-up units left out
        measured = sum(t for t, _, _ in timed)
        prior = sum(u * p for _, u, p in timed)
        w = self.prior_weight_s
        return (measured + w) / (prior + w) if prior + w > 0 and measured + w > 0 else 1.0

    def stage_left(self, name: str) -> float:
        s = self.stages[name]
        if s.finished:
            return 0.0
        left_units = max(0.0, s.units - s.done)
        # (a stage timed as a whole is timed by ``finish``, which also finishes it: only per-unit rates are left here)
        if s.recent:  # per unit: the last RECENT units, the warm-up unit left out (the demo's first
            rate = sum(t for t, _ in s.recent) / sum(u for _, u in s.recent)  # iteration: 9 s, then 1.5 s)
            # the unit in progress: part of it has elapsed already (``advance`` set ``last`` with the rate's units)
            in_progress = self.clock() - s.last
            return max(0.0, left_units * rate - min(in_progress, rate))
        est = left_units * s.prior * self.speed_factor()
        since = s.last if s.last is not None else s.started
        if since is not None:  # running, no rate yet: what has elapsed of the current unit is spent
            est = max(est - (self.clock() - since), 0.0)
        return est

    def left(self) -> float:
        """Seconds left in the run."""
        return sum(self.stage_left(k) for k in self.stages)

    def record(self) -> float:
        """Seconds left now, kept in ``history`` (run_info.json shows how the estimate fared)."""
        left = self.left()
        self.history.append((self.elapsed(), left))
        return left

    def work_found(self, cached: dict[str, float], iterations: int, switch: int) -> None:
        """What the fit found in its work folder before any stage runs: each ``cached`` stage is planned as
        its reading (``{stage: prior seconds}``, from its size), the iterations of the newest checkpoint
        count as done. Then the run's first estimate, logged."""
        for name, seconds in cached.items():
            s = self.stages.get(name)
            if s is not None and s.started is None and not s.finished:
                s.units, s.prior, s.done = 1.0, float(seconds), 0.0
        if iterations > 0:
            self.note_done("train", min(iterations, switch))
            self.note_done("train+cyc", max(0, iterations - switch))
        left = self.record()
        found = [k for k in self.stages if k in set(cached)]
        what = (f"{len(found)} of {len(self.stages)} stages cached" if found else "nothing cached") + \
            (f", training resumes at iteration {iterations}" if iterations > 0 else "")
        log.info("estimated time about %s (%s; from reference rates, re-estimated from this run's own timing as "
                 "stages and iterations finish)", fmt_seconds(left), what)

    def report(self, stage: str | None = None) -> str:
        left = self.record()
        done = sum(1 for s in self.stages.values() if s.finished)
        where = ""
        if stage is not None and not self.stages[stage].finished and self.stages[stage].units:
            s = self.stages[stage]
            where = f"{stage} {s.done:.0f}/{s.units:.0f}, "
        msg = (f"overall: {where}{done}/{len(self.stages)} stages done, {self.elapsed():.0f} s so far, "
               f"about {fmt_seconds(left)} left")
        self._last_report = self.clock()
        self.reports.append(msg)
        log.info(msg)
        return msg


def fmt_seconds(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
