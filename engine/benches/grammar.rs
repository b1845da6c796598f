//! Host cost of constrained decoding on a real vocabulary (no GPU): building the token trie and
//! parser factory, compiling a JSON schema, and the per-token mask + commit while a valid reply is
//! fed token by token, as the constrained loop does between two GPU steps.
//!
//! `cargo bench -p engine --features grammar --bench grammar [-- TOKENIZER.json]` (default: the
//! real Qwen3.6 tokenizer of the test fixtures, 248,077 ids in a 248,320-id model vocabulary).

use std::sync::Arc;
use std::time::Instant;

use qwgpu_engine::decode::constrain::TokenConstraint;
use qwgpu_engine::text::grammar::{GrammarEnv, GrammarSpec};
use qwgpu_engine::text::Tokenizer;
use serde_json::json;

fn main() {
    let path = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_else(|| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/fixtures/qwen3.6-tokenizer/tokenizer.json"
            )
            .into()
        });
    let tok = Arc::new(Tokenizer::from_file(&path).expect("a tokenizer.json"));
    let vocab = tok.id_bound().max(248_320);
    let eos: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
        .iter()
        .filter_map(|t| tok.token_to_id(t))
        .collect();
    let t0 = Instant::now();
    let env = GrammarEnv::new(tok.clone(), vocab, &eos).expect("a grammar environment");
    let build_ms = t0.elapsed().as_secs_f64() * 1e3;
    let schema = json!({
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
            "authors": {"type": "array", "items": {"type": "string"}},
            "tags": {"type": "array", "items": {"enum": ["systems", "web", "embedded", "games"]}},
            "in_print": {"type": "boolean"}
        },
        "required": ["title", "year", "authors", "tags", "in_print"]
    });
    let reply = "{\n  \"title\": \"The Rust Programming Language, second edition\",\n  \"year\": 2023,\n  \"authors\": [\"Steve Klabnik\", \"Carol Nichols\"],\n  \"tags\": [\"systems\", \"embedded\"],\n  \"in_print\": true\n}";
    let ids = tok.encode(reply, false).expect("tokens");
    let mut mask = vec![0u32; env.mask_words()];
    let mut compile_ms = Vec::new();
    let mut step_ms = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut g = env
            .compile(&GrammarSpec::JsonSchema(schema.clone()))
            .expect("the schema compiles");
        compile_ms.push(t.elapsed().as_secs_f64() * 1e3);
        for &id in &ids {
            let t = Instant::now();
            mask.fill(0);
            g.allowed(&mut mask).expect("a mask");
            assert!(
                mask[id as usize / 32] >> (id % 32) & 1 == 1,
                "token {id} of the reply is not allowed"
            );
            g.commit(id).expect("the token fits");
            step_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    step_ms.sort_by(f64::total_cmp);
    compile_ms.sort_by(f64::total_cmp);
    let pct = |v: &[f64], p: f64| v[((v.len() - 1) as f64 * p) as usize];
    let mean = step_ms.iter().sum::<f64>() / step_ms.len() as f64;
    println!(
        "{}",
        json!({
            "tokenizer": path,
            "vocab": vocab,
            "env_build_ms": build_ms,
            "schema_compile_ms_p50": pct(&compile_ms, 0.5),
            "reply_tokens": ids.len(),
            "mask_and_commit_ms": {"mean": mean, "p50": pct(&step_ms, 0.5), "p90": pct(&step_ms, 0.9), "max": pct(&step_ms, 1.0)},
        })
    );
}
