# The integer-plane matmul's variants on the GPU machine (one device call, about 6 minutes):
# per-word f32 scaling (the default) against block sums in i32 (QWGPU_XQ_BLOCK_SUM=1), blocks per
# lane iteration (QWGPU_XQ_UNROLL=A,B), groups per row (QWGPU_XQ_KSPLIT=A,B), row tiles for the
# long down projection (QWGPU_XQ_TILE),
# then end to end (synthetic 27B, 1024 + 512) and MTP at 0.8 forced acceptance.
# Carries: .gl (the Vulkan loader debs) and .carry/bins.tar.xz (stripped `qwgpu` and the `lab`
# bench binary, built with `cargo build --release -p native-cli --no-default-features` and
# `cargo bench -p engine --bench lab --no-run`). Results go to $OUT.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1 &
lab() { name=$1; shift; env "$@" $C/lab matmul --reps 100 --shapes ${SHAPES:-gate_up,down,out_proj,in_proj,lm_head} > $OUT/lab_$name.jsonl 2>&1
  echo "== lab $name ($*)"; grep '"bench' $OUT/lab_$name.jsonl | grep ' xq ' | python3 -c "
import json,sys
for l in sys.stdin:
    j=json.loads(l); print(f\"{j['bench']:58s} {j['us']:7.1f} {j['roofline_pct']:5.1f}%\")"; }
lab word QWGPU_XQ_BLOCK_SUM=0
lab block QWGPU_XQ_BLOCK_SUM=1
lab word_u22 QWGPU_XQ_UNROLL=2,2
lab block_u22 QWGPU_XQ_BLOCK_SUM=1 QWGPU_XQ_UNROLL=2,2
lab word_u44 QWGPU_XQ_UNROLL=4,4
lab word_ks22 QWGPU_XQ_KSPLIT=2,2
lab word_ks24 QWGPU_XQ_KSPLIT=2,4
# The long down rows: more rows per workgroup (less x re-read per weight byte) with the row split
# keeping the threads per row.
SHAPES=down lab down_t411 QWGPU_XQ_TILE=4,1,1
SHAPES=down lab down_t444_ks2 QWGPU_XQ_TILE=4,4,4 QWGPU_XQ_KSPLIT=1,2
SHAPES=down lab down_t844_ks2 QWGPU_XQ_TILE=8,4,4 QWGPU_XQ_KSPLIT=1,2
SHAPES=down lab down_t422_ks4 QWGPU_XQ_TILE=4,2,2 QWGPU_XQ_KSPLIT=1,4
SHAPES=down lab down_t422_u4 QWGPU_XQ_TILE=4,2,2 QWGPU_XQ_UNROLL=1,4
wait
g() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); print({k:v for k,v in j.items() if k in ('dispatches_per_token','cpu_ms_per_token','ttft_s','decode_tokens_per_s','tpot_ms','roofline','gpu_memory_bytes')})" $1; }
e2e() { name=$1; shift; echo "== $name ($*), 1024 + 512, 1 + 5"; env "$@" $C/qwgpu bench --model /tmp/m27 --mtp off --prompt-tokens 1024 --gen-tokens 512 --warmup 1 --trials 5 --roofline-gbps 4500 --json > $OUT/e2e_$name.json 2>/dev/null; g $OUT/e2e_$name.json; }
e2e word QWGPU_XQ_BLOCK_SUM=0
e2e block QWGPU_XQ_BLOCK_SUM=1
e2e word_u22 QWGPU_XQ_UNROLL=2,2
e2e word_ks12 QWGPU_XQ_KSPLIT=1,2
m() { python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', j['decode_tokens_per_s']['p50'], 'mtp', m['decode_tokens_per_s']['p50'], 'speedup', m['speedup_over_plain'], m['mtp'], j.get('profile_ms'), {k:v for k,v in m.items() if k in ('policy','measured_ms','break_even_acceptance')})" $1; }
echo "== mtp on 0.8"; $C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --profile --force-accept 0.8 --json > $OUT/mtp_0.8.json 2>/dev/null; m $OUT/mtp_0.8.json
