# The tensor-core prefill GEMM with the weights rounded to one f16 (x still as pairs) by default
# under the two-plane format: its kernel test and the fixtures against mlx-lm on the H200; the
# kernel lab at 1024 tokens and TTFT for P = 3 / 2 / 1 (QWGPU_COOP_TILE=128x128x32x4x2xP); the
# README's benchmark on the default. Then the prompt chunk's attention with 1 / 2 / 4 / 8 query
# rows per workgroup (QWGPU_ATTN_ROWS): layer breakdown at 1024 tokens and TTFT.
# Results in $OUT/results.tar.gz.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
t0=$(date +%s); ts() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
save() { tar czf $OUT/results.tar.gz -C $R .; }
( [ -f /tmp/m27/config.json ] || $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 ) &
ts "coop kernel test"; $C/coop_test --nocapture > $R/coop_test.txt 2>&1; echo "rc $?"; grep -E "worst|test result|panicked" $R/coop_test.txt | head -8
ts "model_vs_mlx"; QWGPU_FIXTURES=$PWD/tests/fixtures/models $C/model_vs_mlx --nocapture --test-threads 1 > $R/model_vs_mlx.txt 2>&1; echo "rc $?"; grep -E "test result|panicked" $R/model_vs_mlx.txt | head; grep -E "narrow planes true" $R/model_vs_mlx.txt | grep -o "max |logit error| [0-9.e-]*" | sort -t' ' -k4 -g | tail -2
save
wait
for P in 3 2 1; do
  ts "lab prefill P=$P"; QWGPU_COOP_TILE=128x128x32x4x2x$P $C/lab matmul --reps 20 --prefill 1024 > $R/lab_prefill_p$P.jsonl 2>&1; grep 'TFLOPs' $R/lab_prefill_p$P.jsonl | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j['bench'][:60]:60s} {j['TFLOPs']}\")"
done
for A in 1 4; do
ts "layers at 1024 tokens (P=2, attention rows $A)"; QWGPU_ATTN_ROWS=$A $C/lab layer --breakdown --reps 5 --pos 0 --prefill 1024 > $R/layers_prefill_a$A.jsonl 2>&1; grep 'T=1024' $R/layers_prefill_a$A.jsonl | grep -v matmul | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); k=j.get('bench') or j.get('part'); print(f\"{k[:70]:70s} {j.get('us',0):9.1f}\")"
done
save
tt() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print('ttft', j['ttft_s']['p50'], 'prefill', j['prefill_tokens_per_s'], 'decode', j['decode_tokens_per_s']['p50'], 'mem', j['gpu_memory_bytes'])" $1 2>/dev/null || echo failed; }
ts "ttft old defaults (P=3, attention rows 1)"; QWGPU_COOP_TILE=128x128x32x4x2x3 QWGPU_ATTN_ROWS=1 $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 16 --warmup 1 --trials 5 --json > $R/ttft_old.json 2>/dev/null; tt $R/ttft_old.json
for P in 3 2 1; do
  ts "ttft P=$P"; QWGPU_COOP_TILE=128x128x32x4x2x$P $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 16 --warmup 1 --trials 5 --json > $R/ttft_p$P.json 2>/dev/null; tt $R/ttft_p$P.json
done
for A in 1 2 8 4; do
  ts "ttft attention rows $A"; QWGPU_ATTN_ROWS=$A $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 16 --warmup 1 --trials 5 --json > $R/ttft_a$A.json 2>/dev/null; tt $R/ttft_a$A.json
done
for P in 2; do
  ts "ttft 4000 P=$P"; QWGPU_COOP_TILE=128x128x32x4x2x$P $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 4000 --gen-tokens 16 --warmup 1 --trials 3 --json > $R/ttft4000_p$P.json 2>/dev/null; tt $R/ttft4000_p$P.json
done
save
ts "README benchmark (default)"; $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 3 --trials 10 --roofline-gbps 4500 --json > $R/e2e.json 2>$R/e2e.err; tt $R/e2e.json
save
ts done
