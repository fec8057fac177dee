//! Text generation with a quantized llama-family model on the CPU: prompt
//! truncation to the context, sampling (greedy at temperature 0, else top-p with a
//! fixed seed), a repeat penalty, and the stop conditions (end of turn, token
//! budget, context, deadline, cancellation).

use super::llama::{Llama, MAX_CONTEXT};
use super::pieces::Pieces;
use super::sampling::{penalise_repeats, Sampler};
use super::tokenizer::{ChatTokenizer, Turn};
use super::weights::WeightFormat;
use anyhow::{anyhow, Context};
use candle_core::quantized::gguf_file;
use candle_core::Device;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Nucleus sampling's p when the temperature is above 0.
pub const DEFAULT_TOP_P: f64 = 0.9;
/// Small models loop without it.
pub const REPEAT_PENALTY: f32 = 1.15;
/// The penalty looks at this many most recent tokens.
pub const REPEAT_LAST_N: usize = 64;
/// Prompt tokens read in one batch: cancellation and the deadline are checked
/// between batches (about 0.5 s each for SmolLM2-135M on 2 cores).
pub const PREFILL_BATCH: usize = 128;
/// Said in place of the start of a prompt that had to be cut to fit the context.
pub const TRUNCATION_NOTE: &str = "[The beginning of this message was cut to fit the context.]\n…";

/// How to generate one answer.
#[derive(Debug, Clone)]
pub struct GenParams {
    /// 0 (or below) is greedy decoding.
    pub temperature: f64,
    pub top_p: f64,
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub max_tokens: usize,
    pub seed: u64,
    /// Stop generating at this instant and keep what was produced.
    pub deadline: Option<Instant>,
}

impl Default for GenParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: DEFAULT_TOP_P,
            repeat_penalty: REPEAT_PENALTY,
            repeat_last_n: REPEAT_LAST_N,
            max_tokens: 256,
            seed: 42,
            deadline: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model ended its turn (`<|im_end|>` or eos).
    EndOfTurn,
    MaxTokens,
    /// The context window is full.
    Context,
    Deadline,
    Cancelled,
}

/// One generated answer.
#[derive(Debug, Clone)]
pub struct Generation {
    pub text: String,
    pub prompt_tokens: usize,
    pub output_tokens: usize,
    pub stop: StopReason,
    /// The prompt was cut from the left to fit the context.
    pub truncated: bool,
    pub prompt_seconds: f64,
    pub decode_seconds: f64,
}

impl Generation {
    /// Generated tokens per second of decoding (the prompt's processing excluded).
    pub fn tokens_per_second(&self) -> Option<f64> {
        (self.output_tokens > 0 && self.decode_seconds > 0.0)
            .then(|| self.output_tokens as f64 / self.decode_seconds)
    }
}

/// A loaded model and its tokenizer. Generation needs `&mut` (the kv cache lives in
/// the weights), so an engine is shared behind a mutex.
pub struct Engine {
    model: Llama,
    pub tokenizer: ChatTokenizer,
    /// Usable context: the model's, capped by candle's rotary table.
    pub context_len: usize,
    /// Punctuation and whitespace tokens: exempt from the repeat penalty, so JSON
    /// and prose keep their quotes, commas and newlines.
    exempt: HashSet<u32>,
}

impl Engine {
    /// Load a GGUF file (llama architecture), its weights held as `format`, and
    /// build its tokenizer from it.
    pub fn load(path: &Path, format: WeightFormat) -> anyhow::Result<Self> {
        let mut file = std::fs::File::open(path)
            .with_context(|| format!("cannot open the model file {}", path.display()))?;
        let ct = gguf_file::Content::read(&mut file)
            .map_err(|e| anyhow!("{} is not a GGUF file: {e}", path.display()))?;
        let arch = ct
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != "llama" {
            anyhow::bail!(
                "{}: architecture {arch:?} is not supported (llama-family GGUF files are)",
                path.display()
            );
        }
        let context_len = ct
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map_or(MAX_CONTEXT, |n| (n as usize).min(MAX_CONTEXT));
        if context_len < 16 {
            anyhow::bail!(
                "{}: a context of {context_len} tokens is too small",
                path.display()
            );
        }
        let tokenizer = ChatTokenizer::from_gguf(&ct)?;
        let exempt = exempt_tokens(&ct);
        let device = Device::Cpu;
        let model = Llama::load(&ct, &mut file, &device, format)
            .map_err(|e| anyhow!("cannot load the weights of {}: {e:#}", path.display()))?;
        Ok(Self {
            model,
            tokenizer,
            context_len,
            exempt,
        })
    }

    /// Generate the assistant's answer to `turns` (ChatML), starting it with
    /// `prefill` (included in the returned text). `cancel` stops early. `on_text`, when
    /// given, gets the answer's text as it is decoded, token by token; the pieces join
    /// into the returned text.
    pub fn generate(
        &mut self,
        system: Option<&str>,
        turns: &[Turn<'_>],
        prefill: &str,
        params: &GenParams,
        cancel: &AtomicBool,
        mut on_text: Option<&mut dyn FnMut(&str)>,
    ) -> anyhow::Result<Generation> {
        let chat = self.tokenizer.encode_chat(system, turns, prefill)?;
        let max_tokens = params.max_tokens.min(self.context_len / 2).max(1);
        let budget = self.context_len - max_tokens;
        let (prompt, truncated) = if chat.len() <= budget {
            (chat.concat(), false)
        } else {
            let note = self.tokenizer.encode(TRUNCATION_NOTE)?;
            let fixed = chat.head.len() + note.len() + chat.tail.len();
            let keep = budget.saturating_sub(fixed);
            let body = &chat.body[chat.body.len().saturating_sub(keep)..];
            let mut p = [&chat.head[..], &note, body, &chat.tail].concat();
            if p.len() > budget {
                // Even the system message is too long: keep the end of everything.
                p.drain(..p.len() - budget);
            }
            tracing::warn!(
                prompt_tokens = chat.len(),
                kept = p.len(),
                context = self.context_len,
                "local model: the prompt was cut from the left to fit the context"
            );
            (p, true)
        };

        let mut sampler = Sampler::new(params.seed, params.temperature, params.top_p);
        let started = Instant::now();
        // Position 0 resets every layer's kv cache: no state leaks between answers.
        // The prompt is read in batches; between them the deadline and cancellation
        // are checked, so a long prompt does not hold the model past either.
        let mut logits = None;
        for (i, chunk) in prompt.chunks(PREFILL_BATCH).enumerate() {
            let stopped = if i == 0 {
                None
            } else if cancel.load(Ordering::Relaxed) {
                Some(StopReason::Cancelled)
            } else if params.deadline.is_some_and(|d| Instant::now() >= d) {
                Some(StopReason::Deadline)
            } else {
                None
            };
            if let Some(stop) = stopped {
                return Ok(Generation {
                    text: String::new(),
                    prompt_tokens: prompt.len(),
                    output_tokens: 0,
                    stop,
                    truncated,
                    prompt_seconds: started.elapsed().as_secs_f64(),
                    decode_seconds: 0.0,
                });
            }
            logits = Some(self.model.forward(chunk, i * PREFILL_BATCH)?);
        }
        let mut logits = logits.ok_or_else(|| anyhow!("the prompt is empty"))?;
        let prompt_seconds = started.elapsed().as_secs_f64();
        let decode_started = Instant::now();

        let mut history = prompt.clone();
        let mut output: Vec<u32> = Vec::new();
        let mut pieces = Pieces::default();
        if let Some(f) = on_text.as_mut() {
            f(prefill);
        }
        let stop = loop {
            let mut scores: Vec<f32> = logits.to_dtype(candle_core::DType::F32)?.to_vec1()?;
            if params.repeat_penalty != 1.0 {
                let start = history.len().saturating_sub(params.repeat_last_n);
                let recent: Vec<u32> = history[start..]
                    .iter()
                    .copied()
                    .filter(|t| !self.exempt.contains(t))
                    .collect();
                penalise_repeats(&mut scores, params.repeat_penalty, &recent);
            }
            let next = sampler.sample(&scores);
            if self.tokenizer.stop.contains(&next) {
                break StopReason::EndOfTurn;
            }
            output.push(next);
            history.push(next);
            if let Some(f) = on_text.as_mut() {
                if let Some(piece) = pieces.next(&self.tokenizer, &output)? {
                    f(&piece);
                }
            }
            if output.len() >= max_tokens {
                break StopReason::MaxTokens;
            }
            if history.len() >= self.context_len {
                break StopReason::Context;
            }
            if cancel.load(Ordering::Relaxed) {
                break StopReason::Cancelled;
            }
            if params.deadline.is_some_and(|d| Instant::now() >= d) {
                break StopReason::Deadline;
            }
            logits = self.model.forward(&[next], history.len() - 1)?;
        };
        let decode_seconds = decode_started.elapsed().as_secs_f64();
        let decoded = self.tokenizer.decode(&output)?;
        let decoded = match on_text.as_mut() {
            Some(f) => match pieces.rest(&decoded) {
                Some(rest) => {
                    f(rest);
                    decoded
                }
                // Never seen; if a tokenizer made it so, the answer is what was sent.
                None => pieces.sent,
            },
            None => decoded,
        };
        let text = format!("{prefill}{decoded}");
        Ok(Generation {
            text,
            prompt_tokens: prompt.len(),
            output_tokens: output.len(),
            stop,
            truncated,
            prompt_seconds,
            decode_seconds,
        })
    }
}

/// Tokens made only of ASCII punctuation and whitespace (byte-level spelling:
/// `Ġ` is a space, `Ċ` a newline, `ĉ` a tab).
fn exempt_tokens(ct: &gguf_file::Content) -> HashSet<u32> {
    let Some(Ok(tokens)) = ct.metadata.get("tokenizer.ggml.tokens").map(|v| v.to_vec()) else {
        return HashSet::new();
    };
    tokens
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let s = t.to_string().ok()?;
            let plain = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_punctuation() || matches!(c, 'Ġ' | 'Ċ' | 'ĉ'));
            plain.then_some(i as u32)
        })
        .collect()
}
