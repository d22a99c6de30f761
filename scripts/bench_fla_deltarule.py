#!/usr/bin/env python3
"""bench_fla_deltarule.py -- the side-by-side numbers for tests/gpu/bench_deltarule.cu.

Times flash-linear-attention's chunk_delta_rule (Triton) forward and forward+backward on the same
shapes as the CUDA bench (bf16, q/k L2-normalised, beta in (0, 1), zero initial state, no final
state), and PyTorch SDPA causal attention (cuDNN and flash backends) on B=8 T=2048 H=8 d=128.
Same method: rotating input sets larger than L2, warm-up, one CUDA event pair per run, median.
FLOPs for the delta rule are the chunkwise algorithm's (the count bench_deltarule.cu uses), so
TFLOP/s compare like for like; SDPA counts 4 B H T^2 d / 2 forward (causal), 2.5x that backward.

fla is not on the GPU machine: carry its wheels (.whl/) and install them first (see NOTES).
Usage: python3 scripts/bench_fla_deltarule.py [iters] [what...]
  what: main (B=8 T=2048 H=8 K=128), d12 (B=32 T=1024 H=6 K=128), all (every shape of the CUDA
  bench), sdpa, gated (fla's chunk_gated_delta_rule at B=8 T=2048 H=8 K=V=128 and at the gdn
  preset's B=32 T=1024 H=6 K=64 V=128; the backward is tried and, where fla refuses it -- Triton
  3.4 to 3.7.0 on Hopper -- its one-line reason printed); default: main d12 sdpa gated. Each new
  shape costs fla a round of Triton autotuning.
"""
import math
import sys

import torch
import torch.nn.functional as F

ITERS = int(sys.argv[1]) if len(sys.argv) > 1 else 30


def median_ms(run, iters=ITERS):
    for i in range(3):
        run(i)
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for i, (a, b) in enumerate(ev):
        a.record()
        run(i)
        b.record()
    torch.cuda.synchronize()
    ms = sorted(a.elapsed_time(b) for a, b in ev)
    return ms[iters // 2]


def row(shape, pas, ms, flop, nbytes):
    print(f"{shape:<28} {pas:<14} {ms:9.3f} {flop / (ms * 1e-3) / 1e12:9.1f} {nbytes / (ms * 1e-3) / 1e9:8.0f}",
          flush=True)


def deltarule_flops(B, T, H, D):
    C, nch = 64.0, B * H * math.ceil(T / 64)
    CCD, CDD, CCC = 2 * C * C * D, 2 * C * D * D, 2 * C * C * C
    f_prep = nch * (CCD + CCC / 3)
    f_fwd = nch * (3 * CDD + 3 * CCD)
    f_states = nch * ((2 * CDD + CCD) + (CCD + CCD + CDD + CCD + 2 * CDD))
    f_chunk = nch * (CCD + CCD + (CDD + CCD) + CDD + (CCD + CDD) + 2 * CCD + CCD + CCD + 2 * CCC + 2 * CCD)
    return f_prep + f_fwd, f_prep + f_states + f_chunk


def input_sets(B, T, H, K, V, gated):
    """Rotating input sets, together larger than L2: [q, k, v, (g,) beta] (requiring grad) + [do];
    q, k L2-normalised, beta in (0, 1), g (gated) log decays < 0 in fp32 as fla's layer passes them."""
    N = B * T * H
    set_bytes = (2 * N * K + 2 * N * V + N) * 2 + (N * 4 if gated else 0)
    nsets = max(2, math.ceil((200 << 20) / set_bytes))
    sets = []
    for _ in range(nsets):
        q = F.normalize(torch.randn(B, T, H, K, device="cuda", dtype=torch.float32), p=2, dim=-1).bfloat16()
        k = F.normalize(torch.randn(B, T, H, K, device="cuda", dtype=torch.float32), p=2, dim=-1).bfloat16()
        v = torch.randn(B, T, H, V, device="cuda", dtype=torch.bfloat16)
        beta = (0.02 + 0.96 * torch.rand(B, T, H, device="cuda")).bfloat16()
        g = [-0.1 * F.softplus(torch.randn(B, T, H, device="cuda", dtype=torch.float32))] if gated else []  # decays ~0.9..1
        do = torch.randn(B, T, H, V, device="cuda", dtype=torch.bfloat16)
        sets.append([t.requires_grad_() for t in [q, k, v] + g + [beta]] + [do])
    return sets


def bench_fla(B, T, H, D):
    from fla.ops.delta_rule import chunk_delta_rule
    N, nx = B * T * H, B * T * H * D
    sets = input_sets(B, T, H, D, D, False)
    nsets = len(sets)
    scale = D ** -0.5

    def fwd(i):
        q, k, v, beta, _ = sets[i % nsets]
        with torch.no_grad():
            chunk_delta_rule(q, k, v, beta, scale=scale)

    def fwdbwd(i):
        q, k, v, beta, do = sets[i % nsets]
        o, _ = chunk_delta_rule(q, k, v, beta, scale=scale)
        torch.autograd.grad(o, (q, k, v, beta), do)

    Ff, Fb = deltarule_flops(B, T, H, D)
    by_f, by_b = 2.0 * (4 * nx + N), 2.0 * (7 * nx + 2 * N)
    sh = f"B={B} T={T} H={H} K={D}"
    row(sh, "fla fwd", median_ms(fwd), Ff, by_f)
    row("", "fla fwd+bwd", median_ms(fwdbwd), Ff + Fb, by_f + by_b)


def bench_fla_gated(B, T, H, K, V):
    """fla's gated delta rule (Gated DeltaNet's mixer)."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    N = B * T * H
    sets = input_sets(B, T, H, K, V, True)
    nsets = len(sets)
    scale = K ** -0.5

    def fwd(i):
        q, k, v, g, beta, _ = sets[i % nsets]
        with torch.no_grad():
            chunk_gated_delta_rule(q, k, v, g, beta, scale=scale)

    def fwdbwd(i):
        q, k, v, g, beta, do = sets[i % nsets]
        o, _ = chunk_gated_delta_rule(q, k, v, g, beta, scale=scale)
        torch.autograd.grad(o, (q, k, v, g, beta), do)

    Ff, Fb = deltarule_flops(B, T, H, K)  # K = V: the same count; V = 2K: a lower bound
    by_f = 2.0 * (2 * N * K + 2 * N * V + N) + 4.0 * N
    by_b = by_f + 2.0 * (2 * N * K + 2 * N * V + N) + 4.0 * N
    sh = f"B={B} T={T} H={H} K={K} V={V}"
    row(sh, "fla gated fwd", median_ms(fwd), Ff, by_f)
    try:
        row("", "fla gated f+b", median_ms(fwdbwd), Ff + Fb, by_f + by_b)
    except RuntimeError as e:
        print(f"{'':<28} fla gated f+b: refused: {str(e).splitlines()[0]}", flush=True)


def bench_sdpa(B, T, H, D):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    sets = []
    for _ in range(3):
        q, k, v, do = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        sets.append([q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), do])
    fl = 4.0 * B * H * T * T * D / 2
    by = 2.0 * 4 * B * H * T * D
    sh = f"B={B} T={T} H={H} d={D}"
    for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel(be):
                def fwd(i):
                    q, k, v, _ = sets[i % 3]
                    with torch.no_grad():
                        F.scaled_dot_product_attention(q, k, v, is_causal=True)

                def fwdbwd(i):
                    q, k, v, do = sets[i % 3]
                    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                    torch.autograd.grad(o, (q, k, v), do)

                row(sh, f"sdpa-{name} fwd", median_ms(fwd), fl, by)
                row("", f"sdpa-{name} f+b", median_ms(fwdbwd), 3.5 * fl, 2 * by)
        except Exception as e:  # a backend may be unavailable
            print(f"sdpa {name}: {type(e).__name__}: {e}", flush=True)


def main():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, torch {torch.__version__}", flush=True)
    print(f"{'shape (bf16)':<28} {'pass':<14} {'ms':>9} {'TFLOP/s':>9} {'GB/s':>8}", flush=True)
    what = sys.argv[2:] or ["main", "d12", "sdpa", "gated"]
    if "sdpa" in what:
        bench_sdpa(8, 2048, 8, 128)
    named = {"main": (8, 2048, 8, 128), "d12": (32, 1024, 6, 128)}
    shapes = [named[w] for w in what if w in named]
    if "all" in what:
        shapes = [(8, 2048, 8, 128), (32, 1024, 6, 128), (4, 4096, 8, 128), (8, 2048, 16, 64), (1, 2048, 8, 128)]
    for B, T, H, D in shapes:
        try:
            bench_fla(B, T, H, D)
        except Exception as e:
            print(f"fla B={B} T={T} H={H} D={D}: {type(e).__name__}: {e}", flush=True)
        torch.cuda.empty_cache()
    if "gated" in what:
        for B, T, H, K, V in ((8, 2048, 8, 128, 128), (32, 1024, 6, 64, 128)):
            try:
                bench_fla_gated(B, T, H, K, V)
            except Exception as e:
                print(f"fla gated B={B} T={T} H={H} K={K} V={V}: {type(e).__name__}: {e}", flush=True)
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
