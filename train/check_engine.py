#!/usr/bin/env python3
"""Check that qwgpu runs an exported checkpoint like mlx-lm does.

For a few held-out prompts (token ids from train/data/val.bin, no chat template) it compares
mlx-lm's greedy continuation (generate_step on the reloaded checkpoint, CPU, float32 like the test
fixtures) with `qwgpu generate --prompt-ids ... --mtp off` and `--mtp on`, and reports the MTP
acceptance qwgpu measured. Then it prints one chat-mode generation and `qwgpu bench`.

Usage: python train/check_engine.py --model DIR [--qwgpu target/release/qwgpu] [--tokens 48]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests/fixtures"))


def qwgpu(bin_, args):
    r = subprocess.run([bin_] + args, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"qwgpu {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--qwgpu", default=str(REPO / "target/debug/qwgpu"))
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--bench", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--bench-args", default="--prompt-tokens 64 --gen-tokens 64 --trials 2 --warmup 1")
    args = ap.parse_args()

    import make_fixtures as mf  # noqa: F401  (mlx on the CPU)
    import mlx.core as mx
    import mlx_lm.utils as mlx_utils

    model, _ = mlx_utils.load_model(args.model)
    mf.upcast(model)
    val = np.fromfile(HERE / "data/val.bin", dtype=np.uint16).astype(int)
    same = total = 0
    drafted = accepted = 0
    for i in range(args.prompts):
        prompt = val[2000 + 700 * i: 2000 + 700 * i + 24].tolist()
        ref = []
        for tok, _ in mf.generate_step(mx.array(prompt), model, max_tokens=args.tokens):
            ref.append(int(tok))
        line = []
        for mtp in ("off", "on"):
            out = json.loads(qwgpu(args.qwgpu, ["generate", "--model", str(args.model), "--prompt-ids",
                                                ",".join(map(str, prompt)), "--max-tokens", str(args.tokens),
                                                "--ignore-eos", "--mtp", mtp, "--json"]))
            toks = out["tokens"]
            n = next((j for j, (a, b) in enumerate(zip(ref, toks)) if a != b), min(len(ref), len(toks)))
            line.append(f"mtp {mtp}: first {n}/{len(ref)} ids equal")
            if mtp == "off":
                same += n
                total += len(ref)
            else:
                d = out.get("mtp") or {}
                drafted += d.get("drafted", 0)
                accepted += d.get("accepted", 0)
                line.append(f"accepted {d.get('accepted')}/{d.get('drafted')}")
        print(f"prompt {i}: " + ", ".join(line))
    print(f"greedy ids equal to mlx-lm (prefix until first difference): {same}/{total}")
    if drafted:
        print(f"MTP acceptance on these prompts (greedy): {accepted}/{drafted} = {100 * accepted / drafted:.1f}%")
    print("--- chat mode:")
    print(qwgpu(args.qwgpu, ["generate", "--model", str(args.model), "--max-tokens", "48", "Hello"]))
    if args.bench:
        print("--- bench:")
        print(qwgpu(args.qwgpu, ["bench", "--model", str(args.model)] + args.bench_args.split()))


if __name__ == "__main__":
    main()
