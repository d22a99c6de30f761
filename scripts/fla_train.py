#!/usr/bin/env python3
"""Train the PyTorch reference (flash-linear-attention's DeltaNetForCausalLM) on deltanet.c's token
shards with the curves recipe, and score it on the same validation windows as the trainer, so that
our curves can be set beside the reference's own on one GPU.

usage: python3 scripts/fla_train.py --data data/corpus [--steps 500] [--precision amp|bf16]
                                    [--sampler random|epoch] [--layers DDDDDDDDDDDD] [--seed 0]
                                    [--init CKPT.safetensors] [--stop-after N] [--log out.jsonl]

Recipe (issue 9, the reference's): d12 (D=768, 12 layers of 6 DeltaNet heads, tied, GPT-2
vocabulary), B=32, T=1024, AdamW (0.9, 0.95, eps 1e-8), peak lr 6e-4, lr = 6e-4 (s+1)/100 at the
0-based step s < 100, then cosine to 6e-5 at the last step, weight decay 0.1 on matrices, embedding
and conv weights (not on norm gains), global-norm clip 1.0. Validation: n windows of T+1 tokens of
the val shard at start_i = i * floor((N - T - 1) / n), the mean loss over all their positions.

--precision amp: fp32 master weights, bf16 autocast (the usual recipe); bf16: the whole model and
the optimizer state in bf16 (model.to(bfloat16)). --sampler random: every row an independent random
window (with replacement, any start); epoch: deltanet.c's default (non-overlapping windows of the
concatenated shards in a seeded random order). --init loads a deltanet.c checkpoint as the starting
weights (so that only the training loop differs). Needs torch, numpy, safetensors and fla on a
CUDA GPU.
"""
import argparse
import glob
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fla_sdpa import use_sdpa_if_needed  # noqa: E402  (the scripts run as python3 scripts/x.py)


def read_shard(path):
    header = np.fromfile(path, dtype=np.int32, count=256)
    if len(header) != 256 or header[0] != 20240520 or header[1] != 1:
        sys.exit(f"{path}: not an llm.c token shard")
    toks = np.fromfile(path, dtype=np.uint16, offset=256 * 4)
    if len(toks) != header[2]:
        sys.exit(f"{path}: header says {header[2]} tokens, file has {len(toks)}")
    return toks


def fla_config(layers, args):
    """The DeltaNetConfig fields of deltanet.c's d12 with the given layer kinds (src/model.c)."""
    cfg = dict(vocab_size=50257, hidden_size=768, num_hidden_layers=len(layers), num_heads=6,
               expand_k=1, expand_v=1, use_short_conv=True, conv_size=4, use_beta=True,
               use_gate=False, use_output_norm=True, qk_norm="l2", qk_activation="silu",
               norm_eps=1e-6, hidden_ratio=4, intermediate_size=2048, hidden_act="swish",
               tie_word_embeddings=True, initializer_range=0.02, attn=None)
    specs = []
    for kind, window in (("S", 512), ("G", None)):
        ls = [i for i, c in enumerate(layers) if c == kind]
        if ls:
            specs.append(dict(layers=ls, num_heads=12, num_kv_heads=12, qkv_bias=False,
                              window_size=window, rope_theta=10000.0))
    if specs:
        cfg["attn"] = specs[0] if len(specs) == 1 else specs
    return cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder with corpus_train*.bin and corpus_val.bin")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("-B", type=int, default=32)
    ap.add_argument("-T", type=int, default=1024)
    ap.add_argument("--micro", type=int, default=32, help="rows per forward (B = micro x accumulation)")
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--lr-min", type=float, default=6e-5)
    ap.add_argument("--precision", choices=["amp", "bf16"], default="amp")
    ap.add_argument("--sampler", choices=["random", "epoch"], default="random")
    ap.add_argument("--layers", default="D" * 12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-windows", type=int, default=64)
    ap.add_argument("--val-every", type=int, default=100)
    ap.add_argument("--init", help="a deltanet.c checkpoint to start from")
    ap.add_argument("--stop-after", type=int, default=0,
                    help="end after this many steps (the schedule still spans --steps); 0 = --steps")
    ap.add_argument("--describe-init", action="store_true",
                    help="print every tensor's mean, std, min and max at the start (after --init) and exit")
    ap.add_argument("--log", help="append one JSON row per evaluation here")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    if args.B % args.micro:
        sys.exit("-B must be a multiple of --micro")

    from fla.models import DeltaNetConfig, DeltaNetForCausalLM
    use_sdpa_if_needed()

    train_paths = sorted(glob.glob(os.path.join(args.data, "corpus_train*.bin")))
    val_path = os.path.join(args.data, "corpus_val.bin")
    if not train_paths or not os.path.exists(val_path):
        sys.exit(f"{args.data}: no corpus_train*.bin / corpus_val.bin (run scripts/make_corpus.sh)")
    train = np.concatenate([read_shard(p) for p in train_paths]).astype(np.int64)
    val = read_shard(val_path).astype(np.int64)
    B, T = args.B, args.T

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    cfg = DeltaNetConfig(**fla_config(args.layers, args))
    model = DeltaNetForCausalLM(cfg).cuda()
    if args.init:
        from safetensors.torch import load_file
        sd = load_file(args.init)
        sd = {k: v.float() for k, v in sd.items()}
        if "model.embeddings.weight" in sd:
            sd["model.embeddings.weight"] = sd["model.embeddings.weight"][: cfg.vocab_size]
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [m for m in missing if m != "lm_head.weight"]
        if missing or unexpected:
            sys.exit(f"--init: missing {missing[:4]}, unexpected {unexpected[:4]}")
        model.tie_weights()
    if args.describe_init:
        import transformers
        print(f"torch {torch.__version__}, transformers {transformers.__version__}, seed {args.seed}, "
              f"init {args.init or 'fla'}")
        for name, p in model.named_parameters():
            x = p.detach().float()
            print(f"{name:50s} {str(tuple(x.shape)):16s} mean {x.mean().item():+.5f} std {x.std().item():.5f} "
                  f"min {x.min().item():+.4f} max {x.max().item():+.4f}")
        return
    if args.precision == "bf16":
        model = model.to(torch.bfloat16)
    nparams = sum(p.numel() for p in model.parameters())

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)

    def lr_at(s):  # 0-based step
        if s < args.warmup:
            return args.lr * (s + 1) / args.warmup
        p = min(1.0, (s - args.warmup + 1) / max(1, args.steps - args.warmup))
        return args.lr_min + (args.lr - args.lr_min) * 0.5 * (1 + math.cos(math.pi * p))

    n_win = (len(train) - 1) // T  # non-overlapping windows of T+1 tokens (sharing one token)
    order, pos = None, 0

    def batch():
        nonlocal order, pos
        if args.sampler == "random":
            starts = rng.integers(0, len(train) - T - 1, size=B)
        else:
            if order is None or pos + B > len(order):
                order, pos = rng.permutation(n_win), 0
            starts = order[pos:pos + B] * T
            pos += B
        idx = starts[:, None] + np.arange(T + 1)[None, :]
        t = torch.from_numpy(train[idx]).cuda(non_blocking=True)
        return t[:, :-1], t[:, 1:]

    nv = args.val_windows
    stride = (len(val) - T - 1) // nv
    vstarts = np.arange(nv) * stride
    vidx = torch.from_numpy(val[vstarts[:, None] + np.arange(T + 1)[None, :]]).cuda()

    def evaluate():
        model.eval()
        tot = 0.0
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.precision == "amp"):
            for i in range(0, nv, 8):
                x, y = vidx[i:i + 8, :-1], vidx[i:i + 8, 1:]
                logits = model(input_ids=x).logits.float()[..., : cfg.vocab_size]
                tot += torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), y.reshape(-1),
                                                         reduction="sum").item()
        model.train()
        return tot / (nv * T)

    print(f"fla_train {args.tag}: {nparams / 1e6:.2f}M params, layers {args.layers}, precision {args.precision}, "
          f"sampler {args.sampler}, seed {args.seed}, {len(train)} train / {len(val)} val tokens", flush=True)
    accum = B // args.micro
    t_last, s_last = time.time(), 0  # the rate printed is over the steps since the last line
    for s in range(args.stop_after or args.steps):
        x, y = batch()
        for g in opt.param_groups:
            g["lr"] = lr_at(s)
        loss_acc = 0.0
        for a in range(accum):
            xs, ys = x[a * args.micro:(a + 1) * args.micro], y[a * args.micro:(a + 1) * args.micro]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.precision == "amp"):
                logits = model(input_ids=xs).logits
            loss = torch.nn.functional.cross_entropy(logits.float()[..., : cfg.vocab_size].reshape(-1, cfg.vocab_size),
                                                     ys.reshape(-1)) / accum
            loss.backward()
            loss_acc += loss.item()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step = s + 1
        if step % 25 == 0 or step == 1:
            now = time.time()
            print(f"step {step} loss {loss_acc:.4f} norm {norm.item():.3f} lr {lr_at(s):.3e} "
                  f"{(step - s_last) * B * T / (now - t_last) / 1e3:.0f}k tok/s (steps {s_last + 1}-{step})", flush=True)
            t_last, s_last = now, step
        if step % args.val_every == 0 or step == args.steps:
            vl = evaluate()
            t_last, s_last = time.time(), step
            print(f"val loss {vl:.6f} (perplexity {math.exp(vl):.2f}) at step {step}", flush=True)
            if args.log:
                with open(args.log, "a") as f:
                    f.write(json.dumps(dict(tag=args.tag, step=step, val_loss=vl, precision=args.precision,
                                            sampler=args.sampler, seed=args.seed, layers=args.layers)) + "\n")


if __name__ == "__main__":
    main()
