# The grouped split pass's block max by a subgroup reduction over its 32 score threads
# (ATT_SGMAX, default where subgroups of 32..256 lanes exist) against the one-thread loop
# (QWGPU_ATTN_SGMAX=0): the attention kernel tests on the H200 first (the subgroup form only
# runs on such devices), then the split pass alone and decode after 16000 tokens; and the
# grouped form from 2048 keys (QWGPU_ATTN_GROUP_KEYS=2048) against the default 4096 after 2048-
# and 3072-token prompts.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
ts "kernels_attention tests"; (cd tests && timeout 150 $C/ka --test-threads 4 > $R/tests.txt 2>&1); echo "rc $?"; grep -E "^test |test result" $R/tests.txt; save
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
brk() { n=$1; pos=$2; shift 2; ts "breakdown $n pos $pos"; env "$@" timeout 60 $C/lab layer --breakdown --reps 50 --pos $pos > $R/layers_${n}_$pos.jsonl 2>&1; grep '"bench\|"part' $R/layers_${n}_$pos.jsonl | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j.get('bench', j.get('part'))[:70]:70s} {j['us']:7.1f}\")" | grep "full_attention T=" | grep "attention\.\|attention  " ; save; }
brk sgmax 16000 QWGPU_X=1
brk loop 16000 QWGPU_ATTN_SGMAX=0
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j.get('mtp_decode'); print('plain', round(j['decode_tokens_per_s']['p50'],2), 'ttft', round(j['ttft_s']['p50'] if isinstance(j['ttft_s'],dict) else j['ttft_s'],3), '' if not m else ('mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3)))" $1 2>/dev/null || echo failed; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>$R/$n.err; m $R/$n.json; save; }
L16="timeout 80 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 16000 --gen-tokens 256 --max-context 16384 --trials 1 --warmup 1"
run long16_sgmax QWGPU_X=1 $L16
run long16_loop QWGPU_ATTN_SGMAX=0 $L16
for P in 2048 3072; do
  L="timeout 60 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens $P --gen-tokens 256 --trials 2 --warmup 1"
  run long${P}_gk4096 QWGPU_X=1 $L
  run long${P}_gk2048 QWGPU_ATTN_GROUP_KEYS=2048 $L
done
ts done
