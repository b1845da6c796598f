// The per-head gates of a Gated-DeltaNet step (spec §4.6 step 5, mlx-lm's compute_g), shared by
// gdn_prep.wgsl and gdn_conv_prep.wgsl: beta = sigmoid(b), g = exp(-exp(A_log) * softplus(a + dt_bias)).

// log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), with log1p's small-argument series where
// log(1 + u) would lose the digits of u.
fn softplus_precise(x: f32) -> f32 {
    let u = exp(-abs(x));
    let l = select(log(1.0 + u), u * (1.0 - u * (0.5 - u * (1.0 / 3.0))), u < 1e-3);
    return max(x, 0.0) + l;
}

// The decay g of one head from its `a` projection, A_log and dt_bias.
fn decay_gate(a: f32, a_log: f32, dt_bias: f32) -> f32 {
    return exp(-exp(a_log) * softplus_precise(a + dt_bias));
}
