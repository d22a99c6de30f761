#!/usr/bin/env python3
"""mqar_table.py -- the MQAR results table and plot from scripts/mqar.sh's results.jsonl.

Each line of results.jsonl is one run: {"kind", "d_model", "lr", "acc", "loss", "seconds", ...}.
For every (kind, width) the run with the best test accuracy is kept (its learning rate shown);
OUT/table.md is a markdown table, kinds as rows and widths as columns, then every run's accuracy by
learning rate; OUT/mqar.png has two panels against width (log2 axis), one line per kind: the best
run's error rate (100% - accuracy, log axis: 99.9% and 99% differ tenfold there), and every run's
accuracy (how much each kind depends on the learning rate).
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
    lrs = sorted({r["lr"] for r in runs})
    by_lr = {(r["kind"], r["d_model"], r["lr"]): r for r in runs}
    lines = [
        f"MQAR test accuracy (answers only): vocabulary 8192, {a.seq} tokens, {a.pairs} key-value pairs, "
        f"2 layers without MLPs, head size 64, {a.steps} steps x {a.batch} examples, data seed {a.seed}, "
        f"best of the learning rates tried (in parentheses); {len(runs)} runs, {total:.0f} s of run time "
        f"(the sum of the runs' wall times; runs train several at once, sharing the GPU).",
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
    lines += ["", "Every run (test accuracy by learning rate):", "",
              "| layers | lr | " + " | ".join(f"D={w}" for w in widths) + " |", "|---|---|" + "---|" * len(widths)]
    for k in kinds:
        for lr in lrs:
            cells = [f"{100 * by_lr[(k, w, lr)]['acc']:.2f}%" if (k, w, lr) in by_lr else "-" for w in widths]
            if any(c != "-" for c in cells):
                lines.append(f"| {NAMES[k]} | {lr:g} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    with open(f"{a.out}/table.md", "w") as f:
        f.write(table)
    print(table, end="")
    if a.no_plot:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, k in enumerate(kinds):
        xs = [w for w in widths if (k, w) in best]
        err = [max(100 * (1 - best[(k, w)]["acc"]), 0.005) for w in xs]  # 100% drawn at 0.005%
        ax.plot(xs, err, marker="o", label=NAMES[k])
        pts = [(w * 2 ** (0.06 * (i - 1.5)), 100 * r["acc"]) for (kk, w, _), r in sorted(by_lr.items()) if kk == k]
        ax2.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, label=NAMES[k])
    for a_ in (ax, ax2):
        a_.set_xscale("log", base=2)
        a_.set_xticks(widths)
        a_.set_xticklabels([str(w) for w in widths])
        a_.set_xlabel("model width D")
        a_.grid(alpha=0.3)
    ax.set_yscale("log")
    ax.set_ylabel("test error, best learning rate (%, log)")
    ax.set_title(f"MQAR T={a.seq}, {a.pairs} pairs, {a.steps} steps: best of {len(lrs)} lrs")
    ax.legend()
    ax2.set_ylim(-2, 102)
    ax2.set_ylabel("test accuracy (%)")
    ax2.set_title("every run (lrs " + ", ".join(f"{lr:g}" for lr in lrs) + ")")
    fig.tight_layout()
    fig.savefig(f"{a.out}/mqar.png", dpi=120)
    print(f"wrote {a.out}/table.md, {a.out}/mqar.png")


if __name__ == "__main__":
    main()
