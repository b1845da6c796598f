# The two-plane format of the integer planes (QWGPU_XQ_NARROW=1: x rounded to 2^-14 of its word's
# max, two packed dot products per code word and plane pair instead of three) against the default:
# layer breakdown at 1 and 2 tokens, end to end (1024 + 256, 1 + 3, alternating), MTP at forced
# 0.8. Results written to $OUT as they come.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
R=$OUT; mkdir -p $R
t0=$(date +%s); ts() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
[ -f /tmp/m27/config.json ] || { $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 & }
show() { grep '"bench\|"part' $1 | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j.get('bench', j.get('part'))[:90]:90s} {j['us']:7.1f}\")"; }
for v in wide narrow; do e="QWGPU_XQ_NARROW=0"; [ $v = narrow ] && e="QWGPU_XQ_NARROW=1"
  ts "layers $v"; env $e $C/lab layer --breakdown --reps 100 --pos 1024 > $R/layers_$v.jsonl 2>&1; show $R/layers_$v.jsonl
done
wait
tp() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print(j['decode_tokens_per_s']['p50'], 'tok/s; ttft', j.get('ttft_s'))" $1 2>/dev/null || echo 0; }
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'])" $1 2>/dev/null || echo failed; }
for v in wide narrow wide2 narrow2; do e="QWGPU_XQ_NARROW=0"; case $v in narrow*) e="QWGPU_XQ_NARROW=1";; esac
  ts "e2e $v"; env $e $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 256 --warmup 1 --trials 3 --json > $R/e2e_$v.json 2>$R/e2e_$v.err; tp $R/e2e_$v.json
done
for v in wide narrow; do e="QWGPU_XQ_NARROW=0"; [ $v = narrow ] && e="QWGPU_XQ_NARROW=1"
  ts "mtp 0.8 $v"; env $e $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 --json > $R/mtp_$v.json 2>$R/mtp_$v.err; m $R/mtp_$v.json
done
ts done
