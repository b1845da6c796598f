# The f32-x decode path (what Metal and WebGPU run: QWGPU_MATMUL_XQ=0) next to the integer
# planes on the H200: kernel lab at 1 and 2 tokens, then plain + MTP at forced 0.8 (plain in the
# same run) for each. One device call; results in $OUT.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
ts "lab warm-up (discarded)"; timeout 60 $C/lab matmul --reps 10 --shapes gate_up > /dev/null 2>&1
for x in 1 0; do
  ts "lab xq=$x"; QWGPU_MATMUL_XQ=$x timeout 100 $C/lab matmul --reps 50 --shapes gate_up,down,in_proj,out_proj > $R/lab_xq$x.jsonl 2>&1; grep '"matmul q4' $R/lab_xq$x.jsonl | grep -v 'xnorm\|xout' | cut -c1-100
done
save
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', round(j['decode_tokens_per_s']['p50'],2), 'mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3), m.get('measured_ms'), 'break-even', m.get('break_even_acceptance'))" $1 2>/dev/null || echo failed; }
for x in 0 1 0; do
  ts "mtp auto 0.8 xq=$x"; QWGPU_MATMUL_XQ=$x timeout 120 $C/qwgpu bench --model /tmp/m27 --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_xq${x}_$RANDOM.json 2>/dev/null; m $(ls -t $R/mtp_xq${x}_*.json | head -1)
  save
done
ts done
