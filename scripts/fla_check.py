#!/usr/bin/env python3
"""Score a deltanet.c checkpoint with the PyTorch reference model (flash-linear-attention's
DeltaNetForCausalLM, or GatedDeltaNetForCausalLM for a model of gated DeltaNet layers), to check that
checkpoints load there as they are and give the same loss.

usage: python3 scripts/fla_check.py CHECKPOINT.safetensors SHARD.bin [-b 1024] [-n 8] [--chunk]

Builds the reference model from the checkpoint's __metadata__ fla_config, loads the tensors with
strict name/shape checking, reads blocks of b+1 tokens from an llm.c shard, and prints the mean
cross-entropy over n blocks (compare with `./infer CHECKPOINT --eval SHARD -b b` on the same blocks).
Needs torch, safetensors and flash-linear-attention (fla-core) with a CUDA GPU.
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fla_sdpa import use_sdpa_if_needed  # noqa: E402  (the scripts run as python3 scripts/x.py)


def read_shard(path):
    header = np.fromfile(path, dtype=np.int32, count=256)
    if header[0] != 20240520 or header[1] != 1:
        sys.exit(f"{path}: not an llm.c token shard (magic {header[0]}, version {header[1]})")
    toks = np.fromfile(path, dtype=np.uint16, offset=256 * 4)
    if len(toks) != header[2]:
        sys.exit(f"{path}: header says {header[2]} tokens, file has {len(toks)}")
    return toks


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("shard")
    ap.add_argument("-b", type=int, default=1024, help="tokens predicted per block")
    ap.add_argument("-n", type=int, default=8, help="number of blocks")
    ap.add_argument("--chunk", action="store_true",
                    help="use fla's chunk kernels (bf16 only) instead of fused_recurrent in fp32")
    args = ap.parse_args()

    from safetensors import safe_open
    from safetensors.torch import load_file
    from fla.models import DeltaNetConfig, DeltaNetForCausalLM, GatedDeltaNetConfig, GatedDeltaNetForCausalLM

    if use_sdpa_if_needed():
        print("flash-attn not installed: fla's attention layers run through torch SDPA")

    with safe_open(args.checkpoint, "pt") as f:
        meta = f.metadata()
    fla_cfg = json.loads(meta["fla_config"])
    # fla's l2norm has a fixed eps (1e-6) that its config does not carry; ours is a float32
    # written with 9 digits ("9.99999997e-07"), so compare the two as float32
    f32 = lambda x: struct.unpack("<f", struct.pack("<f", float(x)))[0]  # noqa: E731
    if f32(meta.get("l2_eps", "1e-6")) != f32(1e-6):
        sys.exit(f"l2_eps {meta['l2_eps']}: fla's l2norm uses 1e-6, so it cannot reproduce this model")
    model_type = fla_cfg.pop("model_type", None)
    classes = {"delta_net": (DeltaNetConfig, DeltaNetForCausalLM),
               "gated_deltanet": (GatedDeltaNetConfig, GatedDeltaNetForCausalLM)}
    if model_type not in classes:
        sys.exit(f"{args.checkpoint}: fla_config has model_type {model_type!r} (layers {meta.get('layers')}): "
                 "no fla model holds it (a model with both D and N layers has none)")
    Config, ForCausalLM = classes[model_type]
    # fla's chunk kernels refuse float32; its fused_recurrent kernels compute the sequential form
    fla_cfg["attn_mode"] = "chunk" if args.chunk else "fused_recurrent"
    fla_cfg.update(fuse_cross_entropy=False, fuse_norm=False, fuse_swiglu=False)
    cfg = Config(**fla_cfg)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.chunk else torch.float32
    model = ForCausalLM(cfg).cuda().to(dtype).eval()
    sd = load_file(args.checkpoint)
    expected = set(model.state_dict().keys())
    if cfg.tie_word_embeddings:
        expected.discard("lm_head.weight")
    got = set(sd.keys())
    if expected != got:
        sys.exit(f"tensor names differ: missing {sorted(expected - got)[:5]}, unexpected {sorted(got - expected)[:5]}")
    model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=not cfg.tie_word_embeddings)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    print(f"loaded {len(sd)} tensors into {ForCausalLM.__name__} ({sum(p.numel() for p in model.parameters())/1e6:.2f}M parameters), layers {meta.get('layers')}")

    toks = read_shard(args.shard)
    b, n = args.b, args.n
    n = min(n, (len(toks) - 1) // b)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(n):
            block = torch.from_numpy(toks[i * b: i * b + b + 1].astype(np.int64)).cuda()
            logits = model(input_ids=block[None, :-1]).logits.float()[0, :, : cfg.vocab_size]
            loss = torch.nn.functional.cross_entropy(logits, block[1:], reduction="sum")
            total += loss.item()
            count += b
    mean = total / count
    print(f"fla reference: {n} blocks x {b} tokens: mean loss {mean:.6f}  perplexity {math.exp(mean):.4f}")


if __name__ == "__main__":
    main()
