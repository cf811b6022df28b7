"""Label propagation (badja_eval/vos_propagation.py) against a dense, loop-free re-statement of the protocol
(every target against every source of every context frame, the neighbourhood as a mask, the top-k by sorting),
on random features; plus hand-made cases whose answer is known without any propagation code."""
import math

import numpy as np
import pytest
import torch

from badja_eval.vos_propagation import (LabelPropagator, PropagationConfig, labels_to_frame, labels_to_grid,
                                        pixel_grid, propagate_clip)
from cosettle.geometry import Geometry


def dense_reference(q, ctx_feats, ctx_labels, topk, radius, temperature, h, w):
    """The protocol written out densely: q (C, h, w); ctx_feats list of (C, h, w); ctx_labels list of (K, h, w)."""
    n = h * w
    qn = torch.nn.functional.normalize(q.reshape(q.shape[0], n).t().double(), dim=1)
    srcs = [torch.nn.functional.normalize(f.reshape(f.shape[0], n).t().double(), dim=1) for f in ctx_feats]
    labs = [lab.reshape(lab.shape[0], n).t().double() for lab in ctx_labels]
    ii, jj = np.divmod(np.arange(n), w)
    out = torch.zeros(n, ctx_labels[0].shape[0], dtype=torch.float64)
    for t in range(n):
        sims, lbl = [], []
        for s, lab in zip(srcs, labs):
            ok = np.ones(n, bool) if radius <= 0 else (np.abs(ii - ii[t]) <= radius) & (np.abs(jj - jj[t]) <= radius)
            sims.append((s @ qn[t])[ok])
            lbl.append(lab[ok])
        sims, lbl = torch.cat(sims), torch.cat(lbl)
        kth = torch.sort(sims, descending=True).values[min(topk, len(sims)) - 1]
        keep = sims >= kth
        wgt = torch.exp(sims[keep] / temperature)
        out[t] = (wgt[:, None] * lbl[keep]).sum(0) / wgt.sum()
    return out.t().reshape(-1, h, w).float()


@pytest.mark.parametrize("tile,radius,topk,n_last", [(3, 2, 5, 2), (8, 12, 5, 7), (1, 1, 3, 1), (4, 0, 5, 3), (2, 1, 5, 3),
                                                     (5, 3, 40, 2)])
def test_tiled_propagation_equals_dense_protocol(tile, radius, topk, n_last):
    g = torch.Generator().manual_seed(tile * 31 + radius)
    C, h, w, K, T = 6, 7, 11, 3, 6
    feats = [torch.randn(C, h, w, generator=g) for _ in range(T)]
    lab0 = torch.nn.functional.one_hot(torch.randint(0, K, (h, w), generator=g), K).permute(2, 0, 1).float()
    prop = LabelPropagator(PropagationConfig(topk=topk, n_last=n_last, radius=radius, tile=tile, tile_chunk=2), (h, w))
    prop.start(feats[0], lab0)
    ctx_f, ctx_l = [], []  # the reference's own queue
    for t in range(1, T):
        got = prop.step(feats[t])
        want = dense_reference(feats[t], [feats[0]] + [f for f, _ in ctx_f], [lab0] + [lab for _, lab in ctx_l],
                               topk, radius, 0.1, h, w)
        assert torch.allclose(got, want, atol=1e-4), (t, (got - want).abs().max())
        ctx_f.append((feats[t], None))
        ctx_l.append((None, want))
        ctx_f, ctx_l = ctx_f[-n_last:], ctx_l[-n_last:]


def test_ties_at_the_kth_value_are_all_kept():
    """Identical source features: every one ties with the best; the ref keeps all of them, so the target gets
    the mean label of all sources in its window (not the labels of 'the first k')."""
    C, h, w = 4, 1, 9
    feat = torch.zeros(C, h, w)
    feat[0] = 1.0  # every cell the same vector
    lab0 = torch.zeros(2, h, w)
    lab0[1, :, :3] = 1  # 3 of 9 cells are object 1
    lab0[0] = 1 - lab0[1]
    prop = LabelPropagator(PropagationConfig(topk=2, n_last=0, radius=0), (h, w))
    prop.start(feat, lab0)
    out = prop.step(feat)
    assert torch.allclose(out[1], torch.full((h, w), 3 / 9)), out[1]


def test_neighbourhood_limits_where_labels_come_from():
    """A target whose only matching source lies outside its window cannot take that source's label."""
    C, h, w = 3, 1, 12
    f0 = torch.zeros(C, h, w)
    f0[0, 0, :] = 1  # background everywhere ...
    f0[:, 0, 0] = torch.tensor([0.0, 1.0, 0.0])  # ... but cell 0 looks like the target below
    lab0 = torch.zeros(2, h, w)
    lab0[0] = 1
    lab0[:, 0, 0] = torch.tensor([0.0, 1.0])  # cell 0 is the object
    f1 = f0.clone()
    f1[:, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    f1[:, 0, 11] = torch.tensor([0.0, 1.0, 0.0])  # the object 'moved' 11 cells right
    far = LabelPropagator(PropagationConfig(topk=1, n_last=0, radius=3), (h, w))
    far.start(f0, lab0)
    assert far.step(f1)[1, 0, 11] == 0.0  # cell 0 is 11 cells away: outside ±3
    near = LabelPropagator(PropagationConfig(topk=1, n_last=0, radius=11), (h, w))
    near.start(f0, lab0)
    assert near.step(f1)[1, 0, 11] == 1.0


def test_queue_is_bounded_and_drops_the_oldest():
    C, h, w = 2, 2, 2
    prop = LabelPropagator(PropagationConfig(n_last=3), (h, w))
    prop.start(torch.randn(C, h, w), torch.ones(1, h, w))
    for _ in range(10):
        prop.step(torch.randn(C, h, w))
    assert len(prop._queue) == 3


def _geometry(h, w, stride):
    return Geometry.for_input(stride, stride, h, w, h, w)


def test_static_clip_reproduces_the_first_mask():
    """Every frame identical (features = a unique code per cell): labels stay where they were; the mask comes
    back at the frame size, inside one cell of the original."""
    H, W, s = 32, 48, 8
    geom = _geometry(H, W, s)
    gh, gw = geom.grid_h, geom.grid_w
    code = torch.eye(gh * gw).reshape(gh * gw, gh, gw)  # cell (i, j) only matches itself
    mask = np.zeros((H, W), np.uint8)
    mask[8:24, 16:40] = 1  # exactly cells rows 1-2, cols 2-4
    mask[0:8, 0:8] = 2  # a second object: cell (0, 0)
    out = list(propagate_clip([code] * 4, mask, geom, PropagationConfig(topk=1)))
    assert len(out) == 3
    for pred in out:
        assert pred.shape == (H, W) and pred.dtype == np.uint8
        assert set(np.unique(pred)) <= {0, 1, 2}
        core = np.zeros_like(mask)
        core[12:20, 20:36] = 1  # away from the cell borders: exact
        assert (pred[core > 0] == 1).all()
        assert pred[2, 2] == 2 and pred[30, 46] == 0


def test_labels_to_grid_reads_the_pixel_at_each_cell_centre():
    geom = _geometry(16, 16, 8)  # cell centres at pixels (3.5, 3.5), (11.5, 3.5), ...
    lab = np.zeros((16, 16), np.int64)
    lab[8:, 8:] = 1  # bottom-right cell
    g = labels_to_grid(lab, geom, 2)
    assert g.shape == (2, 2, 2)
    assert g[1].tolist() == [[0, 0], [0, 1]] and g[0].tolist() == [[1, 1], [1, 0]]


def test_labels_to_frame_min_max_normalises_each_channel():
    """The ref's norm_mask: a channel whose values are all small but peak somewhere wins there after normalising,
    though the raw arg-max would pick the other channel."""
    geom = _geometry(8, 16, 8)  # a 1 x 2 grid
    soft = torch.tensor([[[0.9, 0.8]], [[0.0, 0.3]]])  # raw: channel 0 everywhere
    pred = labels_to_frame(soft, pixel_grid(geom))
    # normalised: channel 0 -> [1, 0], channel 1 -> [0, 1]: the right cell becomes object 1
    assert pred[4, 0] == 0 and pred[4, 15] == 1


def test_config_errors_are_user_errors():
    from cosettle.errors import UserError
    with pytest.raises(UserError):
        PropagationConfig(topk=0).check()
    with pytest.raises(UserError):
        PropagationConfig(n_last=-1).check()
