#!/usr/bin/env python3
"""Markdown table from `qwgpu bench --json` and `mlx_lm_bench.py` outputs (side_by_side.sh)."""
import json
import sys


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: compare.py QWGPU_JSON MLX_JSON", file=sys.stderr)
        return 2
    q = json.load(open(sys.argv[1]))
    m = json.load(open(sys.argv[2]))
    qd, md = q["decode_tokens_per_s"]["p50"], m["decode_tokens_per_s"]["p50"]
    qt, mt = q["ttft_s"]["p50"], m["ttft_s"]["p50"]
    print(f"prompt {q['prompt_tokens']} tokens, {q['gen_tokens']} generated, greedy; "
          f"qwgpu {q['warmup']} warm-up + {q['trials']} trials, mlx-lm {m['warmup']} + {m['trials']}")
    print()
    print("| | qwgpu | mlx-lm | qwgpu / mlx-lm |")
    print("|---|---|---|---|")
    print(f"| decode tok/s (p50) | {qd:.1f} | {md:.1f} | {qd / md:.2f}x |")
    print(f"| TPOT ms | {1000 / qd:.2f} | {1000 / md:.2f} | |")
    print(f"| TTFT s (p50) | {qt:.3f} | {mt:.3f} | {mt / qt:.2f}x faster |" if qt < mt else
          f"| TTFT s (p50) | {qt:.3f} | {mt:.3f} | {qt / mt:.2f}x slower |")
    print(f"| prefill tok/s | {q['prefill_tokens_per_s']:.0f} | {m['prefill_tokens_per_s']:.0f} | |")
    gm = q.get("gpu_memory_bytes")
    pm = m.get("peak_gpu_memory_bytes")
    if gm and pm:
        print(f"| GPU memory GiB | {gm / 2**30:.2f} | {pm / 2**30:.2f} (peak) | |")
    print(f"| device | {q['device']} | {m['device']} (mlx {m['versions']['mlx']}, mlx-lm {m['versions']['mlx_lm']}) | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
