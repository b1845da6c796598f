# The committed tree (two-plane format): kernel lab for the decode matmuls at 1 and 2 tokens, the
# layer breakdown (after the checkpoint is written), and block sums in i32 on the two-plane format
# (QWGPU_XQ_BLOCK_SUM=1) end to end and with MTP at forced 0.8. Results in $OUT/results.tar.gz.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
t0=$(date +%s); ts() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
save() { tar czf $OUT/results.tar.gz -C $R .; }
[ -f /tmp/m27/config.json ] || $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
p() { grep '"bench' $1 | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j['bench'][:80]:80s} {j['us']:7.1f} {j.get('GBps',0):7.1f}\")"; }
show() { grep '"bench\|"part' $1 | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j.get('bench', j.get('part'))[:90]:90s} {j['us']:7.1f}\")"; }
ts "lab matmul"; $C/lab matmul --reps 100 > $R/lab_matmul.jsonl 2>&1; p $R/lab_matmul.jsonl; save
ts "layers"; $C/lab layer --breakdown --reps 100 --pos 1024 > $R/layers.jsonl 2>&1; show $R/layers.jsonl; save
tp() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print(j['decode_tokens_per_s']['p50'], 'tok/s')" $1 2>/dev/null || echo failed; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'])" $1 2>/dev/null || echo failed; }
for v in QWGPU_XQ_BLOCK_SUM=1 QWGPU_DEFAULT=1; do n=$(echo $v | tr '=,' '__')
  ts "e2e $v"; env $v $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --json > $R/e2e_$n.json 2>/dev/null; tp $R/e2e_$n.json
  ts "mtp 0.8 $v"; env $v $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_$n.json 2>/dev/null; m $R/mtp_$n.json
  save
done
ts done
