# Thirty-second session, first device call: cache prefetches. The fused Gated-DeltaNet
# recurrence with extra workgroups that read out_proj's weights into the cache while the heads
# run, attention's prep pass reading o_proj's the same way (`QWGPU_PREFETCH_WGS=N`,
# prefetch.wgsl), and a prefetch dispatch of the next matrix's first MB after each decode matmul
# (`QWGPU_TAIL_PREFETCH=MB`, cache_prefetch.wgsl), against none, in alternating runs. Carries .gl and
# .carry/bins.tar.xz (release `qwgpu`, --no-default-features, this tree).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
ts() { echo "[$(date +%T)] $*"; }
[ -f /tmp/m27/config.json ] || { ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1; }
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv,noheader
mkdir -p /tmp/r
one() {  # name, "VAR=value ..." (the knobs), bench args...
  local name=$1 knobs=$2; shift 2
  env $knobs timeout 200 $C/qwgpu bench --model /tmp/m27 --json "$@" > /tmp/r/$name.json 2> /tmp/r/$name.err
  python3 - "/tmp/r/$name.json" "$name" <<'PY'
import json, sys
try:
    j = json.load(open(sys.argv[1]))
except Exception as e:
    print(sys.argv[2], "failed", e); sys.exit()
d = j.get("decode_tokens_per_s", {})
m = j.get("mtp_decode") or {}
line = f"{sys.argv[2]:16s} plain {d.get('p50'):.2f} tok/s ({d.get('min'):.2f}-{d.get('max'):.2f}) TTFT {j.get('ttft_s', {}).get('p50')} disp {j.get('dispatches_per_token')}"
if m:
    md = m.get("decode_tokens_per_s", {})
    line += f"  mtp {md.get('p50'):.2f} ({md.get('min'):.2f}-{md.get('max'):.2f}) x{m.get('speedup_over_plain'):.3f} acc {m.get('mtp', {}).get('acceptance')}"
print(line)
PY
}
P="--mtp off --prompt-tokens 1024 --gen-tokens 128 --trials 3 --warmup 1"
M="--mtp on --force-accept 0.8 --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1"
for r in 1 2; do
  one plain_off_$r "QWGPU_PREFETCH_WGS=0" $P
  one plain_pf168_$r "QWGPU_PREFETCH_WGS=168" $P
  one plain_pf168_t4_$r "QWGPU_PREFETCH_WGS=168 QWGPU_TAIL_PREFETCH=4" $P
  one plain_pf168_t12_$r "QWGPU_PREFETCH_WGS=168 QWGPU_TAIL_PREFETCH=12" $P
done
for r in 1 2; do
  one mtp_off_$r "QWGPU_PREFETCH_WGS=0" $M
  one mtp_pf168_t8_$r "QWGPU_PREFETCH_WGS=168 QWGPU_TAIL_PREFETCH=8" $M
done
# What out_proj and o_proj cost with and without the prefetch (timing only: garbage tokens).
for pf in 0 168; do
  one skip_out_pf$pf "QWGPU_PREFETCH_WGS=$pf QWGPU_LAB_SKIP=linear_attn.out_proj" $P
  one skip_o_pf$pf "QWGPU_PREFETCH_WGS=$pf QWGPU_LAB_SKIP=self_attn.o_proj" $P
done
cp /tmp/r/plain_*.json /tmp/r/mtp_*.json $OUT/
ts done
