// attention.wgsl's merge of a row's chunk partials and its output (the final pass's, and the
// split pass's last workgroup's with COMBINE: one arithmetic, the same bits). The includer
// defines gate_at(i) (the q_proj output's element i) and the bindings y (and with XQ, xq and yo).

// st ⊕ c, the log-sum-exp merge of two partials (explicit fmas: see the header).
fn merge(st: Partial, c: Partial) -> Partial {
    let mm = max(st.m, c.m);
    let a = exp(st.m - mm);
    let b = exp(c.m - mm);
    return Partial(fma(c.acc, vec4<f32>(b), st.acc * a), mm, fma(c.l, b, st.l * a));
}

// Row t's partials of head h (chunks 0 .. n_chunks - 1, from `part`) merged in chunk order.
// (Threads lid >= D4 merge zero accumulators; only the scalars matter there.)
fn merge_parts(t: u32, h: u32, n_chunks: u32, lid: u32) -> Partial {
    var st = Partial(vec4<f32>(0.0), NEG, 0.0);
    for (var c = 0u; c < n_chunks; c++) {
        let base = part_base(t, h, c);
        let ml = part[base];
        var acc = vec4<f32>(0.0);
        if (lid < D4) { acc = part[base + 1u + lid]; }
        st = merge(st, Partial(acc, ml.x, ml.y));
    }
    return st;
}

// Row t's output from its merged state: normalized, gated, written (and as planes with XQ).
// Called from uniform control flow.
fn write_row(t: u32, h: u32, st: Partial, lid: u32) {
    let nq = p.n_heads;
    if (lid < D4) {
        let gb = t * p.gate_stride + p.gate_col + h * 2u * D + D + 4u * lid;
        let gv = vec4<f32>(gate_at(gb), gate_at(gb + 1u), gate_at(gb + 2u), gate_at(gb + 3u));
        let ov = (st.acc / st.l) * (1.0 / (1.0 + exp(-gv)));
        y[(t * nq + h) * D4 + lid] = ov;
#if XQ
        yo[lid] = ov;
#endif
    }
#if XQ
    workgroupBarrier();
    if (lid < D / 8u && t < p.xq_rows) {
        let a = yo[2u * lid];
        let b = yo[2u * lid + 1u];
        let r = word_out(a, b, word_sq(a, b));
        let o = t * p.q_stride * 4u + h * (D / 8u) + lid;
        let pl = p.q_stride / XQ_PLANES * 4u;
#for P 9
        xq[o + {{P}}u * pl] = r[{{P}}];
#endfor
    }
    // (yo is written again by the group's next row)
    workgroupBarrier();
#endif
}
