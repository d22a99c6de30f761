#!/usr/bin/env python3
"""
curves.py -- the results of scripts/curves.sh: reads each model's log OUT/NAME.jsonl (written by
train_deltanet --log: one {"kind": "val", "step": S, "loss": L} row per evaluation) and the seconds
its run took (OUT/NAME.time), and writes into OUT:
  curves.jsonl  one row per evaluation: {"config", "step", "tokens", "val_loss", "ppl"}
  curves.csv    the same columns
  curves.png    validation loss (left) and perplexity (right, log scale) against training tokens,
                one line per model (needs matplotlib; --no-plot skips it)
  table.md      loss / perplexity per model per evaluation, the order at the last one, the time
                each model took (and with --reference, the deltanet run against the reference's
                own training on the same recipe)
tokens = step x tokens per step (--tokens-per-step, B x T). perplexity = exp(loss).

Usage: python3 scripts/curves.py --out out/curves --configs deltanet,hybrid,swa,transformer
           [--tokens-per-step 32768] [--title TEXT] [--total-seconds S] [--reference] [--no-plot]
"""
import argparse
import csv
import json
import math
import os
import sys

COLOURS = {"deltanet": "tab:blue", "hybrid": "tab:orange", "swa": "tab:green", "transformer": "tab:red",
           "gdn": "tab:purple", "gdn-swa": "tab:brown"}
LABELS = {"deltanet": "DeltaNet", "hybrid": "DeltaNet + 2 global attention (hybrid)",
          "swa": "DeltaNet + sliding-window attention (swa)", "transformer": "Transformer++",
          "gdn": "Gated DeltaNet (gdn)", "gdn-swa": "Gated DeltaNet + sliding-window attention (gdn-swa)"}
# The reference's own training of the deltanet configuration on this recipe and corpus (PyTorch
# DeltaNetForCausalLM, random windows, 64 validation windows spread over the split): val loss at
# steps 100..500. Ours should be within 1% of each.
REFERENCE = {100: 5.2240, 200: 4.4255, 300: 4.1155, 400: 3.9418, 500: 3.8703}
REFERENCE_TOL = 0.01


def fail(msg):
    print(f"curves.py: {msg}", file=sys.stderr)
    sys.exit(1)


def read_val(path):
    """{step: loss} of the val rows of a trainer log (a step logged twice, after a resume: the last)."""
    if not os.path.isfile(path):
        fail(f"{path} not found (the model's run did not happen or did not log)")
    val = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                print(f"curves.py: {path}:{n}: skipping a line that is not JSON", file=sys.stderr)
                continue
            if r.get("kind") == "val":
                val[int(r["step"])] = float(r["loss"])
    if not val:
        fail(f"{path} has no validation rows (was the run given --val-every?)")
    return val


def mtok(tokens):
    return f"{tokens / 1e6:.1f}M"


def minutes(out, config):
    try:
        with open(os.path.join(out, config + ".time")) as f:
            return float(f.read().split()[0]) / 60
    except (OSError, ValueError, IndexError):
        return None


def write_rows(out, rows):
    with open(os.path.join(out, "curves.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    with open(os.path.join(out, "curves.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["config", "step", "tokens", "val_loss", "ppl"])
        w.writeheader()
        w.writerows(rows)


def write_table(out, configs, runs, tps, title, total_s, reference):
    steps = sorted({s for c in configs for s in runs[c]})
    lines = ["# Validation loss / perplexity", "", title, "",
             "| step | tokens | " + " | ".join(configs) + " |",
             "|---:|---:|" + "---:|" * len(configs)]
    for s in steps:
        cells = [f"{runs[c][s]:.4f} / {math.exp(runs[c][s]):.2f}" if s in runs[c] else "" for c in configs]
        lines.append(f"| {s} | {mtok(s * tps)} | " + " | ".join(cells) + " |")
    last = max(steps)
    at_last = sorted((runs[c][last], c) for c in configs if last in runs[c])
    lines += ["", f"At step {last} ({mtok(last * tps)} tokens), lowest first: " +
              " < ".join(f"{c} {l:.4f}" for l, c in at_last) + "."]
    if reference and "deltanet" in configs:
        lines += ["", "deltanet against the reference's own training on this recipe (PyTorch DeltaNetForCausalLM, "
                      "random windows, the same 64 validation windows):", "",
                  "| step | reference | ours | difference | within 1% |", "|---:|---:|---:|---:|:---:|"]
        for s, ref in sorted(REFERENCE.items()):
            ours = runs["deltanet"].get(s)
            if ours is None:
                lines.append(f"| {s} | {ref:.4f} | | | |")
                continue
            d = (ours - ref) / ref
            lines.append(f"| {s} | {ref:.4f} | {ours:.4f} | {100 * d:+.2f}% | {'yes' if abs(d) <= REFERENCE_TOL else 'NO'} |")
    times = [(c, minutes(out, c)) for c in configs]
    if any(m is not None for _, m in times):
        t = ", ".join(f"{c} {m:.1f} min" for c, m in times if m is not None)
        whole = f"; the whole command {total_s / 60:.1f} min" if total_s is not None else ""
        lines += ["", f"Time (one GPU, each model's run from start to its checkpoint): {t}{whole}."]
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def plot(out, configs, runs, tps, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, (ax_l, ax_p) = plt.subplots(1, 2, figsize=(13, 5))
    for c in configs:
        steps = sorted(runs[c])
        x = [s * tps / 1e6 for s in steps]
        y = [runs[c][s] for s in steps]
        kw = dict(marker="o", label=LABELS.get(c, c), color=COLOURS.get(c))
        ax_l.plot(x, y, **kw)
        ax_p.plot(x, [math.exp(v) for v in y], **kw)
    ax_l.set_ylabel("validation loss (nats/token)")
    ax_p.set_ylabel("validation perplexity (log scale)")
    ax_p.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")  # 50, not 5 x 10^1
    ax_p.yaxis.set_major_formatter(plain)
    ax_p.yaxis.set_minor_formatter(plain)
    for ax in (ax_l, ax_p):
        ax.set_xlabel("training tokens (millions)")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description="table and plot of scripts/curves.sh's runs")
    ap.add_argument("--out", required=True, help="the folder with NAME.jsonl; the results go there")
    ap.add_argument("--configs", required=True, help="comma-separated model names (NAME.jsonl each)")
    ap.add_argument("--tokens-per-step", type=int, default=32768)
    ap.add_argument("--title", default="")
    ap.add_argument("--total-seconds", type=float, default=None, help="the whole command's time, for table.md")
    ap.add_argument("--reference", action="store_true", help="compare deltanet with the reference's losses")
    ap.add_argument("--no-plot", action="store_true", help="no curves.png (no matplotlib needed)")
    a = ap.parse_args()
    configs = [c for c in a.configs.split(",") if c]
    if not configs:
        fail("--configs is empty")
    runs = {c: read_val(os.path.join(a.out, c + ".jsonl")) for c in configs}
    rows = [{"config": c, "step": s, "tokens": s * a.tokens_per_step, "val_loss": runs[c][s],
             "ppl": round(math.exp(runs[c][s]), 4)} for c in configs for s in sorted(runs[c])]
    write_rows(a.out, rows)
    write_table(a.out, configs, runs, a.tokens_per_step, a.title, a.total_seconds, a.reference)
    if not a.no_plot:
        plot(a.out, configs, runs, a.tokens_per_step, a.title)
    print(f"curves.py: {len(rows)} evaluations of {len(configs)} models -> {a.out}/"
          f"{'' if a.no_plot else 'curves.png, '}table.md, curves.csv, curves.jsonl")


if __name__ == "__main__":
    main()
