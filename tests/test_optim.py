"""cosettle/train/optim.py against hand-computed values: the linear lr scaling and the warm-up + cosine
schedule of cosettle.md (base lr 1e-4 x 512 / 256 = 2e-4; linear warm-up from 0 over 1 epoch, then a
half-cosine down to min_lr at epoch 5)."""
from __future__ import annotations

import pytest
import torch

from cosettle.train.optim import absolute_lr, build_optimizer, lr_at, param_groups


def test_absolute_lr_is_the_linear_scaling_rule():
    assert absolute_lr(1e-4, 512) == pytest.approx(2e-4, rel=1e-12)  # cosettle.md: "2e-4" at batch 512
    assert absolute_lr(1e-4, 64) == pytest.approx(2.5e-5, rel=1e-12)  # 1e-4 x 64 / 256
    assert absolute_lr(1e-3, 256) == pytest.approx(1e-3, rel=1e-12)
    assert absolute_lr(1e-4, 512, lr=3e-3) == 3e-3  # an absolute lr wins over the scaling


# (epoch, lr) with base 2e-4, min_lr 0, 1 warm-up epoch, 5 epochs, worked out by hand:
#   warm-up: 2e-4 * e / 1;  after: 2e-4 * (1 + cos(pi * (e - 1) / 4)) / 2
HAND = [
    (0.0, 0.0),
    (0.25, 0.5e-4),
    (0.5, 1e-4),
    (1.0, 2e-4),                      # end of warm-up: cos(0) = 1
    (2.0, 1.7071067811865476e-4),     # cos(pi/4) = 0.70710678: 2e-4 * 1.70710678 / 2
    (3.0, 1e-4),                      # cos(pi/2) = 0: half way
    (4.0, 0.2928932188134524e-4),     # cos(3pi/4) = -0.70710678
    (5.0, 0.0),                       # cos(pi) = -1
    (7.5, 0.0),                       # past the end: stays at min_lr
]


@pytest.mark.parametrize("epoch,lr", HAND)
def test_warmup_cosine_values_by_hand(epoch, lr):
    assert lr_at(epoch, 2e-4, 0.0, 1.0, 5.0) == pytest.approx(lr, rel=1e-9, abs=1e-18)


def test_min_lr_floor_and_no_warmup():
    # min_lr 1e-6: half way is 1e-6 + (2e-4 - 1e-6) / 2 = 1.005e-4; the end is min_lr itself
    assert lr_at(3.0, 2e-4, 1e-6, 1.0, 5.0) == pytest.approx(1.005e-4, rel=1e-12)
    assert lr_at(5.0, 2e-4, 1e-6, 1.0, 5.0) == pytest.approx(1e-6, rel=1e-12)
    # without warm-up the first step already has the base lr; 10 epochs, epoch 5 is half way
    assert lr_at(0.0, 1e-3, 0.0, 0.0, 10.0) == pytest.approx(1e-3, rel=1e-12)
    assert lr_at(5.0, 1e-3, 0.0, 0.0, 10.0) == pytest.approx(5e-4, rel=1e-12)


def test_schedule_rises_then_falls():
    steps = [k / 20 for k in range(0, 121)]  # 20 steps per epoch, 6 epochs
    lrs = [lr_at(e, 2e-4, 0.0, 1.0, 5.0) for e in steps]
    rise, fall = lrs[:21], lrs[20:]
    assert all(b > a for a, b in zip(rise, rise[1:]))  # strictly up during the warm-up
    assert all(b <= a for a, b in zip(fall, fall[1:]))  # never up afterwards
    assert max(lrs) == pytest.approx(2e-4, rel=1e-12) and lrs.index(max(lrs)) == 20


def test_weight_decay_on_matrices_only():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    decay, no_decay = param_groups(net, 0.05)
    assert [tuple(p.shape) for p in decay["params"]] == [(3, 4)]
    assert sorted(tuple(p.shape) for p in no_decay["params"]) == [(3,), (3,), (3,)]
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    opt = build_optimizer(net, 2e-4, 0.05)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["lr"] == 2e-4  # cosettle.md: AdamW (0.9, 0.95)
