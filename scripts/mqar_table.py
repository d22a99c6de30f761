#!/usr/bin/env python3
"""mqar_table.py -- the MQAR results table and plot from scripts/mqar.sh's results.jsonl.

Each line of results.jsonl is one run: {"kind", "d_model", "lr", "acc", "loss", "seconds", ...}.
For every (kind, width) the run with the best test accuracy is kept (its learning rate shown);
OUT/table.md is a markdown table, kinds as rows and widths as columns, and OUT/mqar.png the
accuracy against width (log2 axis), one line per kind.
"""
import argparse
import json
import sys

NAMES = {"D": "DeltaNet", "L": "linear attention", "G": "global attention", "N": "Gated DeltaNet"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--pairs", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--no-plot", action="store_true")
    a = ap.parse_args()
    try:
        runs = [json.loads(l) for l in open(a.results) if l.strip()]
    except (OSError, ValueError) as e:
        sys.exit(f"mqar_table.py: {a.results}: {e}")
    if not runs:
        sys.exit(f"mqar_table.py: {a.results}: no runs")
    best = {}
    for r in runs:
        key = (r["kind"], r["d_model"])
        if key not in best or r["acc"] > best[key]["acc"]:
            best[key] = r
    kinds = [k for k in "DLGN" if any(r["kind"] == k for r in runs)]
    widths = sorted({r["d_model"] for r in runs})
    total = sum(r.get("seconds", 0) for r in runs)
    lines = [
        f"MQAR test accuracy (answers only): vocabulary 8192, {a.seq} tokens, {a.pairs} key-value pairs, "
        f"2 layers without MLPs, head size 64, {a.steps} steps x {a.batch} examples, data seed {a.seed}, "
        f"best of the learning rates tried (in parentheses); {len(runs)} runs, {total:.0f} s of training.",
        "",
        "| layers | " + " | ".join(f"D={w}" for w in widths) + " |",
        "|---|" + "---|" * len(widths),
    ]
    for k in kinds:
        cells = []
        for w in widths:
            r = best.get((k, w))
            cells.append(f"{100 * r['acc']:.1f}% ({r['lr']:g})" if r else "-")
        lines.append(f"| {NAMES[k]} ({k}) | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    with open(f"{a.out}/table.md", "w") as f:
        f.write(table)
    print(table, end="")
    if a.no_plot:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for k in kinds:
        xs = [w for w in widths if (k, w) in best]
        ax.plot(xs, [100 * best[(k, w)]["acc"] for w in xs], marker="o", label=NAMES[k])
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths)
    ax.set_xticklabels([str(w) for w in widths])
    ax.set_xlabel("model width D")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 102)
    ax.set_title(f"MQAR, T={a.seq}, {a.pairs} pairs, {a.steps} steps")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{a.out}/mqar.png", dpi=120)
    print(f"wrote {a.out}/table.md, {a.out}/mqar.png")


if __name__ == "__main__":
    main()
