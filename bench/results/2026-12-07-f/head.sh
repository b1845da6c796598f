# Thirty-fourth session: set-up and the argument sets for the device calls (sourced by
# call*.sh). Carries .gl and .carry/bins.tar.xz (release `qwgpu`, --no-default-features, this
# tree, and the stripped test binaries kernels_attention and model_invariance).
set -u
T0=$(date +%s)
. bench/device_setup.sh
. bench/device_run.sh
P="--mtp off --prompt-tokens 1024 --gen-tokens 128 --trials 3 --warmup 1"
E="--mtp off --prompt-tokens 1024 --gen-tokens 512 --trials 10 --warmup 3 --roofline-gbps 4500"
M="--mtp on --force-accept 0.8 --prompt-tokens 64 --gen-tokens 256 --trials 10 --warmup 1"
# Sampled MTP (the synthetic head's drafts are random: acceptance near 0, so each iteration
# emits about one token): the next iteration's body submitted ahead or not.
S="--mtp on --temperature 0.8 --prompt-tokens 64 --gen-tokens 256 --trials 3 --warmup 1"
