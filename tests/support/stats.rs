//! Statistical tests shared by the sampling tests.

/// χ² critical values at p = 0.001 for df = 1..=60 via the Wilson–Hilferty approximation.
pub fn chi2_critical_001(df: usize) -> f64 {
    let k = df as f64;
    let z = 3.0902; // one-sided 0.001 normal quantile
    k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3)
}

/// Two-sample χ² homogeneity test on token counts (equal sample sizes), pooling rare tokens.
pub fn two_sample_chi2(
    a: &std::collections::BTreeMap<u32, u32>,
    b: &std::collections::BTreeMap<u32, u32>,
) -> (f64, usize) {
    let keys: std::collections::BTreeSet<u32> = a.keys().chain(b.keys()).cloned().collect();
    let (mut stat, mut bins, mut pa, mut pb) = (0.0, 0usize, 0u32, 0u32);
    for k in keys {
        let (x, y) = (*a.get(&k).unwrap_or(&0), *b.get(&k).unwrap_or(&0));
        if x + y < 10 {
            pa += x;
            pb += y;
            continue;
        }
        stat += ((x as f64 - y as f64).powi(2)) / (x + y) as f64;
        bins += 1;
    }
    if pa + pb > 0 {
        stat += ((pa as f64 - pb as f64).powi(2)) / (pa + pb) as f64;
        bins += 1;
    }
    (stat, bins.saturating_sub(1))
}

/// Asserts that two samples of tokens (`a` and `b`, equal sizes) follow the same law: the
/// two-sample χ² below its p = 0.001 critical value, on at least 3 degrees of freedom. `what`
/// names the position and the two modes in the messages.
pub fn assert_same_law(
    what: &str,
    a: &std::collections::BTreeMap<u32, u32>,
    b: &std::collections::BTreeMap<u32, u32>,
) {
    let (stat, df) = two_sample_chi2(a, b);
    let crit = chi2_critical_001(df.max(1));
    println!("{what}: chi2 {stat:.1} on {df} df (critical {crit:.1})");
    assert!(df >= 3, "{what}: too few distinct tokens to test: {a:?}");
    assert!(
        stat < crit,
        "{what}: the two samples differ (chi2 {stat:.1} > {crit:.1} on {df} df)"
    );
}
