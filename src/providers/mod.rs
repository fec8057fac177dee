//! LLM providers behind one small trait. Each speaks its provider's real wire
//! format over HTTP; tests and the offline provider change only the base URL.

mod anthropic;
mod config;
mod gemini;
pub mod json_answer;
#[cfg(feature = "local-model")]
pub mod local;
pub mod offline;
mod openai;
mod policy;
mod sse;
mod stream;

pub use config::ProvidersConfig;
pub use policy::{
    call_with_fallbacks, call_with_fallbacks_streaming, AttemptLog, CallFailure, CallOutcome,
    CallPolicy,
};
pub use stream::{reassemble, DeltaSink, StreamEvent, StreamOptions};

use async_trait::async_trait;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// One chat completion request, provider-neutral.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    pub system: Option<String>,
    pub prompt: String,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    /// Ask for a JSON answer (OpenAI `response_format`, Gemini `responseMimeType`).
    pub json: bool,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

#[derive(Debug, Clone)]
pub struct ChatResponse {
    pub text: String,
    pub usage: Usage,
    /// Something the run report should say about how the answer was obtained
    /// (a weak model's list parsed as JSON, a stricter retry).
    pub note: Option<String>,
}

/// Why a call failed, and whether trying the same model again can help.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// 429, 5xx, timeouts, dropped connections, malformed or truncated bodies.
    #[error("{message}")]
    Transient {
        status: Option<u16>,
        retry_after: Option<Duration>,
        message: String,
    },
    /// 400, 401, 403, 404, or no credentials: go straight to the next fallback.
    #[error("{message}")]
    Permanent {
        status: Option<u16>,
        message: String,
    },
}

impl ProviderError {
    /// An error the provider reported inside an answer (a stream's error event, an
    /// error object in a 200 body): no HTTP status of its own, so the provider's
    /// own kind of error says whether another try can help.
    pub fn in_answer(permanent: bool, message: String) -> Self {
        if permanent {
            Self::Permanent {
                status: None,
                message,
            }
        } else {
            Self::Transient {
                status: None,
                retry_after: None,
                message,
            }
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Transient { status, .. } | Self::Permanent { status, .. } => *status,
        }
    }

    /// Classify an HTTP error status the way every provider documents it.
    /// Whether trying the same model again can help, by HTTP status, as every provider
    /// documents it: timeouts, conflicts, rate limits and server errors.
    pub fn retryable_status(status: u16) -> bool {
        status == 408 || status == 409 || status == 429 || status >= 500
    }

    pub fn from_status(status: u16, retry_after: Option<Duration>, body: &str) -> Self {
        let message = format!("HTTP {status}: {}", summarize(body));
        if Self::retryable_status(status) {
            Self::Transient {
                status: Some(status),
                retry_after,
                message,
            }
        } else {
            Self::Permanent {
                status: Some(status),
                message,
            }
        }
    }

    pub fn transport(e: &reqwest::Error) -> Self {
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "connection failed"
        } else if e.is_decode() || e.is_body() {
            "response body was cut short or unreadable"
        } else {
            "request failed"
        };
        Self::Transient {
            status: None,
            retry_after: None,
            message: what.into(),
        }
    }

    pub fn malformed(what: &str) -> Self {
        Self::Transient {
            status: None,
            retry_after: None,
            message: format!("malformed response: {what}"),
        }
    }
}

/// The first 200 characters of an error body, on one line: enough to diagnose,
/// never a whole echo of a prompt.
fn summarize(body: &str) -> String {
    let one_line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    redact_credentials(&one_line).chars().take(200).collect()
}

/// Providers sometimes echo (part of) the key they were sent in an error body;
/// such runs of token characters never reach a job row or a log.
fn redact_credentials(text: &str) -> String {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "-_.*".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        let alnum = run.chars().filter(|c| c.is_ascii_alphanumeric()).count();
        let mixed =
            run.chars().any(|c| c.is_ascii_digit()) && run.chars().any(|c| c.is_ascii_alphabetic());
        if alnum >= 20 && mixed {
            out.push_str("[redacted]");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if is_token_char(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Seconds or an HTTP date in `Retry-After`; only the seconds form is honoured.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(300.0)))
}

/// Send a provider request; a 2xx body comes back as text, anything else as a
/// classified [`ProviderError`] (with `Retry-After` when the provider gave one).
pub(crate) async fn send(request: reqwest::RequestBuilder) -> Result<String, ProviderError> {
    let response = request
        .send()
        .await
        .map_err(|e| ProviderError::transport(&e))?;
    let status = response.status().as_u16();
    let wait = retry_after(response.headers());
    let text = response
        .text()
        .await
        .map_err(|e| ProviderError::transport(&e))?;
    if (200..300).contains(&status) {
        Ok(text)
    } else {
        Err(ProviderError::from_status(status, wait, &text))
    }
}

#[async_trait]
pub trait ChatProvider: Send + Sync {
    async fn chat(
        &self,
        req: &ChatRequest,
        timeout: Duration,
    ) -> Result<ChatResponse, ProviderError>;

    /// The same answer, streamed: text goes to `sink` as the provider writes it,
    /// and the returned text is exactly those deltas joined. `timeout` bounds the
    /// whole call, `idle` a gap between two chunks. A stream cut short is an
    /// error like any other (the caller discards what it had sent).
    ///
    /// The default, for a provider that cannot stream: the whole answer as one delta.
    async fn stream(
        &self,
        req: &ChatRequest,
        timeout: Duration,
        _idle: Duration,
        sink: &DeltaSink,
    ) -> Result<ChatResponse, ProviderError> {
        let response = self.chat(req, timeout).await?;
        sink.report_usage(response.usage);
        sink.delta(&response.text);
        Ok(response)
    }
}

/// A configured provider and the cap on its concurrent calls.
#[derive(Clone)]
pub struct Provider {
    /// What actually answers (e.g. `offline` standing in for `openai`).
    pub label: String,
    pub client: Arc<dyn ChatProvider>,
    pub limit: Arc<Semaphore>,
}

/// Provider name (as flows write it) -> provider.
#[derive(Clone, Default)]
pub struct ProviderRegistry {
    providers: HashMap<String, Provider>,
}

impl ProviderRegistry {
    pub fn insert(
        &mut self,
        name: &str,
        label: &str,
        client: Arc<dyn ChatProvider>,
        concurrency: usize,
    ) {
        self.providers.insert(
            name.to_owned(),
            Provider {
                label: label.to_owned(),
                client,
                limit: Arc::new(Semaphore::new(concurrency.max(1))),
            },
        );
    }

    pub fn get(&self, name: &str) -> Option<&Provider> {
        self.providers.get(name)
    }

    /// name -> label, for reports ("openai" -> "offline").
    pub fn labels(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .providers
            .iter()
            .map(|(k, p)| (k.clone(), p.label.clone()))
            .collect();
        v.sort();
        v
    }
}

pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_lose_anything_key_shaped() {
        let s = summarize(
            "{\"error\": \"Incorrect API key provided: sk-proj-abc123def456ghi789jkl. See docs\"}",
        );
        assert!(!s.contains("abc123def456"), "{s}");
        assert!(s.contains("Incorrect API key provided"));
        assert_eq!(
            summarize("rate limited, retry later"),
            "rate limited, retry later"
        );
    }
}
