//! `bookengine models status --bench`: the local model's speed on this machine,
//! prompt reading (prefill) and writing (decode) apart, with a fixed prompt and
//! greedy decoding so two runs do the same work.

use super::generate::{Engine, GenParams};
use super::tokenizer::Turn;
use super::weights::WeightFormat;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// The bench's request: about the size of a demo chapter's prompt.
pub const BENCH_PROMPT: &str =
    "You are writing a short book titled \"The Lighthouse Keeper's Year\". \
The outline has three chapters: 1. Arrival on the island, where the new keeper learns the \
lamp, the logbook and the tides; 2. The winter storms, when the supply boat cannot land and \
the keeper rations oil and food while keeping the light burning every night; 3. Spring, when \
the boat returns with letters, a new lens and a visitor who asks to stay. Write chapter 1, \
\"Arrival on the island\", in plain, warm prose of about two paragraphs. Describe the island, \
the tower, the first evening's lighting of the lamp and the keeper's first entry in the log.";

/// Tokens the bench asks for unless told otherwise.
pub const BENCH_TOKENS: usize = 128;

/// What one bench run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub weights: &'static str,
    /// Seconds to read the file and build the model (conversion included).
    pub load_seconds: f64,
    pub prompt_tokens: usize,
    pub prefill_ms_per_token: f64,
    pub output_tokens: usize,
    pub decode_tokens_per_second: f64,
    /// The SIMD this binary was built for, and what the CPU has.
    pub build_simd: &'static str,
    pub cpu_simd: String,
    /// The answer's first line, to show the model still writes sense.
    pub sample: String,
}

/// Load the model at `path` as `format` and time one fixed answer (after one
/// unmeasured warm-up answer, so first-touch costs are not counted).
pub fn run(path: &Path, format: WeightFormat, tokens: usize) -> anyhow::Result<BenchReport> {
    let started = Instant::now();
    let mut engine = Engine::load(path, format)?;
    let load_seconds = started.elapsed().as_secs_f64();
    let turns = [Turn {
        role: "user",
        content: BENCH_PROMPT,
    }];
    let params = GenParams {
        max_tokens: tokens.max(1),
        ..GenParams::default()
    };
    let never = AtomicBool::new(false);
    let warm = GenParams {
        max_tokens: 8.min(params.max_tokens),
        ..params.clone()
    };
    engine.generate(None, &turns, "", &warm, &never, None)?;
    let g = engine.generate(None, &turns, "", &params, &never, None)?;
    Ok(BenchReport {
        weights: format.name(),
        load_seconds,
        prompt_tokens: g.prompt_tokens,
        prefill_ms_per_token: g.prompt_seconds * 1e3 / g.prompt_tokens.max(1) as f64,
        output_tokens: g.output_tokens,
        decode_tokens_per_second: g.tokens_per_second().unwrap_or(0.0),
        build_simd: build_simd(),
        cpu_simd: cpu_simd(),
        sample: g
            .text
            .trim()
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(160)
            .collect(),
    })
}

/// The widest SIMD level the build itself may use everywhere.
pub fn build_simd() -> &'static str {
    if cfg!(all(target_feature = "avx2", target_feature = "fma")) {
        "x86-64-v3 (AVX2, FMA)"
    } else if cfg!(target_arch = "x86_64") {
        "x86-64 (SSE2; gemm picks AVX at run time)"
    } else if cfg!(target_feature = "neon") {
        "NEON"
    } else {
        "none"
    }
}

/// The SIMD extensions this CPU reports.
pub fn cpu_simd() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut has = Vec::new();
        if std::arch::is_x86_feature_detected!("avx2") {
            has.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            has.push("fma");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            has.push("avx512f");
        }
        if has.is_empty() {
            "sse2".to_owned()
        } else {
            has.join(", ")
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_owned()
    }
}
