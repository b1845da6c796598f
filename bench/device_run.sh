# `one` and `run` for the device-machine call scripts (sourced after bench/device_setup.sh, which
# sets $C): `one NAME "VAR=value ..." bench-args...` runs `qwgpu bench --json` on the synthetic
# 27B in /tmp/m27 with those knobs, keeps its JSON in /tmp/r/NAME.json and prints a summary line
# (plain decode, TTFT, dispatches, CPU time; MTP rate and speedup where it ran); `run` is `one`
# unless DEADLINE seconds (480 by default) have passed since T0, so a call stops starting runs
# before its limit.
mkdir -p /tmp/r
one() {
  local name=$1 knobs=$2; shift 2
  env $knobs timeout 300 $C/qwgpu bench --model /tmp/m27 --json "$@" > /tmp/r/$name.json 2> /tmp/r/$name.err
  python3 - "/tmp/r/$name.json" "$name" <<'PY'
import json, sys
try:
    j = json.load(open(sys.argv[1]))
except Exception as e:
    print(sys.argv[2], "failed", e); sys.exit()
d = j.get("decode_tokens_per_s", {})
m = j.get("mtp_decode") or {}
line = f"{sys.argv[2]:16s} plain {d.get('p50'):.2f} tok/s ({d.get('min'):.2f}-{d.get('max'):.2f}) TTFT {j.get('ttft_s', {}).get('p50')} disp {j.get('dispatches_per_token')}+{j.get('prefetch_dispatches_per_token')} cpu {j.get('cpu_ms_per_token')}"
if m:
    md = m.get("decode_tokens_per_s", {})
    line += f"  mtp {md.get('p50'):.2f} ({md.get('min'):.2f}-{md.get('max'):.2f}) x{m.get('speedup_over_plain'):.3f} acc {m.get('mtp', {}).get('acceptance')}"
print(line)
PY
}
run() { [ $(( $(date +%s) - T0 )) -lt ${DEADLINE:-480} ] && one "$@"; true; }
