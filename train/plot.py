#!/usr/bin/env python3
"""Plot the loss curves of a train.py run: loss.csv -> PNG.

Usage: python train/plot.py RUN/loss.csv [-o loss.png]
"""

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def col(rows, key):
    xs, ys = [], []
    for r in rows:
        if r.get(key):
            xs.append(int(r["tokens"]) / 1e6)
            ys.append(float(r[key]))
    return xs, ys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv", type=Path)
    ap.add_argument("-o", "--out", type=Path, default=None)
    args = ap.parse_args()
    rows = list(csv.DictReader(open(args.csv)))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, label, style in [("loss", "backbone (train)", "-"), ("mtp_loss", "MTP t+2 (train)", "-"),
                              ("val_loss", "backbone (held out)", "o--"), ("val_mtp_loss", "MTP t+2 (held out)", "o--"),
                              ("mtp_kl", "KL(backbone || MTP) (train)", ":"), ("val_mtp_kl", "same, held out", "o:")]:
        x, y = col(rows, key)
        if x:
            a1.plot(x, y, style, label=label, markersize=3)
    a1.set_xlabel("training tokens (M)")
    a1.set_ylabel("nats")
    a1.set_title("Loss")
    a1.grid(alpha=0.3)
    a1.legend()
    for key, label, style in [("mtp_agree", "MTP draft = backbone argmax (train)", "-"),
                              ("val_mtp_agree", "same, held out", "o--"), ("mtp_acc", "MTP top-1 = true t+2", "-")]:
        x, y = col(rows, key)
        if x:
            a2.plot(x, [100 * v for v in y], style, label=label, markersize=3)
    a2.set_xlabel("training tokens (M)")
    a2.set_ylabel("%")
    a2.set_title("MTP head (teacher forced)")
    a2.grid(alpha=0.3)
    a2.legend()
    fig.tight_layout()
    out = args.out or args.csv.with_suffix(".png")
    fig.savefig(out, dpi=120)
    print(out)


if __name__ == "__main__":
    main()
