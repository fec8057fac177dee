//! How one flow call is made: the step's model, then its fallbacks in order; on
//! each, retries with exponential backoff and jitter for transient failures
//! (honouring Retry-After); a permanent failure goes straight to the next model.
//! A streamed call follows the same policy: an attempt whose stream breaks after
//! it sent text is failed like any other, and its text is discarded.

use super::stream::{DeltaSink, StreamEvent, StreamOptions};
use super::{ChatRequest, ProviderError, ProviderRegistry, Usage};
use crate::flow::ModelRef;
use rand::Rng;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct CallPolicy {
    /// Retries per model after the first try.
    pub retries: u32,
    pub timeout: Duration,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for CallPolicy {
    fn default() -> Self {
        Self {
            retries: 2,
            timeout: Duration::from_secs(120),
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(20),
        }
    }
}

/// One try, kept on the step row (no prompt, no key: provider, model, outcome).
#[derive(Debug, Clone, Serialize)]
pub struct AttemptLog {
    pub provider: String,
    pub model: String,
    pub answered_by: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub latency_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Tokens a failed attempt was billed for, when the provider reported them
    /// (a stream cut part-way, an answer `parse` refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug)]
pub struct CallOutcome<T> {
    pub value: T,
    pub provider: String,
    pub answered_by: String,
    pub model: String,
    pub attempts: u32,
    pub fallback_used: bool,
    pub usage: Usage,
    pub log: Vec<AttemptLog>,
}

#[derive(Debug)]
pub struct CallFailure {
    pub message: String,
    pub attempts: u32,
    pub log: Vec<AttemptLog>,
}

fn backoff(policy: &CallPolicy, attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(wait) = retry_after {
        return wait.min(Duration::from_secs(60));
    }
    let exp = policy.base_backoff.saturating_mul(1u32 << attempt.min(16));
    let capped = exp.min(policy.max_backoff);
    // "Equal jitter" (half fixed, half random: [50%, 100%] of the backoff) so retries
    // of many calls do not line up, while none comes sooner than half the backoff.
    capped.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// Call `chain[0]`, then each fallback, until one answers with output that
/// `parse` accepts.
pub async fn call_with_fallbacks<T>(
    registry: &ProviderRegistry,
    chain: &[ModelRef],
    request: &ChatRequest,
    policy: &CallPolicy,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<CallOutcome<T>, CallFailure> {
    call_chain(registry, chain, request, policy, None, parse).await
}

/// [`call_with_fallbacks`], streamed: each attempt is announced
/// ([`StreamEvent::Attempt`]), its text sent as it arrives, and an attempt that
/// fails after sending text is followed by [`StreamEvent::Discard`]. The
/// outcome's text is the successful attempt's deltas joined.
pub async fn call_with_fallbacks_streaming<T>(
    registry: &ProviderRegistry,
    chain: &[ModelRef],
    request: &ChatRequest,
    policy: &CallPolicy,
    stream: &StreamOptions,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<CallOutcome<T>, CallFailure> {
    call_chain(registry, chain, request, policy, Some(stream), parse).await
}

async fn call_chain<T>(
    registry: &ProviderRegistry,
    chain: &[ModelRef],
    request: &ChatRequest,
    policy: &CallPolicy,
    stream: Option<&StreamOptions>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<CallOutcome<T>, CallFailure> {
    let mut log = Vec::new();
    let mut attempts = 0u32;
    let mut last_error = String::from("no model configured");
    for (i, target) in chain.iter().enumerate() {
        let Some(provider) = registry.get(&target.provider) else {
            last_error = format!(
                "provider {} is not configured on this worker",
                target.provider
            );
            log.push(AttemptLog {
                provider: target.provider.clone(),
                model: target.model.clone(),
                answered_by: String::new(),
                status: None,
                error: Some(last_error.clone()),
                latency_ms: 0,
                note: None,
                usage: None,
            });
            continue;
        };
        let req = ChatRequest {
            model: target.model.clone(),
            ..request.clone()
        };
        for attempt in 0..=policy.retries {
            attempts += 1;
            let sink = stream.map(|s| {
                let _ = s.events.send(StreamEvent::Attempt {
                    attempt: attempts,
                    provider: target.provider.clone(),
                    model: target.model.clone(),
                });
                DeltaSink::new(attempts, s.events.clone())
            });
            let started = Instant::now();
            let result = {
                let _permit = provider.limit.acquire().await;
                let call = async {
                    match (stream, &sink) {
                        (Some(s), Some(sink)) => {
                            provider
                                .client
                                .stream(&req, policy.timeout, s.idle_timeout, sink)
                                .await
                        }
                        _ => provider.client.chat(&req, policy.timeout).await,
                    }
                };
                // A margin over the HTTP timeout, in case a provider never starts answering.
                match tokio::time::timeout(policy.timeout + Duration::from_secs(1), call).await {
                    Ok(r) => r,
                    Err(_) => Err(ProviderError::Transient {
                        status: None,
                        retry_after: None,
                        message: "timed out".into(),
                    }),
                }
            };
            let latency_ms = started.elapsed().as_millis() as u64;
            let mut billed = sink.as_ref().and_then(DeltaSink::reported_usage);
            let error = match result {
                Ok(response) => match parse(&response.text) {
                    Ok(value) => {
                        log.push(AttemptLog {
                            provider: target.provider.clone(),
                            model: target.model.clone(),
                            answered_by: provider.label.clone(),
                            status: Some(200),
                            error: None,
                            latency_ms,
                            note: response.note.clone(),
                            usage: None,
                        });
                        return Ok(CallOutcome {
                            value,
                            provider: target.provider.clone(),
                            answered_by: provider.label.clone(),
                            model: target.model.clone(),
                            attempts,
                            fallback_used: i > 0,
                            usage: response.usage,
                            log,
                        });
                    }
                    Err(why) => {
                        if response.usage != Usage::default() {
                            billed = Some(response.usage);
                        }
                        ProviderError::Transient {
                            status: Some(200),
                            retry_after: None,
                            message: why,
                        }
                    }
                },
                Err(e) => e,
            };
            last_error = format!("{}/{}: {error}", target.provider, target.model);
            if let (Some(s), Some(sink)) = (stream, &sink) {
                if sink.sent_bytes() > 0 {
                    let _ = s.events.send(StreamEvent::Discard {
                        attempt: sink.attempt(),
                        reason: error.to_string(),
                    });
                }
            }
            log.push(AttemptLog {
                provider: target.provider.clone(),
                model: target.model.clone(),
                answered_by: provider.label.clone(),
                status: error.status(),
                error: Some(error.to_string()),
                latency_ms,
                note: None,
                usage: billed,
            });
            match error {
                ProviderError::Permanent { .. } => break,
                ProviderError::Transient { retry_after, .. } => {
                    if attempt < policy.retries {
                        tokio::time::sleep(backoff(policy, attempt, retry_after)).await;
                    }
                }
            }
        }
    }
    Err(CallFailure {
        message: format!("every model failed; last error: {last_error}"),
        attempts,
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let p = CallPolicy {
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
            ..Default::default()
        };
        let b0 = backoff(&p, 0, None);
        assert!(b0 >= Duration::from_millis(50) && b0 <= Duration::from_millis(100));
        let b5 = backoff(&p, 5, None);
        assert!(b5 <= Duration::from_millis(400));
        assert_eq!(
            backoff(&p, 0, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            backoff(&p, 40, Some(Duration::from_secs(999))),
            Duration::from_secs(60)
        );
    }
}
