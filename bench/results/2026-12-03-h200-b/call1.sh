# The Gated-DeltaNet recurrence's norm trees in registers and k|q staged in pairs
# (QWGPU_GDN_REG_TREE, default on) and the shuffle reduction on the GPU (QWGPU_GDN_SUBGROUPS=1):
# layer breakdown at 1 and 2 tokens, end to end (1024 + 256, 1 + 3), MTP at forced 0.8.
# Results in $OUT/results.tar.gz.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
t0=$(date +%s); ts() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
save() { tar czf $OUT/results.tar.gz -C $R .; }
[ -f /tmp/m27/config.json ] || $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
show() { grep -E 'recurrence|"bench' $1 | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); k=j.get('bench') or j.get('part'); print(f\"{k[:60]:60s} {j['us']:7.1f}\")"; }
tp() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print(j['decode_tokens_per_s']['p50'], 'tok/s')" $1 2>/dev/null || echo failed; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'])" $1 2>/dev/null || echo failed; }
cfg() { case $1 in old) echo QWGPU_GDN_REG_TREE=0;; new) echo QWGPU_GDN_REG_TREE=1;; sg) echo QWGPU_GDN_SUBGROUPS=1;; oldsg) echo QWGPU_GDN_REG_TREE=0 QWGPU_GDN_SUBGROUPS=1;; esac; }
for v in old new sg oldsg; do
  ts "layers $v"; env $(cfg $v) $C/lab layer --breakdown --reps 100 --pos 1024 > $R/layers_$v.jsonl 2>&1; show $R/layers_$v.jsonl
done
save
for v in old new sg old new sg; do
  ts "e2e $v"; env $(cfg $v) $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --json > $R/e2e_$v.json 2>/dev/null; tp $R/e2e_$v.json
done
save
for v in old new sg new; do
  ts "mtp 0.8 $v"; env $(cfg $v) $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_$v.json 2>/dev/null; m $R/mtp_$v.json
  save
done
ts done
