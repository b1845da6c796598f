# `lab mmchain`: 8 dependent integer-plane matmuls of one shape (out_proj, down, in_proj, gate+up
# without SwiGLU) as 8 dispatches (a barrier between each) against ONE dispatch whose workgroups
# take the tiles from an atomic queue, a phase's tiles waiting for the previous phase's (grids 264
# to 2112; both forms' outputs compared bit for bit): what the dispatch boundaries cost the real
# matmul kernel, the question behind a persistent per-layer kernel. Then the committed tree's
# plain and MTP numbers on the same machine (the reference for anything measured with it).
# (Not run yet: no machine was lent in the session that wrote it.)
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
ts "lab warm-up (discarded)"; timeout 60 $C/lab matmul --reps 10 --shapes gate_up > /dev/null 2>&1
ts "lab mmchain"; timeout 300 $C/lab mmchain --reps 30 > $R/mmchain.jsonl 2>&1; python3 -c "
import json,sys
for l in open(sys.argv[1]):
    try: j=json.loads(l)
    except Exception: print(l.rstrip()); continue
    if 'us' in j: print(f\"{j['bench'][:100]:100s} {j['us']:8.1f} {j['GBps']:8.1f}\")" $R/mmchain.jsonl; save
# One phase: a single matmul's tiles from the queue against its grid-stride form (the tail).
ts "lab mmchain, 1 phase"; timeout 200 $C/lab mmchain --phases 1 --reps 50 > $R/mmchain1.jsonl 2>&1; grep -o '"bench": "[^"]*", "us": [0-9.]*' $R/mmchain1.jsonl; save
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j.get('mtp_decode'); print('plain', round(j['decode_tokens_per_s']['p50'],2), '' if not m else ('mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3), m.get('measured_ms')))" $1 2>/dev/null || { echo failed; tail -3 ${1%.json}.err; }; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>$R/$n.err; m $R/$n.json; save; }
run plain timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1
# Fewer key chunks per row in the attention split pass (at 1024 keys the default 32 leaves 16 in
# use, 64 keys each; a benchmark knob: the chunking changes a row's bits).
run plain_ns16 QWGPU_ATTN_NS=16 timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1
run plain_ns8 QWGPU_ATTN_NS=8 timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1
run mtp08 timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8
# Constrained decoding on the 27B shapes (the real Qwen3.6 tokenizer of the test fixtures fits the
# synthetic checkpoint's 248,320-id vocabulary): the same raw prompt, 256 tokens, unconstrained
# against a regex whose mask allows words (the constrained loop keeps no step in flight and adds
# the host's mask time: what that costs at 6.5 ms per step).
cp tests/fixtures/qwen3.6-tokenizer/tokenizer.json tests/fixtures/qwen3.6-tokenizer/tokenizer_config.json /tmp/m27/
g() { n=$1; shift; ts "$n"; timeout 120 $C/qwgpu generate --model /tmp/m27 --raw --mtp off --max-tokens 256 --json "$@" "A sentence:" > $R/$n.json 2>$R/$n.err; python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); t=j['timings']; print(len(j['tokens']), 'tokens', j['finish_reason'], 'decode', round(t['decode_tokens_per_s'],2), 'tok/s')" $R/$n.json 2>/dev/null || tail -3 $R/$n.err; save; }
g gen_free --ignore-eos
g gen_regex --regex '[a-z]{1,12}( [a-z]{1,12}){0,400}'
ts done
