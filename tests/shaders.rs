//! Every WGSL variant the engine can build is parsed, validated and translated by naga to SPIR-V
//! (Vulkan) and MSL (Metal) offline, so a typo in a rarely used variant fails here, not on a
//! user's machine. The browser form (with `enable subgroups;`) is checked by the browser tests.

use qwgpu_engine::gpu::shader::preprocess;
use qwgpu_engine::ops::all_variants;

fn check(name: &str, code: &str, label: &str) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(code)
        .map_err(|e| format!("{label}: parse: {}", e.emit_to_string(code)))?;
    let mut validator = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    );
    validator.subgroup_stages(naga::valid::ShaderStages::COMPUTE);
    validator.subgroup_operations(naga::valid::SubgroupOperationSet::all());
    let info = validator
        .validate(&module)
        .map_err(|e| format!("{label}: validate: {}", e.emit_to_string(code)))?;
    let spv_opts = naga::back::spv::Options::default();
    naga::back::spv::write_vec(&module, &info, &spv_opts, None)
        .map_err(|e| format!("{label}: SPIR-V: {e}"))?;
    // Cooperative-matrix kernels of 16 × 16 run on Vulkan only (Metal's simdgroup matrices are
    // 8 × 8); the device decides whether they are built at all.
    if code.contains("enable wgpu_cooperative_matrix;") {
        let _ = name;
        return Ok(());
    }
    let msl_opts = naga::back::msl::Options {
        lang_version: (2, 4),
        ..Default::default()
    };
    let pipe = naga::back::msl::PipelineOptions {
        entry_point: Some((naga::ShaderStage::Compute, "main".to_string())),
        ..Default::default()
    };
    naga::back::msl::write_string(&module, &info, &msl_opts, &pipe)
        .map_err(|e| format!("{label}: MSL: {e}"))?;
    let _ = name;
    Ok(())
}

#[test]
fn every_variant_translates_to_spirv_and_msl() {
    let variants: Vec<_> = [false, true].into_iter().flat_map(all_variants).collect();
    // Each variant is independent: check them on every core (naga is most of this test's time).
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((name, defines)) = variants.get(i) else {
                    break;
                };
                let label = format!("{name}[{}]", defines.label());
                let result = match preprocess(name, defines, false) {
                    Ok(code) => check(name, &code, &label),
                    Err(e) => Err(format!("{label}: preprocess: {e}")),
                };
                if let Err(e) = result {
                    failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((i, e));
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    failures.sort();
    let count = variants.len();
    assert!(
        failures.is_empty(),
        "{} of {count} variants failed:\n{}",
        failures.len(),
        failures
            .iter()
            .map(|(_, e)| e.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(count > 100, "only {count} variants enumerated");
}

#[test]
fn every_shader_file_is_covered_by_a_variant() {
    let used: std::collections::BTreeSet<&str> =
        all_variants(true).iter().map(|(n, _)| *n).collect();
    for (name, src) in qwgpu_engine::gpu::shader::SOURCES {
        // Include-only files (helpers) have no entry point of their own.
        if !src.contains("@compute") {
            continue;
        }
        assert!(used.contains(name), "{name} has no registered variant");
    }
}

#[test]
fn preprocessor_directives() {
    use qwgpu_engine::gpu::Defines;
    // Unknown placeholders and unbalanced blocks are errors, not silent output.
    let d = Defines::new();
    let e = preprocess("matmul.wgsl", &d, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("undefined placeholder") || e.contains("#for count 'ROWS'"),
        "{e}"
    );
    assert!(preprocess("no_such.wgsl", &d, false).is_err());

    // #for unrolls (nested, counts from literals or defines); malformed blocks are errors.
    use qwgpu_engine::gpu::shader::unroll;
    let d = Defines::new().set("N", 3);
    let text = "x\n#for R 2\na{{R}}\n  #for T N\n  b{{R}}{{T}} {{KEEP}}\n  #endfor\n#endfor\ny";
    assert_eq!(unroll("t", text, &d).unwrap(), "x\na0\n  b00 {{KEEP}}\n  b01 {{KEEP}}\n  b02 {{KEEP}}\na1\n  b10 {{KEEP}}\n  b11 {{KEEP}}\n  b12 {{KEEP}}\ny\n");
    assert_eq!(unroll("t", "#for R 0\na\n#endfor\nb", &d).unwrap(), "b\n");
    assert!(unroll("t", "#for R 2\na", &d)
        .unwrap_err()
        .to_string()
        .contains("without #endfor"));
    assert!(unroll("t", "a\n#endfor", &d)
        .unwrap_err()
        .to_string()
        .contains("without #for"));
    assert!(unroll("t", "#for R M\na\n#endfor", &d)
        .unwrap_err()
        .to_string()
        .contains("not an integer"));
    assert!(unroll("t", "#for R\na\n#endfor", &d)
        .unwrap_err()
        .to_string()
        .contains("expected #for VAR COUNT"));
}

#[test]
fn web_form_has_the_subgroups_directive() {
    // Dawn requires `enable subgroups;` for subgroup builtins; naga accepts or rejects it by
    // version, so this only checks that the browser form carries the directive.
    let (name, d) = all_variants(true)
        .into_iter()
        .find(|(n, _)| *n == "matmul.wgsl")
        .unwrap();
    let web = preprocess(name, &d, true).unwrap();
    assert!(web.starts_with("enable subgroups;"));
    if let Err(e) = naga::front::wgsl::parse_str(&web) {
        println!(
            "naga on the web form: {}",
            e.emit_to_string(&web).lines().next().unwrap_or("")
        );
    }
}
