// Included by the state kernels' STREAMS forms (a call whose rows are independent streams, a
// batch of sequences: see engine/src/model/batch.rs).
// Position of row t of a call of independent streams (STREAMS pipelines): row 0 at `pos`, rows
// 1-3 at `pos1`-`pos3`.
fn stream_pos(t: u32) -> u32 {
    switch t {
        case 0u: { return step.pos; }
        case 1u: { return step.pos1; }
        case 2u: { return step.pos2; }
        default: { return step.pos3; }
    }
}
