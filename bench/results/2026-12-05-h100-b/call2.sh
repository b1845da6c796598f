# Eighteenth session, second device call: the decode tiles' knobs (tuned on the H200) swept on
# the H100, plain and MTP at forced 0.8 in each run (64 + 256 tokens, 3 trials), against the
# defaults at the start and the end. Same binary as call1.sh.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
ts() { echo "[$(date +%T)] $*"; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', round(j['decode_tokens_per_s']['p50'],2), 'mtp', round(m['decode_tokens_per_s']['p50'],2), [round(x,2) for x in m.get('decode_tokens_per_s_trials',[])], 'x', round(m['speedup_over_plain'],3), {k: round(v,3) for k,v in (m.get('measured_ms') or {}).items()})" $1 2>/dev/null || { echo failed; tail -3 ${1%.json}.err; }; }
run() { n=$1; shift; ts "$n $*"; env "$@" timeout 60 $C/qwgpu bench --model /tmp/m27 --json --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 > $OUT/$n.json 2>$OUT/$n.err; m $OUT/$n.json; }
run none QWGPU_PREFETCH=0
run ks121 QWGPU_XQ_KSPLIT=1,2,1
run ks112 QWGPU_XQ_KSPLIT=1,1,2
run long44 QWGPU_XQ_LONG_ROWS=4,4
run long22 QWGPU_XQ_LONG_ROWS=2,2
run mid0 QWGPU_XQ_MID_VERIFY=0
run mid24 QWGPU_XQ_MID_VERIFY=2,4
run big24 QWGPU_XQ_VERIFY_BIG=2,4
run few24 QWGPU_XQ_VERIFY_FEW=2,4
run gfv65 QWGPU_XQ_GRID_FRAC_VERIFY=0.65,2000
run gfv85 QWGPU_XQ_GRID_FRAC_VERIFY=0.85,2000
run nlv1 QWGPU_XQ_NORM_LATE_VERIFY=1
run unr211 QWGPU_XQ_UNROLL=2,1,1
run none_2 QWGPU_PREFETCH=0
ts done
