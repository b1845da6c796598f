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
S=bench/results/2026-12-05-gpu-c/schema.json
for r in 1 2; do
g js_pairs_$r qwgpu3 --json-schema $S
g js_steps_$r qwgpu3 --json-schema $S --logprobs 0
g js_old_$r qwgpu --json-schema $S
done
ts done
