#!/usr/bin/env python
"""The position-shortcut control (Co-Settle's key experiment), as a reproducible script.

A random-init ViT (timm vit_tiny_patch16_224, seed 0) whose patch position embeddings are multiplied
by --pe-scale so that they dominate the tokens (at timm's default init, std 0.02, they are tiny next to
the patch embedding). Frames t1 and t2 come from UNRELATED images (``--pairs unrelated``) or t2 is t1
with its 16x16 patches shuffled (``--pairs shuffled``), so no correct content correspondence is
position-preserving. The projector is trained with the cycle loss only (lambda = 0), once without PEA
(the return frame is the plain t1) and once with PEA. Without PEA the walk can return by matching
positions alone, so the loss collapses; with PEA the positions of the return frame are scrambled and
it cannot. Prints JSON (held-out loss/accuracy before and after, both evaluated with and without PEA).

    python scripts/position_shortcut.py --pe-scale 30 --steps 40
    python scripts/position_shortcut.py --model vit_small_patch16_dinov3 --depth 4 --pe-scale 30 --steps 40

With a DINOv3 model (rotary position encoding + registers) the position is made dominant differently
(see ``_rotary_encoder``) and PEA acts on the rotary coordinates of the return pass.

On real weights: ``--backend NAME`` takes a registered ViT backend (its trained position embedding left as
it is unless ``--pe-scale`` is given; last block, final LayerNorm, the patch stride) and ``--frames LIST``
real frames (``LIST`` as the trainer's ``--data``; ``--images`` frames spread over the clips, short side
resized to ``--size`` and centre-cropped, ImageNet-normalised) instead of the generated pictures:

    python scripts/position_shortcut.py --backend dinov2_vits14_imgfocus --frames clips.txt --size 224 --steps 40
"""
from __future__ import annotations

import argparse
import json
import time

from cosettle.cli import ArgumentParser  # one-line argparse errors
from cosettle.errors import cli_entry


def _images(n: int, size: int):
    import torch

    from cosettle.demo import render_demo

    x = torch.stack([torch.from_numpy(render_demo(num_frames=1, height=size, width=size, seed=1000 + s)[0][0])
                     for s in range(n)])
    x = x.permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def _real_frames(list_file: str, n: int, size: int):
    """``n`` frames spread over the clips of ``list_file`` (round robin), resized + centre-cropped, normalised."""
    import numpy as np  # deferred: script-local helper, as the others here
    import torch  # deferred: as above
    import torch.nn.functional as F  # deferred: as above

    from cosettle.data import IMAGENET_MEAN, IMAGENET_STD, discover_clips  # deferred: as above
    from cosettle.io.video import read_video  # deferred: as above

    clips = [read_video(c.path) for c in discover_clips(list_file, flag="--frames")]
    out = []
    for i in range(n):
        video = clips[i % len(clips)]
        k = i // len(clips)
        per = -(-n // len(clips))
        frame = np.asarray(video[min(len(video) - 1, int((k + 0.5) * len(video) / per))])
        x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        x = F.interpolate(x, size=(max(size, round(h * scale)), max(size, round(w * scale))), mode="bilinear",
                          antialias=True, align_corners=False)
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        out.append(x[0, :, top:top + size, left:left + size])
    x = torch.stack(out)
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _shuffle_patches(x, patch: int, gen):
    import torch

    B, C, H, W = x.shape
    gh, gw = H // patch, W // patch
    p = x[:, :, :gh * patch, :gw * patch].reshape(B, C, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5)
    p = p.reshape(B, gh * gw, C, patch, patch)
    out = torch.stack([p[b, torch.randperm(gh * gw, generator=gen)] for b in range(B)])
    return out.reshape(B, gh, gw, C, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(B, C, gh * patch, gw * patch)


def run(args) -> dict:
    import torch

    from cosettle.backends.timm_vit import TimmViTBackend
    from cosettle.losses import cycle_loss
    from cosettle.pea import PEA
    from cosettle.projector import Projector

    t0 = time.perf_counter()
    imgs = _real_frames(args.frames, args.images, args.size) if args.frames else _images(args.images, args.size)
    rotary = "dinov3" in (args.backend or args.model)
    if args.pe_scale is None:
        args.pe_scale = 1.0 if args.backend else 30.0  # real weights: the position embedding as trained
    if args.backend:
        from cosettle.backends import load_backend  # deferred: as the other imports of run()

        # stride=None: the patch stride (the PEA grid is the patch grid, as in training)
        enc = load_backend(args.backend, layer=-1, norm=True, precision=args.precision, stride=None)
        if getattr(enc, "position_encoding", None) != "absolute":
            from cosettle.errors import UserError  # deferred: as above

            raise UserError(f"--backend {args.backend} has no absolute position embedding", "use a ViT backend")
        m = enc.model
        with torch.no_grad():
            m.pos_embed.mul_(args.pe_scale)
    elif rotary:
        enc, ratio = _rotary_encoder(args, imgs)
    else:
        enc = TimmViTBackend(args.model, weights="random", seed=args.seed, layer=-1, norm=True,
                             precision=args.precision)
        m = enc.model
        with torch.no_grad():
            m.pos_embed.mul_(args.pe_scale)
    if not rotary:
        # how much the position embedding dominates the block-0 input (patch tokens)
        with torch.no_grad():
            tok = enc.model.patch_embed.proj(imgs[:4]).flatten(2).transpose(1, 2)
            pe = enc.model.pos_embed[:, 0 if enc.model.no_embed_class else enc.model.num_prefix_tokens:]
            ratio = float(pe.norm(dim=-1).mean() / tok.norm(dim=-1).mean())

    def encode(x, pea=None):
        with torch.inference_mode(), enc.autocast():
            z, grid = enc.forward_tokens(x, position_transform=pea)
        return z.float().clone(), grid

    g = torch.Generator().manual_seed(args.seed)
    n_train = args.images - 2 * args.batch_size
    if args.pairs == "shuffled":
        partner = _shuffle_patches(imgs, enc.patch_size, g)
    else:
        partner = None
    z, grid = encode(imgs)
    z_partner = encode(partner)[0] if partner is not None else None

    def pair(idx, j):
        """(t1 tokens, t2 tokens) for sample indices idx (and unrelated partners j)."""
        if z_partner is not None:
            return z[idx], z_partner[idx]
        return z[idx], z[j]

    ev = torch.arange(n_train, args.images)
    ev1, ev2 = ev[:args.batch_size], ev[args.batch_size:2 * args.batch_size]
    ev_back_pea = encode(imgs[ev1], PEA(args.pea_ratio, seed=12345))[0]

    def evaluate(proj):
        a, b = pair(ev1, ev2)
        out = {}
        with torch.no_grad():
            for name, back in (("eval_no_pea", a), ("eval_pea", ev_back_pea)):
                loss, st = cycle_loss(proj(a), proj(b), proj(back), grid, args.tau)
                out[name] = {"loss": round(float(loss), 4), "acc": round(st["acc"], 4)}
        return out

    results = {}
    for use_pea in (False, True):
        proj = Projector(enc.feat_dim, seed=args.seed)
        opt = torch.optim.AdamW(proj.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
        before = evaluate(proj)
        pea = PEA(args.pea_ratio, seed=args.seed)
        gen = torch.Generator().manual_seed(args.seed + 1)
        curve = []
        for step in range(args.steps):
            perm = torch.randperm(n_train, generator=gen)
            i1, i2 = perm[:args.batch_size], perm[args.batch_size:2 * args.batch_size]
            a, b = pair(i1, i2)
            back = encode(imgs[i1], pea)[0] if use_pea else a
            loss, _ = cycle_loss(proj(a), proj(b), proj(back), grid, args.tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            curve.append(round(float(loss.detach()), 4))
        results["with_pea" if use_pea else "without_pea"] = {
            "before": before, "after": evaluate(proj), "train_loss_first": curve[0], "train_loss_last": curve[-1],
            "train_curve_every_10": curve[::10]}
    M = (grid[0] // 2) * (grid[1] // 2)
    dominance = {"position_share_of_token_similarity": round(ratio, 3)} if rotary else {
        "pe_to_patch_norm_ratio": round(ratio, 2)}
    model = (f"backend {args.backend} (its weights)" if args.backend else
             f"{args.model} random init (seed {args.seed})" + (f", depth {args.depth}" if args.depth else ""))
    return {"model": model, "images": args.frames or "generated (cosettle.demo)",
            "pe_scale": args.pe_scale, **dominance, "pairs": args.pairs, "size": args.size, "nodes": M,
            "log_nodes": round(float(torch.log(torch.tensor(float(M)))), 4), "steps": args.steps,
            "batch_size": args.batch_size, "lr": args.lr, "tau": args.tau, "lambda_reg": 0.0,
            "results": results, "seconds": round(time.perf_counter() - t0, 1)}


def _rotary_encoder(args, imgs):
    """A random-init DINOv3-style encoder (RoPE + CLS + 4 registers) whose tokens are dominated by
    absolute position.

    RoPE only rotates queries/keys of patch tokens, so patch-to-patch attention sees relative
    positions only; absolute position enters through attention to the (unrotated) CLS/register tokens.
    We make that dominate: the patch-embedding weights are divided by ``--pe-scale`` (a small content
    term on one shared bias vector of the content's original norm), LayerScale is opened (1e-5 -> 1)
    and queries/keys are sharpened (``--qk-gain``), so each token's mix of register values -- a function
    of its coordinates -- outweighs its content. (Inflating the shared bias instead does not work: it
    is removed by every LayerNorm and by centring, while the raw content stays in the residual stream
    at full size.) Returns (backend, position share of token similarity: mean
    cosine of the centred tokens at the same cell in different images minus at different cells)."""
    import torch

    from cosettle.backends.timm_eva import TimmDinoV3Backend

    kw = {"depth": args.depth} if args.depth else {}
    enc = TimmDinoV3Backend(args.model, weights="random", seed=args.seed, layer=-1, norm=True,
                            precision=args.precision, model_kwargs=kw)
    m = enc.model
    g = torch.Generator().manual_seed(args.seed + 7)
    with torch.no_grad():
        content = m.patch_embed.proj(imgs[:4]) - m.patch_embed.proj.bias.view(1, -1, 1, 1)
        scale = float(content.norm(dim=1).mean())
        # Shrink the content, do not inflate a shared bias: the residual stream carries the raw patch
        # embedding, while the position-carrying attention updates are O(1) (they act on LayerNormed
        # input), so only a small content term lets position dominate the output tokens.
        m.patch_embed.proj.weight.div_(args.pe_scale)
        bias = torch.randn(m.embed_dim, generator=g)
        m.patch_embed.proj.bias.copy_(bias / bias.norm() * scale)
        for blk in m.blocks:
            blk.gamma_1.fill_(1.0)
            blk.gamma_2.fill_(1.0)
            d = m.embed_dim
            blk.attn.qkv.weight[: 2 * d].mul_(args.qk_gain)  # queries and keys, not values
        z, _ = enc.forward_tokens(imgs[:8])
        z = z.float()
        z = torch.nn.functional.normalize(z - z.mean(dim=(0, 1), keepdim=True), dim=-1)  # centred
        same = (z[:4] * z[4:8]).sum(-1).mean()
        other = (z[:4] * z[4:8].roll(7, dims=1)).sum(-1).mean()
    return enc, float(same - other)


@cli_entry
def main(argv=None):
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vit_tiny_patch16_224",
                    help="timm ViT (learned absolute PE) or a DINOv3 model, e.g. vit_small_patch16_dinov3 (RoPE)")
    ap.add_argument("--depth", type=int, default=None, help="DINOv3 models: number of blocks (default: the model's)")
    ap.add_argument("--qk-gain", type=float, default=10.0,
                    help="DINOv3 models: factor on the query/key weights (sharp, position-driven attention)")
    ap.add_argument("--pe-scale", type=float, default=None,
                    help="ViT: factor on the position embeddings; DINOv3: divisor of the patch content "
                         "(default 30; with --backend 1: the trained embedding)")
    ap.add_argument("--backend", default=None,
                    help="a registered ViT backend with real weights (e.g. dinov2_vits14_imgfocus) instead of --model")
    ap.add_argument("--frames", default=None, help="list file / folder of real clips (as the trainer's --data) "
                                                   "instead of generated pictures")
    ap.add_argument("--pairs", choices=("unrelated", "shuffled"), default="unrelated")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--tau", type=float, default=0.03)
    ap.add_argument("--pea-ratio", type=float, default=10.0)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.images < 4 * args.batch_size:  # 2 batches held out + 2 to draw training pairs from
        from cosettle.errors import UserError

        raise UserError(f"--images must be >= 4 x --batch-size ({4 * args.batch_size})")
    print(json.dumps(run(args), indent=1))
    return 0


if __name__ == "__main__":
    main()
