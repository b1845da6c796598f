# (Not run: the session's device time was spent; the next session's first call.)
# Second call: the committed tree's MTP at forced 0.8 with the H100's new default (the verify
# tile's grid cap), then the model tests against mlx-lm on this card (tests/model_vs_mlx.rs built
# with `cargo test --release -p qwgpu-tests --test model_vs_mlx --no-run`, carried stripped).
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; tar xJf .carry/tests.tar.xz -C /tmp/c; C=/tmp/c
ts() { echo "[$(date +%T)] $*"; }
nvidia-smi --query-gpu=name --format=csv,noheader
ts synth; $C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
ts mtp08; timeout 60 $C/qwgpu bench --model /tmp/m27 --json --mtp auto --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1 --force-accept 0.8 > $OUT/mtp08.json 2>$OUT/mtp08.err
python3 -c "
import json,sys; j=json.load(open(sys.argv[1])); m=j['mtp_decode']; print('plain', round(j['decode_tokens_per_s']['p50'],2), 'mtp', round(m['decode_tokens_per_s']['p50'],2), [round(x,2) for x in m['decode_tokens_per_s_trials']], 'speedup', round(m['speedup_over_plain'],3), m.get('measured_ms'), j.get('verify_grid'))" $OUT/mtp08.json || tail -3 $OUT/mtp08.err
rm -rf /tmp/m27
ts model_vs_mlx; QWGPU_FIXTURES=$PWD/tests/fixtures/models timeout 150 $C/model_vs_mlx --test-threads 4 --nocapture > $OUT/model_vs_mlx.txt 2>&1; echo rc=$?; grep -a -E "^test |test result|panicked" $OUT/model_vs_mlx.txt
ts done
