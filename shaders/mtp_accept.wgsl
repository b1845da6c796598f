// Bookkeeping of the MTP speculative loop (spec §7.3), kept on the GPU so only a few ids are read
// back per iteration. One thread; `result` = [v, b, accept, draft] (u32).
//   FIRST:  after the first 1-row forward: v = main token (out_ids[0]); mtp_ids[0] = v.
//   VERIFY: after the 2-row verify of [y, d]: v = out_ids[0] (target at d's position), b =
//           out_ids[1] (bonus); greedy accept <=> v == d. MTP rows are (h0, v), (h1, b): on
//           rejection row 0's pair (h0, v) is still the right one and row 1 is discarded.
//   SAMPLED: after the sampler's accept test of a 2-row verify (spec §7.3 B.3–B.5): `src` is
//           the accept output [accepted, n_emit, token at the draft's position (d or the
//           residual sample w), bonus, ...]; v = that token, b = bonus.
//   SELECT: after the MTP head: draft = accept ? mtp_out[1] : mtp_out[0] (mtp_out[0] either way
//           where the head ran on the chosen row alone, its step's n_out = 1); the next verify
//           input is ids = [accept ? b : v, draft].
// FIRST, VERIFY and SAMPLED also write `head_step`, the step of an MTP head that runs on
// the one row the next draft comes from (n_tokens = 1 + accept, n_out = 1: its last row is row
// `accept`); the other row's logits are never used.
//   ADVANCE: last in a verify iteration: the next verify's step data from this one's decision,
//           so it can be submitted before the host reads the decision: both slots' positions
//           advance by 1 + accept, and the backbone slot's `rollback` = 1 - accept (its GDN
//           kernels then start from the snapshots). Binds the whole step buffer as words.
// `step.force` (benchmarks only) overrides the greedy decision: 1 = reject, 2 = accept.
#include "common.wgsl"

#if ADVANCE
@group(0) @binding(0) var<storage, read_write> steps: array<u32>;    // the step buffer
@group(0) @binding(1) var<storage, read> decision: array<u32>;      // [v, b, accept, draft]

const SLOT1: u32 = {{SLOT1}}u;       // word offset of the MTP slot
const POS: u32 = {{POS}}u;           // word of Step.pos
const ROLLBACK: u32 = {{ROLLBACK}}u; // word of Step.rollback

@compute @workgroup_size(1)
fn main() {
    let accept = min(decision[2], 1u);
    steps[POS] = steps[POS] + 1u + accept;
    steps[SLOT1 + POS] = steps[SLOT1 + POS] + 1u + accept;
    steps[ROLLBACK] = 1u - accept;
}
#else
@group(0) @binding(0) var<storage, read> step: Step;
@group(0) @binding(1) var<storage, read_write> ids: array<u32>;      // backbone input ids [y, d]
@group(0) @binding(2) var<storage, read_write> result: array<u32>;   // [v, b, accept, draft]
#if SELECT
@group(0) @binding(3) var<storage, read> mtp_out: array<u32>;        // MTP argmax per row
#else
@group(0) @binding(3) var<storage, read> out_ids: array<u32>;        // backbone argmax per row
@group(0) @binding(4) var<storage, read_write> mtp_ids: array<u32>;  // MTP input ids per row
@group(0) @binding(5) var<storage, read_write> head_step: Step;      // the one-row MTP head's step
#endif

@compute @workgroup_size(1)
fn main() {
    // Every variant binds the same resources; phony reads keep them in the pipeline layout.
    _ = step.n_tokens;
    _ = ids[0];
#if SELECT
    let accept = result[2];
    let last = select(result[0], result[1], accept == 1u);
    let draft = select(mtp_out[0], mtp_out[min(1u, step.n_out - 1u)], accept == 1u);
    ids[0] = last;
    ids[1] = draft;
    result[3] = draft;
#elif SAMPLED
    let v = out_ids[2];
    let b = out_ids[3];
    result[0] = v;
    result[1] = b;
    result[2] = out_ids[0];
    mtp_ids[0] = v;
    mtp_ids[1] = b;
    head_step.n_tokens = 1u + min(out_ids[0], 1u);
    head_step.n_out = 1u;
#elif FIRST
    let v = out_ids[0];
    result[0] = v;
    result[1] = 0u;
    result[2] = 0u;
    mtp_ids[0] = v;
    head_step.n_tokens = 1u;
    head_step.n_out = 1u;
#else
    let v = out_ids[0];
    let b = out_ids[1];
    var accept = select(0u, 1u, v == ids[1]);
    if (step.force != 0u) { accept = step.force - 1u; }
    result[0] = v;
    result[1] = b;
    result[2] = accept;
    mtp_ids[0] = v;
    mtp_ids[1] = b;
    head_step.n_tokens = 1u + accept;
    head_step.n_out = 1u;
#endif
}
#endif
