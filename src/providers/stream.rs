//! What a streaming call tells its consumer while it runs: which attempt is
//! writing, the text as it arrives, and when an attempt's text is void because
//! that attempt failed part-way and the call is being tried again.

use super::Usage;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// One event of a streaming call, in order. Attempts are numbered from 1 across
/// the whole chain (retries and fallbacks), as `CallOutcome::attempts` counts them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// An attempt starts: the deltas that follow belong to it.
    Attempt {
        attempt: u32,
        provider: String,
        model: String,
    },
    /// Text, exactly as the model wrote it; an attempt's deltas joined are its text.
    Delta { attempt: u32, text: String },
    /// The attempt failed after it had streamed text: all of its deltas are void
    /// and never part of the answer. Sent only when the attempt had sent text.
    Discard { attempt: u32, reason: String },
}

/// Where a streaming call sends its events, and how long a stream may go quiet.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    pub events: UnboundedSender<StreamEvent>,
    /// A gap between two chunks longer than this fails the attempt (it is
    /// retried like a timeout). The whole call still has `CallPolicy::timeout`.
    pub idle_timeout: Duration,
}

impl StreamOptions {
    /// A gap this long between chunks is taken for a dead stream. Generous:
    /// a model may think for a while before its first token.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

    pub fn new(events: UnboundedSender<StreamEvent>) -> Self {
        Self {
            events,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// The receiving end handed to a provider for one attempt: text deltas, and the
/// usage the provider reported so far (kept for the attempt log if it fails).
#[derive(Debug, Clone)]
pub struct DeltaSink {
    attempt: u32,
    events: Option<UnboundedSender<StreamEvent>>,
    state: Arc<Mutex<SinkState>>,
}

#[derive(Debug, Default)]
struct SinkState {
    sent_bytes: usize,
    usage: Option<Usage>,
}

impl DeltaSink {
    pub fn new(attempt: u32, events: UnboundedSender<StreamEvent>) -> Self {
        Self {
            attempt,
            events: Some(events),
            state: Default::default(),
        }
    }

    /// A sink that only counts: for a caller that wants the final answer alone.
    pub fn counting() -> Self {
        Self {
            attempt: 1,
            events: None,
            state: Default::default(),
        }
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Send a piece of text (empty pieces are dropped). A consumer that went
    /// away does not stop the call: its answer is still wanted.
    pub fn delta(&self, text: &str) {
        if text.is_empty() {
            return;
        }
        self.lock().sent_bytes += text.len();
        if let Some(events) = &self.events {
            let _ = events.send(StreamEvent::Delta {
                attempt: self.attempt,
                text: text.to_owned(),
            });
        }
    }

    /// Usage as reported so far (a stream reports input tokens first, output last).
    pub fn report_usage(&self, usage: Usage) {
        self.lock().usage = Some(usage);
    }

    pub fn sent_bytes(&self) -> usize {
        self.lock().sent_bytes
    }

    pub fn reported_usage(&self) -> Option<Usage> {
        self.lock().usage
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The text a reader ends up with: every attempt's deltas in order, less the
/// attempts that were discarded. For a finished call it equals the answer.
pub fn reassemble<'a>(events: impl IntoIterator<Item = &'a StreamEvent>) -> String {
    let mut attempts: Vec<(u32, String)> = Vec::new();
    for event in events {
        match event {
            StreamEvent::Attempt { attempt, .. } => attempts.push((*attempt, String::new())),
            StreamEvent::Delta { attempt, text } => {
                match attempts.iter_mut().rev().find(|(a, _)| a == attempt) {
                    Some((_, t)) => t.push_str(text),
                    None => attempts.push((*attempt, text.clone())),
                }
            }
            StreamEvent::Discard { attempt, .. } => attempts.retain(|(a, _)| a != attempt),
        }
    }
    attempts.into_iter().map(|(_, t)| t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discarded_attempt_leaves_nothing_in_the_reassembled_text() {
        let d = |attempt, text: &str| StreamEvent::Delta {
            attempt,
            text: text.into(),
        };
        let start = |attempt| StreamEvent::Attempt {
            attempt,
            provider: "openai".into(),
            model: "m".into(),
        };
        let events = vec![
            start(1),
            d(1, "Once upon"),
            StreamEvent::Discard {
                attempt: 1,
                reason: "connection dropped".into(),
            },
            start(2),
            d(2, "Once "),
            d(2, "upon a time"),
        ];
        assert_eq!(reassemble(&events), "Once upon a time");
        assert_eq!(reassemble(&events[..2]), "Once upon");
    }

    #[test]
    fn the_sink_counts_text_and_keeps_the_latest_usage() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sink = DeltaSink::new(3, tx);
        sink.delta("");
        sink.delta("héllo");
        sink.report_usage(Usage {
            input_tokens: 5,
            output_tokens: 0,
        });
        sink.report_usage(Usage {
            input_tokens: 5,
            output_tokens: 2,
        });
        assert_eq!(sink.sent_bytes(), "héllo".len());
        assert_eq!(sink.reported_usage().map(|u| u.output_tokens), Some(2));
        assert_eq!(
            rx.try_recv().ok(),
            Some(StreamEvent::Delta {
                attempt: 3,
                text: "héllo".into()
            })
        );
        assert!(rx.try_recv().is_err(), "the empty delta was not sent");
    }
}
