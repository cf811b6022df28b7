"""Best buddies: mutual NNs, NMS ambiguity ratio, pair selection, flow filter, npz round trip."""
import numpy as np
import torch

from cosettle.geometry import Geometry
from tracker.preprocess.best_buddies import (ambiguity_ratio, compute_best_buddies, load_best_buddies, mutual_nn,
                                  save_best_buddies, select_pairs, suppression_stencil)


def test_mutual_nn_hand_made():
    e = torch.eye(3)
    fa = torch.stack([e[0], e[1], e[2]])
    # b0 = e1 (best buddy of a1), b1 = e0 (of a0), b2 = (e0 + 0.5 e2): a2's NN is b2, but b2's NN is a0
    fb = torch.stack([e[1], e[0], e[0] + 0.5 * e[2]])
    ia, ib, cos, _ = mutual_nn(fa, fb)
    assert sorted(zip(ia.tolist(), ib.tolist())) == [(0, 1), (1, 0)]
    np.testing.assert_allclose(cos.numpy(), [1.0, 1.0], atol=1e-6)


def test_stencil_iou_boundary():
    # boxes of side 60 px, cells 10 px apart: offsets of 4 cells (40 px) along one axis give
    # IoU = 20*60 / (7200 - 1200) = 0.2 exactly -> NOT suppressed (NMS suppresses IoU > 0.2)
    sten = {tuple(x) for x in suppression_stencil(10.0, 30.0, 0.2).tolist()}
    assert (0, 3) in sten and (0, 4) not in sten and (3, 0) in sten and (4, 0) not in sten
    assert (0, 0) in sten


def _grid_row(h, w, peaks):
    row = torch.full((h * w,), 0.1)
    for (i, j), v in peaks.items():
        row[i * w + j] = v
    return row


def test_ambiguity_ratio_unique_vs_ambiguous():
    h, w, step = 10, 10, 10.0
    near = {(5, 5): 1.0, (5, 6): 0.95, (6, 5): 0.95, (4, 4): 0.95}  # one peak, its own neighbourhood
    unique = _grid_row(h, w, near)
    ambiguous = _grid_row(h, w, {**near, (0, 0): 0.9})  # a second, distant peak
    edge = _grid_row(h, w, {(5, 5): 1.0, (5, 9): 0.8})  # 40 px away: IoU exactly 0.2 -> survives
    r = ambiguity_ratio(torch.stack([unique, ambiguous, edge]), (h, w), step, 30.0, 0.2, 400)
    np.testing.assert_allclose(r.numpy(), [0.1, 0.9, 0.8], atol=1e-6)
    # top-k: with k = 3 the distant 0.9 peak is the 5th best candidate -> not considered: r = 0
    r3 = ambiguity_ratio(ambiguous[None], (h, w), step, 30.0, 0.2, topk=3)
    assert r3.item() == 0.0


def test_select_pairs():
    assert len(select_pairs(5)) == 10
    assert select_pairs(5, window=1) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    a, b = select_pairs(20, max_pairs=15, seed=3), select_pairs(20, max_pairs=15, seed=3)
    assert a == b and len(a) == 15 and len(set(a)) == 15 and all(s < t for s, t in a)
    assert select_pairs(20, max_pairs=15, seed=4) != a


def test_flow_filter_keeps_only_pairs_flow_does_not_connect(tmp_path):
    g = Geometry.for_input(4, 4, 16, 16, 16, 16)  # 4x4 grid, cell (i, j) centred at (4j+1.5, 4i+1.5)
    gen = torch.Generator().manual_seed(0)
    f0 = torch.randn(16, 8, generator=gen)
    feats = torch.stack([f0.T.reshape(8, 4, 4)] * 2)  # frame 1 == frame 0: best buddies p <-> p
    c = lambda i, j: (4 * j + 1.5, 4 * i + 1.5)  # noqa: E731
    nan = (np.nan, np.nan)
    traj = np.array([[c(0, 0), c(0, 0)],                    # A: at cell (0,0) in both frames
                     [(c(3, 3)[0] + 0.1, c(3, 3)[1] + 0.1), nan],  # B: frame 0 only
                     [nan, (c(3, 3)[0] + 0.1, c(3, 3)[1] + 0.1)]],  # C: frame 1 only
                    np.float32)
    bb, stats = compute_best_buddies(feats, g, [(0, 1)], traj)
    assert stats["mutual_nn"] == 16
    # kept iff the cell is nearer to (3,3)+0.1 than to (0,0): i + j > 3 -> 6 cells
    src = bb[(0, 1)]["src"]
    want = sorted(c(i, j) for i in range(4) for j in range(4) if i + j > 3)
    assert sorted(map(tuple, src.tolist())) == want
    np.testing.assert_array_equal(bb[(1, 0)]["src"], bb[(0, 1)]["dst"])
    np.testing.assert_allclose(bb[(0, 1)]["cos"], 1.0, atol=1e-5)
    assert ((bb[(0, 1)]["r"] >= 0) & (bb[(0, 1)]["r"] <= 1)).all()
    # without the filter every mutual NN stays
    bb2, _ = compute_best_buddies(feats, g, [(0, 1)], traj, flow_filter=False)
    assert len(bb2[(0, 1)]["src"]) == 16
    # npz round trip
    save_best_buddies(tmp_path / "bb.npz", bb)
    back = load_best_buddies(tmp_path / "bb.npz")
    assert set(back) == {(0, 1), (1, 0)}
    for k in back:
        for name in ("src", "dst", "cos", "r"):
            np.testing.assert_array_equal(back[k][name], bb[k][name])
