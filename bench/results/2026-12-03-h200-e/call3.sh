# Grid-stride form of the integer-plane decode kernel (QWGPU_XQ_GRID=A,B: at most A / B
# workgroups for the 1- / 2-token tile, each taking tiles of rows w, w + G, ...): kernel lab per
# grid size, then plain + MTP at forced 0.8 (plain in the same run). One device call.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
ts "lab warm-up (discarded)"; timeout 60 $C/lab matmul --reps 10 --shapes gate_up > /dev/null 2>&1
for g in 0 264 528 792 1056 1584 2112 0; do
  ts "lab grid=$g"; QWGPU_XQ_GRID=$g timeout 60 $C/lab matmul --reps 50 --shapes gate_up,down,in_proj,out_proj,lm_head > $R/lab_grid$g.jsonl 2>&1; grep '"matmul q4 xq' $R/lab_grid$g.jsonl | grep -v 'xnorm\|xout' | python3 -c "
import json,sys
print(' '.join(f\"{json.loads(l)['bench'].split()[-2].split('.')[-1]}:{json.loads(l)['bench'].split()[-1]}{'f' if 'fused' in l else ''}={json.loads(l)['us']}\" for l in sys.stdin))"
done
save
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', round(j['decode_tokens_per_s']['p50'],2), 'mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3), m.get('measured_ms'))" $1 2>/dev/null || echo failed; }
for g in 0 ${GRIDS:-528,528 1056,1056 1584,1584} 0; do
  ts "mtp auto 0.8 grid=$g"; QWGPU_XQ_GRID=$g timeout 120 $C/qwgpu bench --model /tmp/m27 --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_grid$g.json 2>/dev/null; m $R/mtp_grid$g.json
  save
done
ts done
