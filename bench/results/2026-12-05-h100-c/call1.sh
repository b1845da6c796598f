# Nineteenth session, first device call: constrained decoding with MTP speculation at the 27B
# shapes. The synthetic checkpoint's MTP head is random, so its drafts are rarely accepted: what
# these runs measure is the cost of a speculative iteration under a constraint (two masks per
# iteration, the heads after them) against the unconstrained iteration and the plain constrained
# step, in the same call. `QWGPU_MTP_BODY_AHEAD=0` waits for the masks before the whole iteration
# (no body submitted ahead). Binary: qwgpu (--no-default-features) of the session's tree.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
ts() { echo "[$(date +%T)] $*"; }
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader
ts synth; $C/qwgpu synth --out /tmp/m27 --tokenizer tests/fixtures/qwen3.6-tokenizer > /tmp/synth.log 2>&1 || tail -5 /tmp/synth.log
sum() { python3 -c "
import json,sys
j=json.load(open(sys.argv[1])); t=j['timings']; n=len(j['tokens']); tps=t['decode_tokens_per_s']
m=j.get('mtp') or {}; d=m.get('drafted',0); a=m.get('accepted',0)
dec=(n-1)/tps if tps else 0
it=(1e3*dec/d) if d else 0
print(n,'tokens',j['finish_reason'],'decode',round(tps,2),'tok/s', 'ttft',round(t.get('ttft_s',0),3), ('drafted %d accepted %d, %.3f ms per iteration, at a=0.8: %.1f tok/s' % (d,a,it,1800/it)) if d else '')
" $1 2>/dev/null || tail -3 ${1%.json}.err; }
g() { n=$1; shift; ts "$n"; env "$@" > $OUT/$n.json 2>$OUT/$n.err; sum $OUT/$n.json; }
G="timeout 120 $C/qwgpu generate --model /tmp/m27 --raw --max-tokens 256 --json"
R='[a-z]{1,12}( [a-z]{1,12}){0,400}'
S=bench/results/2026-12-05-h100/schema.json
for r in 1 2; do
g free_off_$r $G --mtp off --ignore-eos "A sentence:"
g free_on_$r $G --mtp on --ignore-eos "A sentence:"
g regex_off_$r $G --mtp off --regex "$R" "A sentence:"
g regex_on_$r $G --mtp on --regex "$R" "A sentence:"
g regex_on_noahead_$r QWGPU_MTP_BODY_AHEAD=0 $G --mtp on --regex "$R" "A sentence:"
g schema_off_$r $G --mtp off --json-schema $S "A record:"
g schema_on_$r $G --mtp on --json-schema $S "A record:"
done
ts done
