# The committed tree: TTFT of a 4000-token prompt with 1024- and 2048-token chunks and 1 / 4
# query rows per attention workgroup; MTP at forced 0.8. Results in $OUT/results.tar.gz.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=/tmp/res; rm -rf $R; mkdir -p $R
t0=$(date +%s); ts() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
save() { tar czf $OUT/results.tar.gz -C $R .; }
[ -f /tmp/m27/config.json ] || $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
tt() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print('ttft', j['ttft_s']['p50'], 'prefill', j['prefill_tokens_per_s'], 'decode', j['decode_tokens_per_s']['p50'], 'mem', j['gpu_memory_bytes'])" $1 2>/dev/null || echo failed; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'])" $1 2>/dev/null || echo failed; }
for c in 1024 2048; do for A in 1 4; do
  ts "ttft 4000, chunk $c, attention rows $A"; QWGPU_ATTN_ROWS=$A $C/qwgpu bench --model /tmp/m27 --mtp off --prefill-chunk $c --prompt-tokens 4000 --gen-tokens 16 --warmup 1 --trials 3 --json > $R/ttft4000_c${c}_a$A.json 2>/dev/null; tt $R/ttft4000_c${c}_a$A.json
done; done
save
ts "mtp 0.8"; $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_0.8.json 2>/dev/null; m $R/mtp_0.8.json
save
ts done
