# Seventeenth session, first device call: the sixteenth session's planned call
# (bench/results/2026-12-05-h200-b/call1.sh: mmchain 8 and 1 phases, attention split 16/8 chunks,
# the committed tree's plain and MTP numbers, constrained decoding at the 27B shapes), then the
# constrained decoding runs again with `qwgpu2`: the tree with each step's body submitted ahead
# of its mask and the head after (Session::decode_body_ahead / decode_head), alternating; then a
# JSON schema with qwgpu3 (forced tokens fed in pairs).
set -u
bash bench/results/2026-12-05-h200-b/call1.sh
C=/tmp/c; R=/tmp/res
save() { tar czf $OUT/results.tar.gz -C $R .; }
ts() { echo "[$(date +%T)] $*"; }
g() { n=$1; b=$2; shift 2; ts "$n"; timeout 120 $C/$b generate --model /tmp/m27 --raw --mtp off --max-tokens 256 --json "$@" "A sentence:" > $R/$n.json 2>$R/$n.err; python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); t=j['timings']; print(len(j['tokens']), 'tokens', j['finish_reason'], 'decode', round(t['decode_tokens_per_s'],2), 'tok/s')" $R/$n.json 2>/dev/null || tail -3 $R/$n.err; save; }
g gen_regex_ahead qwgpu2 --regex '[a-z]{1,12}( [a-z]{1,12}){0,400}'
g gen_free_2 qwgpu --ignore-eos
g gen_regex_2 qwgpu --regex '[a-z]{1,12}( [a-z]{1,12}){0,400}'
g gen_regex_ahead_2 qwgpu2 --regex '[a-z]{1,12}( [a-z]{1,12}){0,400}'
# A JSON schema (8 objects of fixed keys): qwgpu3 = the tree that also feeds the schema's forced
# tokens two per forward without heads (greedy without logprobs); `--logprobs 0` keeps it step by
# step (same tokens); qwgpu = the committed tree before both changes.
# On an H100, the H200's relative grid cap (not applied there by default: the table names the H200).
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H100; then
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j.get('mtp_decode'); print('plain', round(j['decode_tokens_per_s']['p50'],2), '' if not m else ('mtp', round(m['decode_tokens_per_s']['p50'],2), 'speedup', round(m['speedup_over_plain'],3)))" $1 2>/dev/null || { echo failed; tail -3 ${1%.json}.err; }; }
run() { n=$1; shift; ts "$n"; env "$@" > $R/$n.json 2>$R/$n.err; m $R/$n.json; save; }
run plain_cap QWGPU_XQ_GRID_FRAC=0.75,2000 timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1
run mtp08_cap QWGPU_XQ_GRID_FRAC=0.75,2000 QWGPU_XQ_GRID_FRAC_VERIFY=0.75,2000 timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8
run plain_again timeout 100 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 2 --warmup 1
fi
S=bench/results/2026-12-05-h100/schema.json
for r in 1 2; do
g js_pairs_$r qwgpu3 --json-schema $S
g js_steps_$r qwgpu3 --json-schema $S --logprobs 0
g js_old_$r qwgpu --json-schema $S
done
ts done
