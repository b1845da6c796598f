# Fourth call: the staging made cheaper (w·2^8 as one fma per code from s·2^8 and b·2^8, codes to
# f32 four at a time by the exponent trick, x read as f16 with no conversion): the kernel test, the
# fixtures against mlx-lm, the kernel lab at 1024 tokens and the README's end-to-end benchmark.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 &
echo "== coop test"; $C/coop_test --nocapture > $R/coop_test.txt 2>&1; echo "rc $?"; grep -E "worst error|test result" $R/coop_test.txt | head -9; grep -A2 panicked $R/coop_test.txt | head -4
echo "== model_vs_mlx on the H200"; QWGPU_FIXTURES=$PWD/tests/fixtures/models $C/model_vs_mlx --nocapture --test-threads 1 > $R/model_vs_mlx.txt 2>&1; echo "rc $?"; grep -E "test result|panicked" $R/model_vs_mlx.txt | head; grep -o "max |logit error| [0-9.e-]*" $R/model_vs_mlx.txt | sort -t' ' -k4 -g | tail -2
$C/lab matmul --reps 10 --prefill 1024 --shapes gate_up,down,in_proj,out_proj,qkv > $R/lab.jsonl 2>&1; grep 'T=1024", "TF' $R/lab.jsonl
wait; tail -1 /tmp/synth.log
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('ttft_s','prefill_tokens_per_s','decode_tokens_per_s','tpot_ms','gpu_memory_bytes','cpu_ms_per_token','drift_pct')})" $1; }
echo "== e2e README benchmark"; $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 3 --trials 10 --roofline-gbps 4500 --json > $R/e2e.json 2>$R/e2e.err; g $R/e2e.json
echo "== mtp forced 0.8"; $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_0.8.json 2>/dev/null; python3 -c "
import json; j=json.load(open('$R/mtp_0.8.json')); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'])"
tar czf $OUT/results.tar.gz -C $R .
