# The deferred RMSNorm's squares summed after the products (QWGPU_XQ_NORM_LATE=1) against inside
# their loop (the default), on the GPU machine (one device call, about 4 minutes): the kernel lab
# with each fused epilogue alone (xq / xnorm / xout / fused), then plain decoding and MTP at
# forced 0.8 (plain measured in the same run), alternating, twice each.
# Carries: .gl (the Vulkan loader debs) and .carry/bins.tar.xz (stripped `qwgpu` and the `lab`
# bench binary, built with `cargo build --release -p native-cli --no-default-features` and
# `cargo bench -p engine --bench lab --no-run`). Results go to $OUT/results.tar.gz.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C $R .; }
[ -f /tmp/m27/config.json ] || $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 &
for L in 0 1; do
  QWGPU_XQ_NORM_LATE=$L timeout 120 $C/lab matmul --reps 50 --shapes gate_up,down,in_proj,qkv > $R/lab_late$L.jsonl 2>&1
  grep '"matmul q4 xq' $R/lab_late$L.jsonl | sed "s/^/late=$L /" | cut -c1-100
done
save
wait
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'])" $1 2>/dev/null || echo failed; }
for i in 1 2; do for L in 0 1; do
  echo "== late=$L run $i"; QWGPU_XQ_NORM_LATE=$L $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_late${L}_$i.json 2>/dev/null; m $R/mtp_late${L}_$i.json
  save
done; done
