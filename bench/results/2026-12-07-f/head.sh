# Thirty-fourth session: set-up and `one` for the device calls (sourced by call*.sh). Carries .gl
# and .carry/bins.tar.xz (release `qwgpu`, --no-default-features, this tree).
set -u
T0=$(date +%s)
. bench/device_setup.sh
mkdir -p /tmp/r
one() {  # name, "VAR=value ..." (the knobs), bench args...
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
P="--mtp off --prompt-tokens 1024 --gen-tokens 128 --trials 3 --warmup 1"
E="--mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 10 --warmup 3 --roofline-gbps 4500"
M="--mtp on --force-accept 0.8 --prompt-tokens 64 --gen-tokens 256 --trials 10 --warmup 1"
# Sampled MTP (the synthetic head's drafts are random: acceptance near 0, so each iteration
# emits about one token): the next iteration's body submitted ahead or not.
S="--mtp on --temperature 0.8 --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1"
