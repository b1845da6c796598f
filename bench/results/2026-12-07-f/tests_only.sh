# The GPU bit tests of call1.sh alone (no synthetic checkpoint, no timings): attention's fold
# levels (kernels_attention, model_invariance) and the MTP head on the chosen row, greedy and
# sampled (mtp), on the carried test binaries.
set -u
for f in .gl/*.deb; do dpkg -x $f / >/dev/null; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
rm -rf /tmp/c; mkdir -p /tmp/c; tar xJf .carry/bins.tar.xz -C /tmp/c; C=/tmp/c
nvidia-smi --query-gpu=name --format=csv,noheader
cd tests
export QWGPU_FIXTURES=$PWD/fixtures/models
timeout 60 $C/kernels_attention --test-threads 1 prep_folded split_and_fused 2>&1 | grep -E "^test |test result|panicked"
timeout 60 $C/model_invariance --test-threads 1 split_attention row0 2>&1 | grep -E "^test |test result|panicked"
timeout 60 $C/mtp --test-threads 1 greedy_mtp_head_on sampl 2>&1 | grep -E "^test |test result|panicked|chi2|drafted"
