# Issue 4's drift check: 30 trials of MTP in one process (forced 0.8 acceptance with --mtp on, and
# --mtp auto at the synthetic head's own acceptance), each against plain decoding in the same
# session; the bench prints the drift (last 3 trials against the first 3) and GPU memory.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
$C/qwgpu synth --out /tmp/m27 > /tmp/synth.log 2>&1
$C/qwgpu bench --model /tmp/m27 --mtp on --prompt-tokens 64 --gen-tokens 256 --warmup 1 --trials 30 --force-accept 0.8 --json > $OUT/mtp30_0.8.json 2> $OUT/mtp30_0.8.txt; tail -25 $OUT/mtp30_0.8.txt
$C/qwgpu bench --model /tmp/m27 --mtp auto --prompt-tokens 64 --gen-tokens 256 --warmup 1 --trials 30 --json > $OUT/auto30_none.json 2> $OUT/auto30_none.txt; tail -25 $OUT/auto30_none.txt
