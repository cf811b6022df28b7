"""Each DINO-Tracker loss on hand-made inputs with hand-computed values (dino_tracker.md §4.2)."""
from __future__ import annotations

import math

import pytest
import torch

from tracker.dino import losses as L


def test_huber_both_branches():
    d = 1 / 32
    e = torch.tensor([0.01, -0.01, 0.1, -0.5])
    want = [0.5 * 0.01 ** 2, 0.5 * 0.01 ** 2, d * (0.1 - d / 2), d * (0.5 - d / 2)]
    assert L.huber(e, d).tolist() == pytest.approx(want, rel=1e-6)


def test_flow_loss_normalised_units():
    hw = (101, 201)  # normalisation divides by (W-1, H-1) = (200, 100)
    tgt = torch.tensor([[50.0, 40.0], [10.0, 10.0]])
    assert float(L.flow_loss(tgt, tgt, hw)) == 0.0
    pred = tgt + torch.tensor([1.0, 0.0])  # 1 px in x = 2/200 = 0.01 normalised, < delta
    assert float(L.flow_loss(pred, tgt, hw)) == pytest.approx(0.5 * 0.01 ** 2 / 2, rel=1e-5)
    pred = tgt + torch.tensor([0.0, 10.0])  # 10 px in y = 0.2 normalised, > delta
    d = 1 / 32
    assert float(L.flow_loss(pred, tgt, hw)) == pytest.approx(d * (0.2 - d / 2) / 2, rel=1e-5)


def test_cycle_loss_weights_by_cycle_error():
    hw = (101, 201)
    lab = torch.tensor([[10.0, 10.0], [20.0, 20.0]])
    pred = lab + torch.tensor([1.0, 0.0])
    d = torch.tensor([0.0, 2.0])
    got = float(L.cycle_loss(pred, lab, lab, lab, d, hw, gamma=0.8))
    h = 0.5 * 0.01 ** 2  # Huber of the 1 px x error; y error 0
    want = 0.5 * ((1.0 * h + 0.8 ** 2 * h) / 4 + 0.0)  # mean over 2 points x 2 coords
    assert got == pytest.approx(want, rel=1e-5)


def test_info_nce_hand_value_and_stability():
    # target map: 4 orthonormal cells; the positive is cell 0
    m = torch.eye(4).view(4, 2, 2)
    src = torch.tensor([[1.0, 0, 0, 0]])
    dst = torch.tensor([[1.0, 0, 0, 0]])
    tau = 0.1
    want = math.log(math.exp(1 / tau) + 3 * math.exp(0)) - 1 / tau
    assert float(L.info_nce(src, dst, m, tau)[0]) == pytest.approx(want, abs=2e-6)
    # tiny temperature: exp(1/0.001) overflows float32, log-sum-exp does not
    v = L.info_nce(src, dst, m, 1e-3)
    assert torch.isfinite(v).all() and float(v[0]) == pytest.approx(0.0, abs=1e-4)


def test_symmetric_nce_sums_both_directions_weighted():
    m = torch.eye(3).view(3, 3, 1)
    fs = torch.tensor([[1.0, 0, 0]])
    w = torch.tensor([0.5])
    one = math.log(math.exp(10) + 2) - 10
    assert float(L.symmetric_nce(fs, m, fs, m, w, 0.1)) == pytest.approx(0.5 * 2 * one, abs=2e-6)


def test_bb_weights_match_the_spec_examples():
    c = torch.tensor(1.0)
    # sigmoid(27(1-r) - 5.7): ~0.92 at r=0.7, ~0.49 at r=0.79, ~0.05 at r=0.9; times max(0, 2c^3) = 2
    for r, s in ((0.7, 0.9168), (0.79, 0.4925), (0.9, 0.0474)):
        assert float(L.bb_weight_dino(torch.tensor(r), c)) == pytest.approx(2 * s, abs=2e-3)
    assert float(L.bb_weight_dino(torch.tensor(0.5), torch.tensor(-0.3))) == 0.0
    assert float(L.bb_weight_dino(torch.tensor(0.0), torch.tensor(0.5))) == pytest.approx(
        2 * 0.125 / (1 + math.exp(-(27 - 5.7))), rel=1e-5)
    assert L.bb_weight_refined(torch.tensor([0.5, -1.0])).tolist() == pytest.approx([0.25, 0.0])


def test_norm_and_angle_regularisers():
    raw = torch.randn(2, 8, 3, 4)
    assert float(L.norm_loss(raw, raw)) == pytest.approx(0.0, abs=1e-6)
    assert float(L.angle_loss(raw, raw)) == pytest.approx(0.0, abs=1e-6)
    assert float(L.norm_loss(2 * raw, raw)) == pytest.approx(1.0, rel=1e-5)
    assert float(L.angle_loss(2 * raw, raw)) == pytest.approx(0.0, abs=1e-6)  # scale only
    a = torch.zeros(1, 2, 1, 1)
    a[0, 0] = 1.0
    b = torch.zeros(1, 2, 1, 1)
    b[0, 1] = 1.0
    assert float(L.angle_loss(b, a)) == pytest.approx(1.0)   # orthogonal: |0 - 1|
    assert float(L.angle_loss(-a, a)) == pytest.approx(2.0)  # opposite: |-1 - 1|


def test_mutual_nearest_neighbours():
    # source cells 0,1,2 = e0,e1,e2; target cells are a permutation (2,0,1) plus a cell nobody picks
    s = torch.eye(3).t().reshape(3, 1, 3)
    t = torch.stack([torch.eye(3)[2], torch.eye(3)[0], torch.eye(3)[1], torch.tensor([0.5, 0.5, 0.5])], 1)
    idx_s, idx_t, aff = L.mutual_nn(s, t.reshape(3, 1, 4))
    pairs = sorted(zip(idx_s.tolist(), idx_t.tolist()))
    assert pairs == [(0, 1), (1, 2), (2, 0)]
    assert aff.tolist() == pytest.approx([1.0, 1.0, 1.0])
