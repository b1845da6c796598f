# (2) A relative grid cap for the 2-token (verify) tile: QWGPU_XQ_GRID_FRAC_VERIFY=F,2000 (matrices
# of at least 2000 tiles of 16 rows: gate|up 2176 and lm_head 15520) for several F, against none
# and against the absolute 1632 on gate|up alone of call 1; MTP at forced 0.8, alternating. And
# call 1's lookahead loads again (QWGPU_XQ_PIPE): call 1's binary had been built without the
# shader half of it (its numbers measure nothing), this one with it.
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
print('plain', round(j['decode_tokens_per_s']['p50'],2), j.get('verify_grid'), '' if not m else ('mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3), m.get('measured_ms')))" $1 2>/dev/null || { echo failed; tail -3 ${1%.json}.err; }; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>$R/$n.err; m $R/$n.json; save; }
M="timeout 90 $C/qwgpu bench --model /tmp/m27 --json --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8"
B="timeout 90 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1"
for r in 1 2; do
  run plain_p0_$r $B
  run plain_p1_$r QWGPU_XQ_PIPE=1,0 $B
  run plain_p2_$r QWGPU_XQ_PIPE=2,0 $B
done
run mtp_p01 QWGPU_XQ_PIPE=0,1 $M
run mtp_p02 QWGPU_XQ_PIPE=0,2 $M
run none_1 $M
run f75_1 QWGPU_XQ_GRID_FRAC_VERIFY=0.75,2000 $M
run gu1632 QWGPU_XQ_GRID=0,1632 QWGPU_XQ_GRID_ONLY=gate_proj $M
run f85 QWGPU_XQ_GRID_FRAC_VERIFY=0.85,2000 $M
run f65 QWGPU_XQ_GRID_FRAC_VERIFY=0.65,2000 $M
run f60 QWGPU_XQ_GRID_FRAC_VERIFY=0.6,2000 $M
run f50 QWGPU_XQ_GRID_FRAC_VERIFY=0.5,2000 $M
run none_2 $M
run f75_2 QWGPU_XQ_GRID_FRAC_VERIFY=0.75,2000 $M
ts done
