"""Co-Settle maths: projector size/precision, cycle loss and KL anchor on hand-computed cases, PEA."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cosettle.errors import UserError
from cosettle.losses import LossConfig, cosettle_loss, cycle_loss, kl_anchor, pool_nodes, walk_loss
from cosettle.pea import PEA, apply_pea
from cosettle.projector import Projector


# -- projector ----------------------------------------------------------------------------------
def test_parameter_count_matches_paper():
    # 768*768 + 768 (Linear) + 2*768 (LayerNorm) = 592,128 (spec §2); ViT-L: 1,051,648
    assert Projector(768).num_parameters() == 592_128
    assert Projector(768, variant="linear-ln").num_parameters() == 592_128
    assert Projector(1024).num_parameters() == 1_051_648


def test_projector_layers_and_fp32_under_autocast():
    p = Projector(16, variant="linear")
    kinds = [type(m).__name__ for m in p.net]
    assert kinds == ["Linear", "Tanh", "LayerNorm"]
    assert [type(m).__name__ for m in Projector(16, variant="mlp3").net] == \
        ["Linear", "Tanh", "Linear", "Tanh", "Linear", "LayerNorm"]
    x = torch.randn(2, 5, 16, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = p(x)
    assert y.dtype == torch.float32
    # Linear -> Tanh -> LayerNorm(eps 1e-5, weight 1, bias 0), written out by hand in fp32
    h = torch.tanh(x.float() @ p.net.fc1.weight.T + p.net.fc1.bias)
    mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
    assert torch.allclose(y, (h - mu) / torch.sqrt(var + 1e-5), atol=1e-4)


def test_projector_init_is_seeded():
    a, b = Projector(8, seed=3), Projector(8, seed=3)
    assert torch.equal(a.net.fc1.weight, b.net.fc1.weight)
    # trunc_normal(std 0.02) cut at +-2 ABSOLUTE as timm's (the authors'), i.e. ~100 sigma: the weights are
    # N(0, 0.02^2) for all practical purposes. Checked as a normal sample of 256^2 = 65,536 values: the
    # standard deviation within 5 standard errors (0.02 / sqrt(2n) = 5.5e-5) of 0.02 (a +-2 sigma cut gives
    # 0.0176), and the share beyond 2 sigma = 2 * (1 - Phi(2)) = 0.0455 within 5 standard errors
    # (sqrt(0.0455 * 0.9545 / n) = 8.1e-4; a +-2 sigma cut gives 0).
    w = Projector(256, seed=0).net.fc1.weight.detach().double().flatten()
    n = w.numel()
    assert n == 65_536 and abs(float(w.mean())) < 5 * 0.02 / math.sqrt(n)
    assert abs(float(w.std()) - 0.02) < 5 * 0.02 / math.sqrt(2 * n), float(w.std())
    tail = 2 * (1 - 0.5 * (1 + math.erf(2 / math.sqrt(2))))  # 0.0455
    share = float((w.abs() > 0.04).double().mean())
    assert abs(share - tail) < 5 * math.sqrt(tail * (1 - tail) / n), share
    assert torch.count_nonzero(a.net.fc1.bias) == 0


# -- cycle loss ---------------------------------------------------------------------------------
def _blocks(vectors: torch.Tensor, grid=(4, 4)) -> torch.Tensor:
    """Tokens on a 4x4 grid whose 2x2 blocks are constant = the given 4 node vectors -> (1, 16, C)."""
    gh, gw = grid
    out = torch.zeros(1, gh * gw, vectors.shape[-1])
    for y in range(gh):
        for x in range(gw):
            out[0, y * gw + x] = vectors[(y // 2) * (gw // 2) + x // 2]
    return out


def test_pooling_is_2x2_average_not_renormalised():
    t = torch.arange(16, dtype=torch.float32).view(1, 16, 1)  # 4x4 grid of values 0..15
    nodes = pool_nodes(t, (4, 4), 2)
    assert nodes.flatten().tolist() == [(0 + 1 + 4 + 5) / 4, (2 + 3 + 6 + 7) / 4, (8 + 9 + 12 + 13) / 4,
                                        (10 + 11 + 14 + 15) / 4]
    # odd grid: floor (7x7 -> 3x3), and pooled unit vectors keep norm <= 1
    u = F.normalize(torch.randn(1, 49, 8), dim=-1)
    n = pool_nodes(u, (7, 7), 2)
    assert n.shape == (1, 9, 8) and (n.norm(dim=-1) <= 1 + 1e-6).all()


def test_identity_affinities_give_zero_loss():
    nodes = torch.eye(4)  # orthonormal nodes: A = I / tau, S ~= I
    t = _blocks(nodes)
    loss, stats = cycle_loss(t, t, t, (4, 4), tau=0.03, pool=2)
    # CE(log(S+eps)) with S = I is -log((1+eps)/(1+4 eps)) = ~3e-6
    assert float(loss) < 1e-4
    assert stats["acc"] == 1.0 and stats["sim_identity"] > 0.999


def test_uniform_affinities_give_log_n():
    t = torch.ones(1, 16, 8)  # every node identical: S = 1/M everywhere
    loss, stats = cycle_loss(t, t, t, (4, 4), tau=0.03, pool=2)
    # -log((1/M + eps) / (1 + M eps)) = log M exactly
    assert float(loss) == pytest.approx(math.log(4), abs=1e-6)
    t49 = torch.ones(2, 196, 8)  # the paper's 14x14 grid -> 49 nodes
    assert float(cycle_loss(t49, t49, t49, (14, 14))[0]) == pytest.approx(math.log(49), abs=1e-5)


def test_two_node_walk_by_hand():
    # nodes t1 = t1' = [e1, e2], t2 = [e1, e1]; tau = 1, no pooling.
    # S12 rows = [1/2, 1/2]; S21' rows = [s, 1-s] with s = sigmoid(1); S = rows [s, 1-s]
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    t1 = torch.stack([e1, e2])[None]
    t2 = torch.stack([e1, e1])[None]
    s = 1 / (1 + math.exp(-1))
    eps = 1e-6
    expect = 0.5 * (-math.log(s + eps) - math.log(1 - s + eps)) + math.log(1 + 2 * eps)
    loss, stats = cycle_loss(t1, t2, t1, (1, 2), tau=1.0, pool=1)
    assert float(loss) == pytest.approx(expect, rel=1e-6)  # 0.8133
    assert stats["acc"] == 0.5


# -- KL anchor ----------------------------------------------------------------------------------
def test_kl_zero_for_identity_and_matches_direct_sum():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(2, 3, 5, 12, generator=g), dim=-1)
    assert float(kl_anchor(z, z)) == pytest.approx(0.0, abs=1e-7)
    p = F.normalize(torch.randn(2, 3, 5, 12, generator=g), dim=-1)
    zq, pq = z.double().numpy(), p.double().numpy()
    total = 0.0
    for b in range(2):
        for f in range(3):
            for n in range(5):
                q = np.exp(zq[b, f, n]) / np.exp(zq[b, f, n]).sum()
                r = np.exp(pq[b, f, n]) / np.exp(pq[b, f, n]).sum()
                total += float((q * np.log(q / r)).sum())
    assert float(kl_anchor(z, p)) == pytest.approx(total / 2, rel=1e-5)  # batchmean: / B only


def test_kl_is_about_one_minus_cos_over_c():
    # spec §5: for unit vectors, per-token KL ~= (1 - cos)/C
    g = torch.Generator().manual_seed(1)
    C = 768
    z = F.normalize(torch.randn(1, 1, 64, C, generator=g), dim=-1)
    p = F.normalize(z + 0.7 * F.normalize(torch.randn(1, 1, 64, C, generator=g), dim=-1), dim=-1)
    approx = float((1 - (z * p).sum(-1)).sum() / C)
    assert float(kl_anchor(z, p)) == pytest.approx(approx, rel=0.03)


def test_total_loss_is_cycle_plus_lambda_reg():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 3, 16, 8, generator=g)
    p = torch.randn(2, 3, 16, 8, generator=g)
    loss, st = cosettle_loss(z, p, (4, 4), LossConfig(lambda_reg=3.0))
    assert float(loss) == pytest.approx(st["l_cyc"] + 3.0 * st["l_reg"], rel=1e-5)
    loss0, st0 = cosettle_loss(z, p, (4, 4), LossConfig(reg="none"))
    assert st0["l_reg"] == 0 and float(loss0) == pytest.approx(st["l_cyc"], rel=1e-6)


# -- PEA ----------------------------------------------------------------------------------------
def test_pea_window_sizes_and_one_draw():
    pea = PEA(10.0, seed=0)
    assert pea.upsampled_size(14, 14) == (154, 154)  # spec: U = int(11 * 14)
    pe = torch.randn(1, 6, 14, 14)
    out = pea(pe)
    oh, ow = pea.last_offset
    assert 0 <= oh <= 140 and 0 <= ow <= 140 and out.shape == pe.shape
    assert torch.equal(out, apply_pea(pe, 10.0, oh, ow))
    # non-square grids and any size
    assert pea(torch.randn(1, 6, 3, 5)).shape == (1, 6, 3, 5)
    # ratio 0: U = S, offset 0 -> the identity
    assert torch.allclose(apply_pea(pe, 0.0, 0, 0), pe, atol=1e-5)
    # seeded: the same seed draws the same windows
    a, b = PEA(10.0, seed=5), PEA(10.0, seed=5)
    assert [a.draw(14, 14) for _ in range(3)] == [b.draw(14, 14) for _ in range(3)]


def test_pea_window_is_a_zoom_of_the_grid():
    # x11 up-sampling: 11 window cells span one original cell, so a unit ramp rises by exactly 1
    # over 11 columns (bicubic with a = -0.75 wiggles within a cell, hence not per column)
    gw = 14
    ramp = torch.arange(gw, dtype=torch.float32).view(1, 1, 1, gw).expand(1, 1, gw, gw).contiguous()
    out = apply_pea(ramp, 10.0, 70, 70)
    row = out[0, 0, 7]
    assert float(row[11] - row[0]) == pytest.approx(1.0, abs=1e-4)
    assert float(row[13] - row[2]) == pytest.approx(1.0, abs=1e-4)
    assert float(row[-1] - row[0]) < 1.5  # a zoom: 14 columns cover ~1.2 original cells, not 13


@pytest.mark.parametrize("timm_name", ["vit_tiny_patch16_224", "vit_small_patch14_reg4_dinov2"])
def test_pea_changes_only_patch_position_embeddings(timm_name):
    from cosettle.backends.timm_vit import TimmViTBackend

    enc = TimmViTBackend(timm_name, weights="random", layer=0, norm=False)
    m = enc.model
    seen = []
    h = m.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    p = enc.patch_size
    x = torch.randn(1, 3, 4 * p, 5 * p)
    with torch.inference_mode():
        enc.forward_tokens(x)
        pea = PEA(10.0, seed=1)
        enc.forward_tokens(x, pos_embed_transform=pea)
    h.remove()
    plain, aug = seen
    k = m.num_prefix_tokens
    assert torch.equal(plain[:, :k], aug[:, :k])  # CLS / register tokens untouched
    # patch tokens differ by exactly PEA(pe) - pe
    from timm.layers import resample_abs_pos_embed

    n_pe_prefix = 0 if m.no_embed_class else k
    pe = resample_abs_pos_embed(m.pos_embed, new_size=(4, 5), old_size=m.patch_embed.grid_size,
                                num_prefix_tokens=n_pe_prefix)[:, n_pe_prefix:]
    grid = pe.reshape(1, 4, 5, -1).permute(0, 3, 1, 2)
    new = apply_pea(grid, 10.0, *pea.last_offset).permute(0, 2, 3, 1).reshape(1, 20, -1)
    assert torch.allclose(aug[:, k:] - plain[:, k:], new - pe, atol=1e-5)


# -- mutation-test survivors (issue 29) -----------------------------------------------------------
def test_defaults_are_the_documented_tau_pool_and_eps():
    g = torch.Generator().manual_seed(3)
    t1, t2, t3 = (torch.randn(1, 16, 8, generator=g) for _ in range(3))
    assert float(cycle_loss(t1, t2, t3, (4, 4))[0]) == float(cycle_loss(t1, t2, t3, (4, 4), tau=0.03, pool=2,
                                                                        eps=1e-6)[0])
    assert pool_nodes(t1, (4, 4)).shape == (1, 4, 8)  # pool 2 by default: 4x4 -> 2x2 nodes


def test_two_node_walk_uses_the_given_eps():
    # as test_two_node_walk_by_hand with eps = 0.1
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    t1, t2 = torch.stack([e1, e2])[None], torch.stack([e1, e1])[None]
    s, eps = 1 / (1 + math.exp(-1)), 0.1
    expect = 0.5 * (-math.log(s + eps) - math.log(1 - s + eps)) + math.log(1 + 2 * eps)
    assert float(cycle_loss(t1, t2, t1, (1, 2), tau=1.0, pool=1, eps=eps)[0]) == pytest.approx(expect, rel=1e-6)


def test_accuracy_takes_the_argmax_over_targets_of_each_row():
    """3 nodes, tau = 1, no pooling: t1 = [e1, e2, e3], t2 = [e1, e1, e2], t1' = [e1, e2, e2]. S recomputed
    in numpy from the definition (row softmax of dot products, two steps): every row's argmax is target 0
    -> acc 1/3; the argmax over sources of each column would give 2/3."""
    E = np.eye(3)
    t1, t2, t1b = E, E[[0, 0, 1]], E[[0, 1, 1]]

    def softmax_rows(x):
        x = np.exp(x)
        return x / x.sum(1, keepdims=True)

    S = softmax_rows(t1 @ t2.T) @ softmax_rows(t2 @ t1b.T)
    assert S.argmax(1).tolist() == [0, 0, 0] and (S.argmax(0) == np.arange(3)).mean() == pytest.approx(2 / 3)
    loss, stats = cycle_loss(*(torch.tensor(t, dtype=torch.float32)[None] for t in (t1, t2, t1b)), (1, 3),
                             tau=1.0, pool=1)
    assert stats["acc"] == pytest.approx(1 / 3)
    assert float(loss) == pytest.approx(float(np.mean(-np.log(np.diag(S) + 1e-6))) + math.log(1 + 3e-6), rel=1e-5)


def test_pool_nodes_grid_checks():
    t = torch.zeros(1, 16, 2)
    with pytest.raises(ValueError, match=r"grid \(3, 5\) does not match 16 tokens"):
        pool_nodes(t, (3, 5))
    assert pool_nodes(torch.zeros(1, 4, 2), (2, 2), 2).shape == (1, 1, 2)  # exactly one node fits
    for grid in ((1, 16), (16, 1)):
        with pytest.raises(UserError) as ei:
            pool_nodes(t, grid, 2)
        assert str(ei.value) == (f"feature grid {grid[0]}x{grid[1]} is smaller than the 2x2 node pooling "
                                 "-- use a larger --input-size")


def _frames_kl_case():
    """B=1, 3 frames x 2 tokens, C=2: z tokens 3*[1, 0], p tokens 2*[0, 1] (unit after normalising over
    channels). softmax([1, 0]) = [s, 1-s], s = sigmoid(1); KL([s, 1-s] || [1-s, s]) = (2s - 1) * log(s / (1-s))
    = 2s - 1 per token, 6 tokens -> 6 (2s - 1); MSE of [1, 0] vs [0, 1] = 1."""
    z = torch.tensor([3.0, 0.0]).expand(1, 3, 2, 2).clone()
    p = torch.tensor([0.0, 2.0]).expand(1, 3, 2, 2).clone()
    s = 1 / (1 + math.exp(-1))
    return z, p, 6 * (2 * s - 1)


def test_regulariser_choice_weight_and_channel_normalisation():
    z, p, kl = _frames_kl_case()
    cfg = dict(tau=1.0, pool=1)
    for lam in (1.0, 3.0):
        loss, st = cosettle_loss(z, p, (1, 2), LossConfig(lambda_reg=lam, **cfg))
        assert st["l_reg"] == pytest.approx(kl, rel=1e-5)
        assert float(loss) == pytest.approx(st["l_cyc"] + lam * kl, rel=1e-5)
    assert cosettle_loss(z, p, (1, 2), LossConfig(lambda_reg=0.0, **cfg))[1]["l_reg"] == 0.0
    assert cosettle_loss(z, p, (1, 2), LossConfig(reg="mse", **cfg))[1]["l_reg"] == pytest.approx(1.0)
    # p a rescaled z: normalised over channels they agree -> KL 0
    assert cosettle_loss(z, 5 * z, (1, 2), LossConfig(**cfg))[1]["l_reg"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(UserError) as ei:
        cosettle_loss(z, p, (1, 2), LossConfig(reg="l1", **cfg))
    assert str(ei.value) == "unknown regulariser 'l1' -- use kl, mse or none"


def test_cycle_term_walks_t1_t2_t1_pea_with_the_configs_tau_pool_eps():
    # the two-node walk by hand (t1 = t1' = [e1, e2], t2 = [e1, e1]) with eps 0.1, as frames of p
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    p = torch.stack([torch.stack([e1, e2]), torch.stack([e1, e1]), torch.stack([e1, e2])])[None]
    s, eps = 1 / (1 + math.exp(-1)), 0.1
    expect = 0.5 * (-math.log(s + eps) - math.log(1 - s + eps)) + math.log(1 + 2 * eps)
    _, st = cosettle_loss(p, p, (1, 2), LossConfig(tau=1.0, pool=1, eps=eps, reg="none"))
    assert st["l_cyc"] == pytest.approx(expect, rel=1e-6)


def test_walk_loss_default_eps_and_the_frame_order_of_the_total_loss():
    # S = I: -log(1 + eps) + log(1 + 2 eps) ~ 1e-6 with the documented eps = 1e-6
    assert float(walk_loss(torch.eye(2)[None])) == pytest.approx(math.log((1 + 2e-6) / (1 + 1e-6)), abs=1e-6)
    # t1 = [e1, e1], t2 = [e1, e2], t1' = [e1, e2]; tau = 1, no pooling, s = sigmoid(1):
    # S12 rows both [s, 1-s]; S21' = [[s, 1-s], [1-s, s]] -> S rows both [s^2 + (1-s)^2, 2 s (1-s)]
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    p = torch.stack([torch.stack([e1, e1]), torch.stack([e1, e2]), torch.stack([e1, e2])])[None]
    s = 1 / (1 + math.exp(-1))
    s00, s11 = s * s + (1 - s) ** 2, 2 * s * (1 - s)
    expect = 0.5 * (-math.log(s00 + 1e-6) - math.log(s11 + 1e-6)) + math.log(1 + 2e-6)
    _, st = cosettle_loss(p, p, (1, 2), LossConfig(tau=1.0, pool=1, reg="none"))
    assert st["l_cyc"] == pytest.approx(expect, rel=1e-6)


def test_the_walk_targets_identity_and_accuracy_index_are_made_on_the_inputs_device(monkeypatch):
    """``walk_loss``' targets and ``cycle_loss``' identity and row index are created on S's device: on a GPU,
    CPU ones would fail (a non-0-d CPU tensor does not mix with CUDA tensors). A CPU run cannot tell, its
    default device being the CPU; torch's "meta" device refuses that mix the same way (checked: cross_entropy,
    cosine_similarity and == each raise "Tensor on device ... is not on the expected device"), so the losses
    are run on meta inputs and must give meta outputs. Meta tensors hold no data, so the stats' ``float``
    (a copy to the host) is replaced by the identity in the module for the cycle loss. (Mutation testing:
    the ``device=`` arguments of ``walk_loss`` and ``cycle_loss`` survived on the CPU.)"""
    import cosettle.losses as losses

    assert walk_loss(torch.full((2, 4, 4), 0.25, device="meta")).device.type == "meta"
    monkeypatch.setattr(losses, "float", lambda t: t, raising=False)
    p = torch.randn(2, 16, 8, device="meta")  # a 4 x 4 grid, pooled to 2 x 2 nodes
    loss, stats = cycle_loss(p, p, p, (4, 4))
    assert [loss.device.type, stats["acc"].device.type, stats["sim_identity"].device.type] == ["meta"] * 3
    # the total loss too, with and without the anchor (its zero, when unused, is 0-d: it would mix with any device)
    for reg in ("kl", "none"):
        z = torch.randn(2, 3, 16, 8, device="meta")
        assert cosettle_loss(z, z, (4, 4), LossConfig(reg=reg))[0].device.type == "meta"
