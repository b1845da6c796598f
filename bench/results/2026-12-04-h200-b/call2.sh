# f16 KV caches (`--kv-cache f16`) against f32: plain decode at the benchmark shape (1024 + 512),
# after 4000- and 16000-token prompts, and MTP at forced 0.8; GPU memory from --json.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j.get('mtp_decode'); g=j.get('gpu_memory',{}); print('plain', round(j['decode_tokens_per_s']['p50'],2), 'ttft', round(j['ttft_s']['p50'] if isinstance(j['ttft_s'],dict) else j['ttft_s'],3), 'kv', g.get('kv_cache'), '' if not m else ('mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3)))" $1 2>/dev/null || echo failed; }
run() { n=$1; shift; ts "$n"; "$@" > $R/$n.json 2>$R/$n.err; m $R/$n.json; save; }
B="timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1"
M="timeout 120 $C/qwgpu bench --model /tmp/m27 --json --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8"
L4="timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 4000 --gen-tokens 256 --trials 2 --warmup 1"
L16="timeout 120 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 16000 --gen-tokens 256 --max-context 16384 --trials 1 --warmup 1"
for r in 1 2; do
  run plain_f16_$r $B --kv-cache f16
  run plain_f32_$r $B
done
run long16_f16 $L16 --kv-cache f16
run long16_f32 $L16
run long4_f16 $L4 --kv-cache f16
run long4_f32 $L4
run mtp_f16 $M --kv-cache f16
run mtp_f32 $M
ts done
