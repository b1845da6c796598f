# Eighteenth session, first device call: the Gated-DeltaNet recurrence's prefetch workgroups
# (QWGPU_PREFETCH=N[,MB]: N workgroups beside the 48 heads' read out_proj's weights, and MB
# megabytes of gate|up's first rows, into L2 while the recurrence runs) against none, plain and
# MTP at forced 0.8 in the same runs, alternating; a dispatch profile with and without; then the
# model tests against mlx-lm on this card (the seventeenth session's call2.sh).
# Carries .gl and .carry/{bins,tests}.tar.xz (qwgpu --no-default-features; model_vs_mlx).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; tar xJf .carry/tests.tar.xz -C /tmp/c; C=/tmp/c
ts() { echo "[$(date +%T)] $*"; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j.get('mtp_decode'); print('plain', round(j['decode_tokens_per_s']['p50'],2), [round(x,2) for x in j['decode_tokens_per_s'].get('trials',[])] if isinstance(j['decode_tokens_per_s'],dict) else '', '' if not m else ('mtp', round(m['decode_tokens_per_s']['p50'],2), [round(x,2) for x in m.get('decode_tokens_per_s_trials',[])], 'speedup', round(m['speedup_over_plain'],3), m.get('measured_ms')))" $1 2>/dev/null || { echo failed; tail -3 ${1%.json}.err; }; }
run() { n=$1; shift; ts "$n"; env "$@" > $OUT/$n.json 2>$OUT/$n.err; m $OUT/$n.json; }
B="timeout 70 $C/qwgpu bench --model /tmp/m27 --json --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8"
run none QWGPU_PREFETCH=0 $B
run pf132 QWGPU_PREFETCH=132 $B
run pf264 QWGPU_PREFETCH=264 $B
run pf84 QWGPU_PREFETCH=84 $B
run pf132_16 QWGPU_PREFETCH=132,16 $B
run none_2 QWGPU_PREFETCH=0 $B
run pf132_2 QWGPU_PREFETCH=132 $B
table() { python3 - "$1" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
for name, p in sorted(j.get("dispatch_profile", {}).items()):
    total = p["total_ms"] * 1e3
    print(f"{name}: {total / 1e3:.3f} ms")
    for kind, k in sorted(p["by_kind"].items(), key=lambda kv: -kv[1]["us"])[:8]:
        print(f"  {kind:56s} {k['dispatches']:4d} {k['us']:8.1f} us")
PY
}
P="timeout 60 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 64 --trials 1 --warmup 1 --profile"
ts prof_none; QWGPU_PREFETCH=0 $P > $OUT/prof_none.json 2>$OUT/prof_none.err; table $OUT/prof_none.json
ts prof_pf132; QWGPU_PREFETCH=132 $P > $OUT/prof_pf132.json 2>$OUT/prof_pf132.err; table $OUT/prof_pf132.json
rm -rf /tmp/m27
ts model_vs_mlx; QWGPU_FIXTURES=$PWD/tests/fixtures/models timeout 120 $C/model_vs_mlx --test-threads 4 > $OUT/model_vs_mlx.txt 2>&1; echo rc=$?; grep -a -E "^test |test result|panicked" $OUT/model_vs_mlx.txt | head -30
ts done
