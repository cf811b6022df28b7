"""``FusionStats.state`` (tracker/fusion.py): what the rule did at each entry, on hand-built flows and heads.

Set-up: frames 80 x 100 px, ``snap_px`` 3, ``fb_px`` 1.5, T 4. Flow is (+1, 0) with a backward flow that cancels
it (error 0: consistent), except pair 1 <-> 2 whose backward flow is (+3, 0): forwards the error is 4 px > 1.5
(broken); backwards (frame 2 -> 1 uses the backward flow (+3, 0) and checks with the forward (+1, 0)) it is 4 px
too. The verifier accepts every candidate where the head put it, except query 4's."""
from __future__ import annotations

import numpy as np

from cosettle.io.tracks import TrackResult
from tracker.fusion import (BROKEN_AGREE, FLOW_AGREE, FLOW_FAR, FLOW_UNSEEN, LOST, QUERY, REDETECTED, STATES,
                            STILL_LOST, FusionStats, fuse_tracks)

H, W, T = 80, 100, 4


def _const_flow(dx, dy):
    f = np.zeros((H, W, 2), np.float32)
    f[..., 0], f[..., 1] = dx, dy
    return f


class _AcceptAllBut4:
    """Every candidate found where the head put it, correlation 1 (accepted) -- except query 4's, 0 (rejected)."""

    def match(self, idx, frame, xy):
        return (np.asarray(idx) != 4).astype(np.float32), np.array(xy, np.float32)


def test_each_entry_says_what_the_rule_did():
    """Heads on flow's path x + t (queries at frame 0) or x - (3 - t) (query at frame 3), except:

    * q0 (40, 40): on the path everywhere. Frames 1, 3: consistent flow, head within 3 px -> flow, head agrees;
      frame 2: broken flow, head agrees -> followed (broken flow, head agrees).
    * q1 (60, 30): head blind at frames 1 and 2. Frame 1: consistent -> flow, head unseen; frame 2: broken and
      no head -> lost; frame 3: still lost (follows flow, not visible).
    * q2 (20, 60): head 10 px off at frame 1 (consistent flow: flow, head far; no foreground, so no drift) and
      (5, 3) px off at frame 2 (broken, far: a candidate, verified -> re-detected at (27, 63)); frame 3: flow
      (28, 63) vs head (23, 60), 5.8 px -> flow, head far.
    * q3 (70, 50) queried at frame 3, tracked backwards: frame 2 consistent, on the path (69) -> agrees;
      frame 1: flow 69 + 3 = 72 is broken and the head (68) is 4 px off -> re-detected at 68; frame 0: 67 both
      -> agrees.
    * q4 (50, 20): on the path except (5, 3) px off at frame 2 (broken, far: a candidate, rejected) -> lost,
      then still lost."""
    q = np.array([[0, 40.0, 40.0], [0, 60.0, 30.0], [0, 20.0, 60.0], [3, 70.0, 50.0], [0, 50.0, 20.0]], np.float32)
    t = np.arange(T)
    head = np.zeros((5, T, 2), np.float32)
    head[:, :, 0] = q[:, None, 1] + t
    head[:, :, 1] = q[:, None, 2]
    head[3, :, 0], head[3, :, 1] = 70.0 - (3 - t), 50.0
    head[2, 1] = (21 + 10, 60)
    head[2, 2] = (22 + 5, 60 + 3)
    head[4, 2] = (52 + 5, 20 + 3)
    dvis = np.ones((5, T), bool)
    dvis[1, 1:3] = False
    fwd, bwd, broken = _const_flow(1, 0), _const_flow(-1, 0), _const_flow(3, 0)
    st = FusionStats()
    tracks, visible, _ = fuse_tracks(TrackResult(head, dvis, np.ones((5, T), np.float32), q),
                                     lambda k: (fwd, broken if k == 1 else bwd), T, 3.0, 1.5, _AcceptAllBut4(), 0.5,
                                     stats=st)
    assert st.state.dtype == np.int8 and st.state.shape == (5, T)
    assert st.state.tolist() == [[QUERY, FLOW_AGREE, BROKEN_AGREE, FLOW_AGREE],
                                 [QUERY, FLOW_UNSEEN, LOST, STILL_LOST],
                                 [QUERY, FLOW_FAR, REDETECTED, FLOW_FAR],
                                 [FLOW_AGREE, REDETECTED, FLOW_AGREE, QUERY],
                                 [QUERY, FLOW_AGREE, LOST, STILL_LOST]]
    # the positions the comments derive, so the states above describe this run and not another
    assert tracks[2].tolist() == [[20, 60], [21, 60], [27, 63], [28, 63]]
    assert tracks[3, :, 0].tolist() == [67, 68, 69, 70]
    assert visible[1].tolist() == visible[4].tolist() == [True, True, False, False]
    assert (st.state == REDETECTED).tolist() == st.redetected.tolist()
    assert len(STATES) == 8 and STATES[LOST] == "lost"
