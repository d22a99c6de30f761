#!/usr/bin/env python3
"""
plot_log.py -- turn a train_deltanet log (--log FILE, JSONL or CSV) into a PNG of the training and
validation loss (left) and perplexity = exp(loss) (right) against the step.

Log rows (written by train_deltanet.cu, one per training step and one per validation pass):
  JSONL: {"kind": "train", "step": 12, "loss": 4.21, "lr": 3e-4, "norm": 1.3, "ms": 41.2,
          "tok_s": 198000, "mfu": 0.31}
         {"kind": "val", "step": 12, "loss": 4.35}
  CSV:   header  kind,step,loss,lr,norm,ms,tok_s,mfu   (val rows leave the training columns empty)

Usage: python3 scripts/plot_log.py out/log.jsonl [-o out/loss.png] [--smooth 0.9] [--title TEXT]
Several logs may be given: each gets its own colour, labelled by file name.
"""
import argparse
import csv
import json
import math
import os
import sys


def read_log(path):
    """Returns (train_steps, train_losses, val_steps, val_losses) of one log file."""
    rows = []
    with open(path) as f:
        first = f.readline()
        f.seek(0)
        if first.lstrip().startswith("{"):
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    print(f"{path}:{n}: skipping a line that is not JSON (a run cut off mid-write?)", file=sys.stderr)
        else:
            for r in csv.DictReader(f):
                rows.append(r)
    ts, tl, vs, vl = [], [], [], []
    for r in rows:
        kind = r.get("kind", "train")
        try:
            step, loss = int(r["step"]), float(r["loss"])
        except (KeyError, TypeError, ValueError):
            continue
        if not math.isfinite(loss):
            continue
        if kind == "val":
            vs.append(step); vl.append(loss)
        else:
            ts.append(step); tl.append(loss)
    return ts, tl, vs, vl


def ema(xs, alpha):
    """Exponential moving average with bias correction (alpha = 0: no smoothing)."""
    out, m = [], 0.0
    for i, x in enumerate(xs):
        m = alpha * m + (1 - alpha) * x
        out.append(m / (1 - alpha ** (i + 1)) if alpha > 0 else x)
    return out


def main():
    ap = argparse.ArgumentParser(description="Plot train/val loss and perplexity from train_deltanet logs.")
    ap.add_argument("logs", nargs="+", help="log files (JSONL or CSV) written by train_deltanet --log")
    ap.add_argument("-o", "--out", default=None, help="output PNG (default: first log's name with .png)")
    ap.add_argument("--smooth", type=float, default=0.0, help="EMA factor for the train curve, 0..0.999 (default 0)")
    ap.add_argument("--title", default=None, help="figure title")
    args = ap.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_p) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    any_rows = False
    for i, path in enumerate(args.logs):
        ts, tl, vs, vl = read_log(path)
        if not ts and not vs:
            print(f"{path}: no loss rows found", file=sys.stderr)
            continue
        any_rows = True
        c = colors[i % len(colors)]
        name = os.path.basename(path) if len(args.logs) > 1 else ""
        tls = ema(tl, args.smooth)
        for ax, f in ((ax_l, lambda x: x), (ax_p, lambda x: math.exp(min(x, 50.0)))):
            if ts:
                ax.plot(ts, [f(x) for x in tls], color=c, lw=1.0, alpha=0.9, label=f"{name} train".strip())
            if vs:
                ax.plot(vs, [f(x) for x in vl], color=c, lw=2.0, ls="--", marker="o", ms=3,
                        label=f"{name} val".strip())
        if vl:
            best = min(range(len(vl)), key=lambda j: vl[j])
            print(f"{path}: {len(ts)} train rows, last train loss {tl[-1]:.4f}; "
                  f"best val loss {vl[best]:.4f} (ppl {math.exp(vl[best]):.2f}) at step {vs[best]}")
        elif tl:
            print(f"{path}: {len(ts)} train rows, last train loss {tl[-1]:.4f}")
    if not any_rows:
        sys.exit("nothing to plot")
    ax_l.set_xlabel("step"); ax_l.set_ylabel("loss (nats/token)"); ax_l.set_title("loss")
    ax_p.set_xlabel("step"); ax_p.set_ylabel("perplexity"); ax_p.set_yscale("log"); ax_p.set_title("perplexity")
    for ax in (ax_l, ax_p):
        ax.grid(True, alpha=0.3)
        ax.legend()
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    out = args.out or os.path.splitext(args.logs[0])[0] + ".png"
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
