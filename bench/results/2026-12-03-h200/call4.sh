# Rows per lane group of the long-row down projection (QWGPU_XQ_LONG_ROWS=A,B: A in the 1-token
# tile, B in the 2-token tile; default 2,2) on the two-plane format: kernel lab for down, end to
# end (1024 + 256, 1 + 3) and MTP at forced 0.8. Results in $OUT/results.tar.gz.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
t0=$(date +%s); ts() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
save() { tar czf $OUT/results.tar.gz -C $R .; }
[ -f /tmp/m27/config.json ] || $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
p() { grep '"bench' $1 | grep ' xq' | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j['bench'][:80]:80s} {j['us']:7.1f} {j.get('GBps',0):7.1f}\")"; }
tp() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print(j['decode_tokens_per_s']['p50'], 'tok/s')" $1 2>/dev/null || echo failed; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'])" $1 2>/dev/null || echo failed; }
for v in 2,2 2,4 4,4 1,2 2,8; do n=$(echo $v | tr ',' '_')
  ts "lab down $v"; QWGPU_XQ_LONG_ROWS=$v $C/lab matmul --reps 100 --shapes down > $R/lab_down_$n.jsonl 2>&1; p $R/lab_down_$n.jsonl
done
save
for v in 2,2 2,4 4,4 1,2 2,2; do n=$(echo $v | tr ',' '_')
  ts "e2e $v"; QWGPU_XQ_LONG_ROWS=$v $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --json > $R/e2e_$n.json 2>/dev/null; tp $R/e2e_$n.json
done
save
for v in 2,4 2,2 2,8 2,4; do n=$(echo $v | tr ',' '_')
  ts "mtp 0.8 $v"; QWGPU_XQ_LONG_ROWS=$v $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_$n.json 2>/dev/null; m $R/mtp_$n.json
  save
done
ts done
