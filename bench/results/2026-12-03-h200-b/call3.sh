# The fixtures against mlx-lm on the H200 (tests/model_vs_mlx.rs) with the committed defaults
# (tensor-core prefill with f16 pairs of w and x, the two-plane decode format), with the f32
# prefill GEMM (QWGPU_PREFILL_COOP=0), and with the decode matmuls off the integer planes
# (QWGPU_MATMUL_XQ=0) where the defaults fail; then the README's benchmark. Results in $OUT/results.tar.gz.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
t0=$(date +%s); ts() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
save() { tar czf $OUT/results.tar.gz -C $R .; }
( [ -f /tmp/m27/config.json ] || $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 ) &
for v in default QWGPU_PREFILL_COOP=0 QWGPU_MATMUL_XQ=0; do
  # (the two variants only where the defaults fail)
  if [ $v != default ] && grep -q "test result: ok. 3 passed" $R/model_vs_mlx_default.txt; then continue; fi
  ts "model_vs_mlx $v"; env $( [ $v = default ] || echo $v ) QWGPU_FIXTURES=$PWD/tests/fixtures/models $C/model_vs_mlx --nocapture --test-threads 1 > $R/model_vs_mlx_$v.txt 2>&1; echo "rc $?"
  grep -E "test result|differ by" $R/model_vs_mlx_$v.txt | head -4
  grep -E "narrow planes true\): [0-9]+ tokens" $R/model_vs_mlx_$v.txt | grep -o "max |logit error| [0-9.e-]*" | sort -t' ' -k4 -g | tail -1
  grep -E "narrow planes false\): [0-9]+ tokens" $R/model_vs_mlx_$v.txt | grep -o "max |logit error| [0-9.e-]*" | sort -t' ' -k4 -g | tail -1
done
save
wait
tt() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print('ttft', j['ttft_s']['p50'], 'prefill', j['prefill_tokens_per_s'], 'decode', j['decode_tokens_per_s']['p50'], 'tpot', j['tpot_ms'], 'disp', j['dispatches_per_token'], 'cpu', j['cpu_ms_per_token'], 'mem', j['gpu_memory_bytes'], 'drift', j['drift_pct'])" $1 2>/dev/null || echo failed; }
ts "README benchmark"; $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 3 --trials 10 --roofline-gbps 4500 --json > $R/e2e.json 2>$R/e2e.err; tt $R/e2e.json
save
ts done
