# Where a decode step and a verify spend their GPU time, dispatch by dispatch, on the GPU machine
# (one device call, about 3 minutes with the synthetic 27B already written, 4 without): `qwgpu
# bench --profile` times every dispatch of a 1-token step and of a 2-token verify inside the
# step's own compute pass (GPU timestamps; each dispatch counts from the previous one's end, so
# the boundaries between kernels are inside the numbers) and groups them by kind. Prints, per
# kind, dispatches, µs per step and share of the step, for a plain session after a 1024-token
# prompt and for MTP at a forced (benchmark-only) 80 % acceptance.
# Carries: .gl (the Vulkan loader debs) and .carry/bins.tar.xz (a stripped `qwgpu` built with
# `cargo build --release -p native-cli --no-default-features`). Results go to $OUT.
set -u
. bench/device_setup.sh
table() { python3 - "$1" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
print("decode", j.get("decode_tokens_per_s", {}).get("p50"), "tok/s;", "profile_ms", j.get("profile_ms"))
m = j.get("mtp_decode")
if m:
    print("mtp", m.get("decode_tokens_per_s"), "measured_ms", m.get("measured_ms"))
for name, p in sorted(j.get("dispatch_profile", {}).items()):
    total = p["total_ms"] * 1e3
    print(f"\n{name}: {total / 1e3:.3f} ms in {sum(k['dispatches'] for k in p['by_kind'].values())} dispatches")
    for kind, k in sorted(p["by_kind"].items(), key=lambda kv: -kv[1]["us"]):
        print(f"  {kind:62s} {k['dispatches']:4d} {k['us']:9.1f} us {100 * k['us'] / total:5.1f} %")
EOF
}
ts "plain, 1024-token prompt"
timeout 200 $C/qwgpu bench --model /tmp/m27 --json --mtp off --prompt-tokens 1024 --gen-tokens 128 --trials 2 --warmup 1 --profile > $OUT/plain.json 2> $OUT/plain.err
table $OUT/plain.json
ts "MTP, forced 0.8"
timeout 200 $C/qwgpu bench --model /tmp/m27 --json --mtp on --force-accept 0.8 --prompt-tokens 64 --gen-tokens 256 --trials 2 --warmup 1 --profile > $OUT/mtp08.json 2> $OUT/mtp08.err
table $OUT/mtp08.json
ts done
