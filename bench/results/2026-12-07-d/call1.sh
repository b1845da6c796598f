# Thirty-second session, first device call: the fused Gated-DeltaNet recurrence with extra
# workgroups that read out_proj's weights into the cache while the heads run (and attention's
# prep pass reading o_proj's the same way)
# (`QWGPU_PREFETCH_WGS=N`, prefetch.wgsl), against none, in alternating runs. Carries .gl and
# .carry/bins.tar.xz (release `qwgpu`, --no-default-features, this tree).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader
one() {  # name, prefetch workgroups, bench args...
  local name=$1 pf=$2; shift 2
  QWGPU_PREFETCH_WGS=$pf timeout 200 $C/qwgpu bench --model /tmp/m27 --json "$@" > $OUT/$name.json 2> /tmp/$name.err
  python3 - "$OUT/$name.json" "$name" <<'PY'
import json, sys
try:
    j = json.load(open(sys.argv[1]))
except Exception as e:
    print(sys.argv[2], "failed", e); sys.exit()
d = j.get("decode_tokens_per_s", {})
m = j.get("mtp_decode") or {}
line = f"{sys.argv[2]:12s} plain {d.get('p50'):.2f} tok/s ({d.get('min'):.2f}-{d.get('max'):.2f}) TTFT {j.get('ttft_s', {}).get('p50')}"
if m:
    md = m.get("decode_tokens_per_s", {})
    line += f"  mtp {md.get('p50'):.2f} ({md.get('min'):.2f}-{md.get('max'):.2f}) x{m.get('speedup_over_plain'):.3f} acc {m.get('mtp', {}).get('acceptance')}"
print(line)
PY
}
P="--mtp off --prompt-tokens 1024 --gen-tokens 128 --trials 3 --warmup 1"
M="--mtp on --force-accept 0.8 --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1"
for r in 1 2; do
  for pf in 0 84 168 264 400; do one plain_pf${pf}_$r $pf $P; done
done
for r in 1 2; do
  for pf in 0 168 264; do one mtp_pf${pf}_$r $pf $M; done
done
ts done
