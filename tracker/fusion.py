"""``dino-flow``: chained optical flow at the video's own resolution, re-detected with DINO-Tracker's head
only on evidence, and a re-detection accepted only when it is verified.

Why: chained flow is pixel-precise over short spans but drifts and never recovers once it slips onto the
background or the point is occluded; DINO-Tracker re-detects a point anywhere (long-range, occlusions)
but is only cell-precise (one dsift cell at the CPU work size is 16 px of a 480p frame), and with weak
features its re-detections on slow clips are wrong about as often as right. The first fusion rule
re-detected whenever consistent flow strayed 3 cells from the head: +20 delta_seg over flow on
horsejump-high (where flow breaks early), -8 on cows and -9.5 on average over unseen BADJA clips (slow
motion, where flow is right and the head is not). So the default now follows flow unless flow is
demonstrably broken or the head has disagreed for several frames, and takes the head's position only
when the query's own appearance is found there. This is NOT part of the DINO-Tracker paper (which uses
the head alone); the pure method stays available as tracker ``dino``.

Rule, per query and step a -> b (forwards from the query frame, then backwards), in original pixels:

* flow candidate ``f = p_a + F_ab(p_a)``; *consistent* when the forward-backward error is below
  ``fusion_fb_px`` and ``f`` is inside the frame. Head candidate ``d`` = DINO-Tracker's prediction in b
  (tracked from the query feature, so it never drifts) with its visibility decision (the head's own
  forward-backward check); they *agree* when the head sees the point within ``fusion_snap_cells`` cells
  of ``f`` (``fusion_snap_cells``: unset, the value measured for the backend, tracker/config.py ``snap_cells``);
* **follow flow** when it is consistent, or inconsistent but inside the frame and agreeing with the head;
* **re-detection candidate** ``d`` when flow is inconsistent and does not agree with a head that sees the
  point (flow broke), or when consistent flow has carried a point queried on the foreground off the
  foreground mask (the user's masks, else the automatic ones) while the head sees it elsewhere, for
  ``fusion_drift_frames`` frames in a row (flow drifted onto the background). Disagreement alone is no
  evidence: with dsift the head's far predictions on slow clips (cows) are wrong as often as right,
  and on one seed of cows two such corrections cost 3 delta_seg. A drift correction must also land on
  the foreground;
* a candidate is **verified** when the query's own patch (17x17 px of the query frame) is found by
  normalised cross-correlation within ``fusion_verify_cells`` feature cells of ``d`` with correlation
  >= ``fusion_verify_ncc``; the point moves to that match (pixel-precise again). Any candidate that
  fails (drift or break), or broken flow with a head that does not see the point, makes the point
  **lost**: not visible, positioned where flow took it (clamped to the frame), and it stays not visible
  (while still following flow, so it can come back) until a verified re-detection. A failed drift
  candidate is lost too, not shown on the flow that left the foreground: positions are the same either
  way; showing them (``fuse_tracks(drift_fail="flow")``) added wrong-visible entries on horsejump-high
  and only right ones on cows (seed 0, docs/tracking.md): not a win on both clips, so the rule stays.
  A query patch that leaves the frame or has no texture can never verify.
* where consistent flow is followed and a seeing head agrees, the *reported* position is
  ``f + fusion_head_weight * (d - f)`` (the next step still starts from ``f``): the head is cell-precise but
  anchored to the query, flow pixel-precise but sliding within the radius. By default (``fusion_head_gate``
  "flow-failed") only for a point whose flow has already failed a check in this pass: applied to every point
  (gate "always") it gained BADJA delta_seg but cost pixel precision where flow never fails (synthetic TAP AJ
  -10.7 at 0.75 on DINOv2). The weight is measured per backend (tracker/config.py ``head_weight``,
  docs/tracking.md).
* visible = followed flow and not lost, or verified re-detection. Confidence: the larger of flow's
  (1 / (1 + (err / fusion_fb_px)^2)) and the head's where flow was followed, the verification
  correlation where re-detected, 0 where not visible.

Flows are computed on the fly, one frame pair at a time, so memory does not grow with clip length.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from cosettle.errors import UserError
from cosettle.frames import as_frames
from cosettle.io.lock import folder_lock
from cosettle.io.queries import as_queries
from cosettle.io.tracks import TrackResult
from cosettle.progress import tqdm

from .base import RunReport
from .config import HEAD_GATES, head_weight, snap_cells
from .dino.tracker import PREPROCESS_LOCK, Tracker
from .fusion_gate import GateDecision, blind_head, decide, reuse_flows
from .preprocess.flow import inside, make_flow_estimator, sample_flow
from .preprocess.masks import points_on_mask
from .preprocess.pipeline import preprocess_video
from .registry import register_tracker

log = logging.getLogger(__name__)


# what the rule did at each entry (FusionStats.state, per point and frame): where the head is right and the
# fused track is not, these say which decision to change (scripts/head_vs_flow.py --states, docs/tracking.md)
STATES = ("query", "flow, head agrees", "flow, head far", "flow, head unseen", "broken flow, head agrees",
          "re-detected", "lost", "still lost")
QUERY, FLOW_AGREE, FLOW_FAR, FLOW_UNSEEN, BROKEN_AGREE, REDETECTED, LOST, STILL_LOST = range(len(STATES))
# the states in which a point's flow has failed a check (broke, or was carried off the foreground): from then
# on in that pass, the head weight's gate "flow-failed" lets the head pull the point's reported position
FLOW_FAILED = (BROKEN_AGREE, REDETECTED, LOST, STILL_LOST)


@dataclass
class FusionStats:
    flow_steps: int = 0        # point-steps that followed flow (visible or not)
    redetections: int = 0      # verified re-detections (flow broke or drifted)
    drift_redetections: int = 0  # ... of which flow was consistent but had drifted from the head
    rejected: int = 0          # re-detection candidates that failed verification
    lost_new: int = 0          # point-steps where flow broke and nothing verified: the point became lost
    not_visible: int = 0       # point-steps reported not visible (lost, or following flow after a loss)
    flow_calls: int = 0
    seconds: float = 0.0
    redetected: np.ndarray | None = None  # (N, T) bool: verified re-detections of the last call, per point and frame
    state: np.ndarray | None = None  # (N, T) int8 index into STATES: what the rule did there (last call)

    def to_dict(self) -> dict:
        total = max(1, self.flow_steps + self.redetections + self.lost_new)
        return {"flow_steps": self.flow_steps, "redetections": self.redetections,
                "drift_redetections": self.drift_redetections, "rejected": self.rejected,
                "lost": self.lost_new, "not_visible": self.not_visible,
                "redetect_share": self.redetections / total, "not_visible_share": self.not_visible / total,
                "flow_calls": self.flow_calls, "seconds": round(self.seconds, 3)}


@dataclass
class StepDecision:
    """Per point of one step: where flow goes and what the rule wants to do there."""

    flow: np.ndarray           # (M, 2) flow candidate f
    fb_err: np.ndarray         # (M,) forward-backward error, px
    consistent: np.ndarray     # (M,) bool
    follow: np.ndarray         # (M,) bool: take f
    candidate: np.ndarray      # (M,) bool: re-detect at d if verified
    drift: np.ndarray          # (M,) bool: candidate because consistent flow drifted (else flow broke)
    run: np.ndarray            # (M,) int: steps in a row that consistent flow was off the foreground
    #                            while a seeing head was far
    agree: np.ndarray          # (M,) bool: a seeing head within the agreement radius of f


def fuse_step(p_a: np.ndarray, flow_ab: np.ndarray, flow_ba: np.ndarray, d_b: np.ndarray, dvis_b: np.ndarray,
              run_a: np.ndarray, snap_px: float, fb_px: float, drift_frames: int,
              left_fg: Callable[[np.ndarray], np.ndarray] | None = None) -> StepDecision:
    """The evidence rule of one step for M points (see the module docstring); no verification here.
    ``left_fg(f) -> (M,) bool``: the flow candidate has left the foreground of a query made on it;
    None (no foreground known): drift is never a candidate."""
    h, w = flow_ab.shape[:2]
    f = p_a + sample_flow(flow_ab, p_a)
    back = f + sample_flow(flow_ba, f)
    err = np.linalg.norm(back - p_a, axis=1)
    in_frame = inside(f, h, w)
    consistent = (err < fb_px) & in_frame
    dist = np.linalg.norm(f - d_b, axis=1)
    agree = dvis_b & (dist <= snap_px)
    far = dvis_b & ~agree
    off_fg = np.zeros(len(f), bool) if left_fg is None else np.asarray(left_fg(f), bool)
    run = np.where(consistent & far & off_fg, run_a + 1, 0)
    drift = run >= drift_frames
    keep_agree = ~consistent & agree & in_frame
    follow = (consistent & ~drift) | keep_agree
    candidate = drift | (~consistent & ~keep_agree & dvis_b)
    return StepDecision(f.astype(np.float32), err, consistent, follow, candidate, drift, run, agree)


class TemplateVerifier:
    """Finds query ``i``'s own patch (``2 * half + 1`` px square, grey, from its query frame) within
    ``search_px`` of a position by normalised cross-correlation: ``match(idx, frame, xy)`` -> (peak
    correlation (M,), best position (M, 2)). Peak -1 where no comparison is possible (the patch or the
    search window leaves the frame, or the query patch is flat): such a point can never be verified."""

    def __init__(self, frames: np.ndarray, queries: np.ndarray, half: int = 8, search_px: float = 16.0):
        self.frames, self.half, self.search = frames, int(half), int(round(search_px))
        gray = {int(t): cv2.cvtColor(np.asarray(frames[int(t)]), cv2.COLOR_RGB2GRAY)
                for t in np.unique(np.round(queries[:, 0]))}
        self.templates = [self._patch(gray[int(round(t))], x, y, self.half) for t, x, y in queries]
        self._gray: tuple[int, np.ndarray] | None = None

    @staticmethod
    def _patch(img, x, y, r):
        xi, yi = int(round(x)), int(round(y))
        if xi - r < 0 or yi - r < 0 or xi + r >= img.shape[1] or yi + r >= img.shape[0]:
            return None
        return img[yi - r: yi + r + 1, xi - r: xi + r + 1]

    def _frame(self, t: int) -> np.ndarray:
        if self._gray is None or self._gray[0] != t:  # steps ask for one frame many times in a row
            self._gray = (t, cv2.cvtColor(np.asarray(self.frames[t]), cv2.COLOR_RGB2GRAY))
        return self._gray[1]

    def match(self, idx: np.ndarray, frame: int, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        img = self._frame(frame)
        peaks = np.full(len(idx), -1.0, np.float32)
        out = np.array(xy, np.float32, copy=True)
        r, s = self.half, self.search
        for k, (i, (x, y)) in enumerate(zip(idx, xy)):
            tpl = self.templates[i]
            win = self._patch(img, x, y, r + s)
            if tpl is None or win is None or float(tpl.std()) < 1.0:
                continue
            res = cv2.matchTemplate(win, tpl, cv2.TM_CCOEFF_NORMED)
            _, peak, _, (dx, dy) = cv2.minMaxLoc(res)
            peaks[k] = peak
            out[k] = (int(round(x)) - s + dx, int(round(y)) - s + dy)
        return peaks, out


def fuse_tracks(dino: TrackResult, flow_pair, num_frames: int, snap_px: float, fb_px: float,
                verifier: TemplateVerifier | None, verify_ncc: float = 0.5, drift_frames: int = 1,
                foreground: Callable[[int, np.ndarray], np.ndarray] | None = None,
                progress: bool = False, stats: FusionStats | None = None, drift_fail: str = "lost",
                head_weight: float = 0.0, head_gate: str = "flow-failed"):
    """Fuse DINO predictions with flow. ``flow_pair(t) -> (F[t], B[t])``: flows t -> t+1 and t+1 -> t.
    ``verifier``: a :class:`TemplateVerifier` of the queries; None accepts every re-detection candidate
    that the head sees (no appearance check: for tests of the rule alone, never the tracker's default).
    ``foreground(t, xy) -> (M,) bool``: points on the foreground mask of frame t (original pixels);
    None: no drift re-detections (only broken flow is re-detected).
    ``drift_fail``: what a drift candidate that fails verification does: ``"lost"`` (the rule) or ``"flow"``
    (keeps following flow, visible; a development variant for ``scripts/tune_fusion.py``, docs/tracking.md).
    ``head_weight``: where consistent flow is followed and a seeing head agrees with it (state "flow, head
    agrees"), the reported position is ``f + head_weight * (d - f)``; the next step still starts from ``f``
    (0: flow's position everywhere, as before this option). ``head_gate``: which points it applies to --
    ``"flow-failed"``: only a point whose flow has failed a check (a state in ``FLOW_FAILED``) earlier in the same
    pass (forwards, or backwards, from its query), so a point whose flow never failed keeps flow's pixel-precise
    position; ``"always"``: every point (the option as first measured, docs/tracking.md).

    Returns (tracks (N,T,2), visible (N,T), confidence (N,T)) in original pixels.
    """
    if drift_fail not in ("lost", "flow"):
        raise ValueError(f"drift_fail must be 'lost' or 'flow', not {drift_fail!r}")
    if head_gate not in HEAD_GATES:
        raise ValueError(f"head_gate must be one of {HEAD_GATES}, not {head_gate!r}")
    st = stats if stats is not None else FusionStats()
    q = np.asarray(dino.queries, np.float64)
    n, T = len(q), num_frames
    tq = q[:, 0].round().astype(int)
    tracks = np.array(dino.tracks, np.float32, copy=True)  # the chain: each step starts from here
    vis = np.zeros((n, T), bool)
    conf = np.zeros((n, T), np.float32)
    tracks[np.arange(n), tq] = q[:, 1:3]
    reported = tracks.copy() if head_weight else tracks  # what is returned; apart from the chain only with a weight
    vis[np.arange(n), tq] = True
    conf[np.arange(n), tq] = 1.0
    lost = np.zeros(n, bool)
    flow_failed = np.zeros(n, bool)  # this pass: the point's flow failed a check at some step (head_gate)
    run = np.zeros(n, np.int64)
    on_fg = np.zeros(n, bool)  # queries made on the foreground: only they can drift off it
    st.redetected = np.zeros((n, T), bool)  # this call's (a FusionStats may add up several calls' counts)
    st.state = np.full((n, T), QUERY, np.int8)
    if foreground is not None:
        for t in np.unique(tq):
            on_fg[tq == t] = foreground(int(t), q[tq == t, 1:3])

    def step(idx, a, b, flow_ab, flow_ba):
        h, w = flow_ab.shape[:2]
        d_b, dvis_b, dconf_b = dino.tracks[idx, b], dino.visible[idx, b], dino.confidence[idx, b]
        left_fg = None if foreground is None else (lambda f: on_fg[idx] & ~foreground(b, f))
        dec = fuse_step(tracks[idx, a], flow_ab, flow_ba, d_b, dvis_b, run[idx], snap_px, fb_px, drift_frames,
                        left_fg)
        p_b = dec.flow.copy()
        was_lost = lost[idx].copy()
        follow = dec.follow | dec.drift if drift_fail == "flow" else dec.follow  # drift & ok: re-detected below
        v_b = follow & ~was_lost
        fconf = np.where(dec.consistent, 1.0 / (1.0 + (dec.fb_err / fb_px) ** 2), 0.0)
        c_b = np.where(v_b, np.maximum(fconf, dconf_b), 0.0).astype(np.float32)
        ok = np.zeros(len(idx), bool)
        cand = np.nonzero(dec.candidate)[0]
        if len(cand):
            if verifier is None:
                peaks, xy = np.ones(len(cand), np.float32), d_b[cand]
            else:
                peaks, xy = verifier.match(idx[cand], b, d_b[cand])
            good = peaks >= verify_ncc
            drift_c = dec.drift[cand]
            if drift_c.any():  # a drift correction must land on the foreground that flow left
                good[drift_c] &= foreground(b, xy[drift_c])
            ok[cand[good]] = True
            st.redetected[idx[cand[good]], b] = True
            p_b[cand[good]] = xy[good]
            c_b[cand[good]] = np.clip(peaks[good], 0.0, 1.0)
            st.rejected += int((~good).sum())
            st.drift_redetections += int((good & drift_c).sum())
        v_b |= ok
        newly_lost = ~follow & ~ok  # flow broke (or drifted) and nothing verified where the head looked
        p_b[newly_lost] = np.clip(p_b[newly_lost], 0.0, [w - 1.0, h - 1.0])
        lost[idx] = (was_lost & ~ok) | newly_lost
        run[idx] = np.where(ok, 0, dec.run)
        tracks[idx, b] = p_b
        vis[idx, b] = v_b
        conf[idx, b] = np.where(v_b, c_b, 0.0)
        followed = np.where(~dec.consistent, BROKEN_AGREE,
                            np.where(dec.agree, FLOW_AGREE, np.where(dvis_b, FLOW_FAR, FLOW_UNSEEN)))
        state = np.where(ok, REDETECTED, np.where(newly_lost, LOST, np.where(was_lost, STILL_LOST, followed)))
        st.state[idx, b] = state
        if head_weight:
            # the head is cell-precise but anchored to the query; flow is pixel-precise but slides: where they
            # agree, report a point between them (measured per backend, docs/tracking.md), keep chaining flow
            rep = p_b.copy()
            m = state == FLOW_AGREE
            if head_gate == "flow-failed":  # only where flow has already shown it can fail for this point
                flow_failed[idx] |= np.isin(state, FLOW_FAILED)
                m &= flow_failed[idx]
            rep[m] += np.float32(head_weight) * (d_b[m] - p_b[m])
            reported[idx, b] = rep
        st.flow_steps += int((follow & ~ok).sum())
        st.redetections += int(ok.sum())
        st.lost_new += int(newly_lost.sum())
        st.not_visible += int((~v_b).sum())

    t0 = time.perf_counter()
    need_back = bool(len(q)) and tq.max() > 0
    bar = tqdm(total=(T - 1) * (2 if need_back else 1), desc="fuse flow+dino", unit="pair",
               disable=not progress, leave=False)
    for t in range(T - 1):  # forwards: points queried at <= t move t -> t+1
        idx = np.nonzero(tq <= t)[0]
        if len(idx):
            fwd, bwd = flow_pair(t)
            st.flow_calls += 2
            step(idx, t, t + 1, fwd, bwd)
        bar.update(1)
    if need_back:
        lost[:] = False  # the backward pass starts again from the query point
        flow_failed[:] = False
        run[:] = 0
        for t in range(T - 2, -1, -1):  # backwards: points queried at >= t+1 move t+1 -> t
            idx = np.nonzero(tq >= t + 1)[0]
            if len(idx):
                fwd, bwd = flow_pair(t)
                st.flow_calls += 2
                step(idx, t + 1, t, bwd, fwd)
            bar.update(1)
    bar.close()
    st.seconds += time.perf_counter() - t0
    return reported, vis, conf


class FlowGuidedTracker(Tracker):
    """DINO-Tracker (trained exactly as ``dino``) + flow-guided inference; same API as ``Tracker``.

    Training is paid only where the trained head can change the answer (``fusion_train``,
    tracker/fusion_gate.py): ``fit(video)`` runs the preprocessing stages that the foreground masks need
    (cached in the work folder, so not lost when training follows); ``track(queries)`` first runs the
    fusion rule with a head that sees nothing and trains (the same full ``fit`` as ``dino``) only when some
    query has an inconsistent flow step or is carried off the foreground; else it returns that pre-pass,
    whose positions and visibility are what the trained rule would give (confidence: flow's own).
    ``fusion_train: always`` fits fully in ``fit`` as before the gate; ``never`` never trains.
    ``track_head`` (the pure head of the same fit, tracker ``dino``) trains when it has not yet."""

    name = "dino-flow"
    fusion_stats: FusionStats | None = None  # the last track()'s counts (run_info.json "fusion")

    def fit(self, video, masks=None, eta=None) -> "FlowGuidedTracker":
        # checked and converted once: the pre-pass, the full fit the gate may ask for and the flow all read
        # these frames, and their digest is computed once
        video = as_frames(video, min_frames=2, who=f"the {self.name} tracker's video")
        self._fit_args = (video, masks)   # the full fit, if the gate asks for it, sees the same inputs
        self._full = self.cfg.fusion_train == "always"
        self._trained = False
        self.gate: GateDecision | None = None
        self.fusion_stats = None
        self.prep = self.infer = self.model = None
        super().fit(video, masks, eta)
        self._frames = video.array  # original resolution: flow is pixel-precise there
        return self

    def _fit_locked(self, video, masks, t0: float) -> None:
        if self._full:
            super()._fit_locked(video, masks, t0)
            self._trained = True
            return
        # only what the pre-pass reads: the work geometry and the foreground masks the fit would use (under the
        # same preprocessing lock as the full fit: one writer of the cached stages)
        with folder_lock(self.work_dir, "work folder's preprocessing", name=PREPROCESS_LOCK):
            self.prep = preprocess_video(video, self.work_backend, self.prep_cfg, self.work_dir, masks=masks,
                                         progress=self.progress, until="masks", video_digest=self.video_digest,
                                         eta=self.eta)
        self.eta.add_time("preprocess", time.perf_counter() - t0)

    def _train(self) -> None:
        """The full fit of ``dino`` (the stages already computed are read from the work folder)."""
        if self._trained:
            return
        if getattr(self, "_fit_args", None) is None:
            raise RuntimeError("call fit(video) before track()")
        self._full = True
        Tracker.fit(self, *self._fit_args, eta=self.eta)  # the same run's estimate and stage times

    def cell_px(self) -> float:
        """One feature cell in original-video pixels (the geometry's stride times the resize scale).
        Public, with ``foreground`` and ``flow_pair``: scripts/tune_fusion.py re-fuses cached heads with them,
        so its scores are this tracker's to the joint."""
        g = self.geometry
        h, _ = self.geometry_image_hw
        return float(g.stride) * h / g.input_h

    def foreground(self, t: int, xy: np.ndarray) -> np.ndarray:
        """(M,) bool: original-pixel points on frame t's foreground mask (the masks the fit used, at the
        work resolution); points outside the frame are not."""
        return points_on_mask(self.prep.masks[t], self.geometry.image_to_input(np.asarray(xy, np.float64)))

    def flow_pair(self):
        """``flow_pair(t) -> (flow t -> t+1, flow t+1 -> t)`` on the fitted video's original frames."""
        # DIS at full resolution (finest scale 0), as the ``flow`` baseline: no weights needed
        est = make_flow_estimator("dis", self.cfg.fusion_dis_preset, None, "cpu", 0)
        frames = self._frames

        def flow_pair(t):
            return est(frames[t], frames[t + 1]), est(frames[t + 1], frames[t])
        return flow_pair

    def track_head(self, queries, occlusion: str | None = None) -> TrackResult:
        """The pure DINO-Tracker result of the same fitted model (tracker ``dino``); trains if not yet."""
        self._train()
        return super().track(queries, occlusion)

    def track(self, queries, occlusion: str | None = None) -> TrackResult:
        if self.prep is None:
            raise RuntimeError("call fit(video) before track()")
        c = self.cfg
        # a weight applied to every agreeing point lets the head move points whose flow never failed: the
        # pre-pass cannot prove those positions, so only the trained rule can give them
        every_point = c.fusion_head_gate == "always" and head_weight(c, self.backend) > 0
        if c.fusion_train == "always" or (c.fusion_train == "auto" and (self._trained or every_point)):
            if c.fusion_train == "auto" and not self._trained:  # here only because of every_point
                log.info("fusion gate: fusion_head_gate=always with a head weight moves points whose flow held "
                         "-> training")
            self.gate = None
            return self._fuse(queries, occlusion)  # the head is paid for (or needed everywhere): use it
        res, self.gate = self.prepass(queries)
        log.info("fusion gate: %s", self.gate.message())
        if not self.gate.train:
            return res
        self._train()
        return self._fuse(queries, occlusion)

    def prepass(self, queries) -> tuple[TrackResult, GateDecision]:
        """What ``track`` does first, before any training: the fusion rule with a head that sees nothing
        (tracker/fusion_gate.py) -> (flow's positions, not visible after an inconsistent step; the decision:
        which queries the trained head could change, and whether ``track`` trains). When the decision does
        not train, this result is the one ``track`` returns."""
        qs = as_queries(queries)
        q = np.asarray(qs.txy, dtype=np.float64).reshape(-1, 3)
        names = list(qs.names)
        T = self._frames.shape[0]
        if len(q) and (q[:, 0].min() < 0 or q[:, 0].max() > T - 1):
            raise UserError(f"query frame out of range [0, {T - 1}]")
        c = self.cfg
        head = blind_head(q, T)  # queries as float32, as the trained head's result carries them
        stats = FusionStats()
        tracks, vis, conf = fuse_tracks(head, reuse_flows(self.flow_pair(), head.queries[:, 0]), T,
                                        0.0, c.fusion_fb_px, None, c.fusion_verify_ncc, c.fusion_drift_frames,
                                        self.foreground, progress=self.progress, stats=stats)
        self.eta.add_time("fusion gate", stats.seconds)
        gate = decide(c.fusion_train, vis, tracks, head.queries, self.foreground, c.fusion_drift_frames)
        self.fusion_stats = _GatedStats(**vars(stats), gate=gate.to_dict())
        return TrackResult(tracks, vis, conf, head.queries, names), gate

    def _fuse(self, queries, occlusion: str | None = None) -> TrackResult:
        """The rule with the trained head (the path before the gate, unchanged)."""
        res = self.track_head(queries, occlusion)
        # the decision that led here (None: no pre-pass ran, the head was trained already or 'always')
        self.fusion_stats = _GatedStats(gate=None if self.gate is None else self.gate.to_dict())
        tracks, vis, conf = self.fuse_head(res, stats=self.fusion_stats)
        self.eta.add_time("fusion", self.fusion_stats.seconds)
        log.info("flow+dino fusion: %s", self.fusion_stats.to_dict())
        return TrackResult(tracks, vis, conf, res.queries, res.names, redetected=self.fusion_stats.redetected)

    def fuse_head(self, head: TrackResult, flow_pair=None, stats: FusionStats | None = None, cfg=None,
                  drift_fail: str = "lost"):
        """The rule on a head's result with this tracker's settings (radius and head weight resolved for its
        backend), flows and foreground -> ``fuse_tracks``' (tracks, visible, confidence). ``flow_pair``: the
        video's flows if already computed (default: this tracker's). ``cfg``: other fusion settings than this
        tracker's (scripts/tune_fusion.py's sweep), ``drift_fail``: ``fuse_tracks``' development variant.
        ``_fuse``, scripts/head_vs_flow.py --states and scripts/tune_fusion.py (a cached head) all fuse through
        here. A ``_GatedStats`` records the radius and weight used."""
        c = self.cfg if cfg is None else cfg
        snap = snap_cells(c, self.backend)  # the config's, else the one measured for this backend and stride
        weight = head_weight(c, self.backend)  # likewise (gated by c.fusion_head_gate)
        if isinstance(stats, _GatedStats):
            stats.snap_cells, stats.head_weight = snap, weight
        cell = self.cell_px()
        verifier = TemplateVerifier(self._frames, head.queries, search_px=c.fusion_verify_cells * cell)
        return fuse_tracks(head, flow_pair or self.flow_pair(), self._frames.shape[0], snap * cell, c.fusion_fb_px,
                           verifier, c.fusion_verify_ncc, c.fusion_drift_frames, self.foreground,
                           progress=self.progress, stats=stats, drift_fail=drift_fail, head_weight=weight,
                           head_gate=c.fusion_head_gate)

    def report(self) -> RunReport:
        """``Tracker.report`` plus the fusion's counts and the gate's decision (``fusion``)."""
        rep = super().report()
        if self.fusion_stats is not None:
            rep.info["fusion"] = self.fusion_stats.to_dict()
        return rep


@dataclass
class _GatedStats(FusionStats):
    """The fusion's counts plus the gate's decision (run_info.json ``fusion``)."""

    gate: dict | None = None  # GateDecision.to_dict(); None: no pre-pass (fusion_train=always, or trained already)
    snap_cells: float | None = None  # the agreement radius used (resolved per backend); None: the head never ran
    head_weight: float | None = None  # the head's share of a reported position (resolved per backend); likewise

    def to_dict(self) -> dict:
        return {**super().to_dict(), "gate": self.gate, "snap_cells": self.snap_cells, "head_weight": self.head_weight}


@register_tracker("dino-flow", summary="DINO-Tracker fused with optical flow, the default (trains per video only "
                  "when flow fails its checks; fast preset, measured on 2 CPU cores: 80 s for the 24-frame demo to ~8 "
                  "min for 50 frames of 854x480; a cached re-run takes seconds)", needs_backend=True, dino_config=True,
                  rank=10)
def _build_dino_flow(backend, config, progress, **kwargs) -> FlowGuidedTracker:
    return FlowGuidedTracker(backend, config, progress=progress, **kwargs)
