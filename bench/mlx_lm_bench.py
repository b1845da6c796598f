#!/usr/bin/env python3
"""mlx-lm's decode speed and time to first token on an MLX checkpoint, measured the way
`qwgpu bench` measures them, so the two can be compared in one run (see side_by_side.sh).

Same prompt as `qwgpu bench` without --prompt-file: pseudo-random token ids from splitmix64
with the same seed. Greedy, EOS ignored (mlx_lm.generate.generate_step has no stop check).
TTFT = wall time from the call to the first generated token (prefill + one step); decode tok/s =
(generated - 1) / (wall time after the first token). Prints one JSON object.

    python3 bench/mlx_lm_bench.py --model DIR [--prompt-tokens 1024 --gen-tokens 512 --warmup 3 --trials 10]
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

M64 = (1 << 64) - 1


def prompt_ids(n: int, vocab: int, seed: int) -> list:
    x = (seed + 0x9E3779B97F4A7C15) & M64
    out = []
    for _ in range(n):
        x = (x + 0x9E3779B97F4A7C15) & M64
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        out.append((z ^ (z >> 31)) % vocab)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--prompt-tokens", type=int, default=1024)
    ap.add_argument("--gen-tokens", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.trials < 1 or a.gen_tokens < 2 or a.prompt_tokens < 1:
        print("--trials must be at least 1, --gen-tokens at least 2 and --prompt-tokens at least 1", file=sys.stderr)
        return 2

    import mlx.core as mx
    import mlx_lm
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load_model

    t0 = time.perf_counter()
    model, config = load_model(a.model)
    mx.eval(model.parameters())
    load_s = time.perf_counter() - t0
    text_cfg = config.get("text_config", config)
    vocab = int(text_cfg["vocab_size"])
    prompt = mx.array(prompt_ids(a.prompt_tokens, vocab, a.seed), dtype=mx.uint32)

    ttft, decode, counts = [], [], []
    for trial in range(a.warmup + a.trials):
        t0 = time.perf_counter()
        t_first = None
        n = 0
        for tok, _ in generate_step(prompt, model, max_tokens=a.gen_tokens):
            if isinstance(tok, mx.array):
                tok = tok.item()
            n += 1
            if t_first is None:
                t_first = time.perf_counter() - t0
        wall = time.perf_counter() - t0
        if trial >= a.warmup:
            ttft.append(t_first)
            decode.append((n - 1) / max(wall - t_first, 1e-9))
            counts.append(n)
        print(f"trial {trial + 1}/{a.warmup + a.trials}: ttft {t_first:.3f} s, {(n - 1) / max(wall - t_first, 1e-9):.2f} tok/s",
              file=sys.stderr)

    peak = mx.get_peak_memory() if hasattr(mx, "get_peak_memory") else None
    out = {
        "engine": "mlx-lm",
        "versions": {"mlx": mx.__version__, "mlx_lm": getattr(mlx_lm, "__version__", "?")},
        "device": str(mx.default_device()),
        "model": str(a.model),
        "prompt_tokens": a.prompt_tokens,
        "gen_tokens": a.gen_tokens,
        "generated": counts,
        "warmup": a.warmup,
        "trials": a.trials,
        "load_s": load_s,
        "ttft_s": {"p50": statistics.median(ttft), "min": min(ttft), "max": max(ttft)},
        "decode_tokens_per_s": {"p50": statistics.median(decode), "min": min(decode), "max": max(decode)},
        "decode_tokens_per_s_trials": decode,
        "prefill_tokens_per_s": a.prompt_tokens / statistics.median(ttft),
        "peak_gpu_memory_bytes": peak,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
