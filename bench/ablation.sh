# What each kind of kernel costs inside a real decode step, by leaving it out (timing ablation).
# `QWGPU_LAB_SKIP=a,b` (benchmarks only) drops from every recorded step the dispatches whose label
# contains one of the strings; the tokens are then garbage by design, the timings are what the
# step costs without those kernels (nothing in these kernels depends on the values it reads).
# Unlike `bench/profile_step.sh` (timestamps between dispatches, which keep them apart) this keeps
# the step's real overlap of launch and drain, so plain tok/s without X against with X is the
# most any fusion of X into its neighbours could gain.
# One device call, ≈ 6 minutes with the synthetic 27B to write. Carries .gl and .carry/bins.tar.xz
# (see bench/profile_step.sh). Results go to $OUT.
set -u
. bench/device_setup.sh
one() {  # name, skip list, extra bench args...
  local name=$1 skip=$2; shift 2
  QWGPU_LAB_SKIP="$skip" timeout 150 $C/qwgpu bench --model /tmp/m27 --json "$@" > $OUT/$name.json 2> $OUT/$name.err
  python3 - "$OUT/$name.json" "$name" "$skip" <<'PY'
import json, sys
try:
    j = json.load(open(sys.argv[1]))
except Exception as e:
    print(sys.argv[2], "failed", e); sys.exit()
d = j.get("decode_tokens_per_s", {}).get("p50")
m = (j.get("mtp_decode") or {}).get("decode_tokens_per_s")
print(f"{sys.argv[2]:14s} skip={sys.argv[3]!r:60s} decode {d:.2f} tok/s ({1000/d:.3f} ms)" + (f"  mtp {m}" if m else ""))
PY
}
P="--mtp off --prompt-tokens 1024 --gen-tokens 128 --trials 3 --warmup 1"
ts plain
one base "" $P
one no_rec gdn_recurrence $P
one no_prep attn_prep $P
one no_attn attention,attn_prep $P
one no_xq xquant $P
one no_other gdn_recurrence,attention,attn_prep,xquant $P
one no_inproj in_proj_qkv $P
one no_outproj linear_attn.out_proj $P
one no_gateup gate_proj $P
one no_down down_proj $P
one no_qkv q_proj+k_proj $P
one no_oproj self_attn.o_proj $P
one no_lmhead lm_head $P
one base2 "" $P
ts mtp
M="--mtp on --force-accept 0.8 --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1"
one mtp_base "" $M
one mtp_no_rec gdn_recurrence $M
one mtp_no_other gdn_recurrence,attention,attn_prep,xquant $M
ts done
