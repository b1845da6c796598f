# (1) Loads one block ahead in the integer-plane kernel (QWGPU_XQ_PIPE=A,B: 1 = weights and
# scales, 2 = x planes too; A for the 1-token tile, B for the 2-token tile), plain decode
# alternating with the default twice; MTP at forced 0.8 with the verify tile's levels; a
# 2-token grid cap on gate|up alone (QWGPU_XQ_GRID=0,N QWGPU_XQ_GRID_ONLY=gate_proj) against the
# same selection without it.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j.get('mtp_decode')
print('plain', round(j['decode_tokens_per_s']['p50'],2), 'ttft', round(j['ttft_s']['p50'] if isinstance(j['ttft_s'],dict) else j['ttft_s'],3), '' if not m else ('mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3), m.get('measured_ms')))" $1 2>/dev/null || { echo failed; tail -3 ${1%.json}.err; }; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>$R/$n.err; m $R/$n.json; save; }
B="timeout 90 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1"
M="timeout 90 $C/qwgpu bench --model /tmp/m27 --json --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8"
for r in 1 2; do
  run plain_p0_$r $B
  run plain_p1_$r QWGPU_XQ_PIPE=1,0 $B
  run plain_p2_$r QWGPU_XQ_PIPE=2,0 $B
done
run mtp_p0 $M
run mtp_p01 QWGPU_XQ_PIPE=0,1 $M
run mtp_p02 QWGPU_XQ_PIPE=0,2 $M
run mtp_only_gu QWGPU_XQ_GRID_ONLY=gate_proj $M
run mtp_gu_v1848 QWGPU_XQ_GRID=0,1848 QWGPU_XQ_GRID_ONLY=gate_proj $M
run mtp_gu_v1632 QWGPU_XQ_GRID=0,1632 QWGPU_XQ_GRID_ONLY=gate_proj $M
ts lab
QWGPU_XQ_PIPE=0,0 timeout 60 $C/lab matmul --shapes gate_up,down,in_proj,lm_head > $R/lab_p0.txt 2>&1; save
QWGPU_XQ_PIPE=1,1 timeout 60 $C/lab matmul --shapes gate_up,down,in_proj,lm_head > $R/lab_p1.txt 2>&1; save
QWGPU_XQ_PIPE=2,2 timeout 60 $C/lab matmul --shapes gate_up,down,in_proj,lm_head > $R/lab_p2.txt 2>&1; save
grep -h -i "gate\|down\|in_proj\|lm_head" $R/lab_p*.txt | head -40
ts done
