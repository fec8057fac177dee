//! Anthropic Messages API.

use super::sse::{self, HttpApi, Parse, StreamDecoder};
use super::{summarize, ChatRequest, ChatResponse, ProviderError, Usage};
use crate::secret::Secret;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

pub const API_VERSION: &str = "2023-06-01";
/// Anthropic requires max_tokens; this is used when a step gives none.
const DEFAULT_MAX_TOKENS: u32 = 4096;

pub struct Anthropic {
    pub http: reqwest::Client,
    /// e.g. https://api.anthropic.com/v1
    pub base_url: String,
    pub api_key: Option<Secret>,
}

#[derive(Deserialize)]
struct Message {
    content: Vec<Block>,
    #[serde(default)]
    usage: Option<AnUsage>,
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct AnUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

pub fn body(req: &ChatRequest) -> Value {
    let mut prompt = req.prompt.clone();
    if req.json {
        prompt.push_str("\n\nAnswer with a single JSON value and nothing else.");
    }
    let mut body = json!({
        "model": req.model,
        "max_tokens": req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": [{"role": "user", "content": prompt}],
    });
    if let Some(system) = &req.system {
        body["system"] = json!(system);
    }
    if let Some(t) = req.temperature {
        // Anthropic accepts 0..=1.
        body["temperature"] = json!(t.min(1.0));
    }
    body
}

/// The streaming body: the answer comes as `message_start`, `content_block_delta`s,
/// `message_delta` (with the output token count) and `message_stop`.
pub fn stream_body(req: &ChatRequest) -> Value {
    let mut body = body(req);
    body["stream"] = json!(true);
    body
}

fn parse(text: &str) -> Result<ChatResponse, ProviderError> {
    let parsed: Message =
        serde_json::from_str(text).map_err(|_| ProviderError::malformed("not a message"))?;
    let content: String = parsed
        .content
        .iter()
        .filter(|b| b.kind == "text")
        .filter_map(|b| b.text.as_deref())
        .collect();
    if content.is_empty() {
        return Err(ProviderError::malformed("no text content"));
    }
    let usage = parsed
        .usage
        .map(|u| Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
        })
        .unwrap_or_default();
    Ok(ChatResponse {
        text: content,
        usage,
        note: None,
    })
}

/// An `error` event: overload and server errors are retried, the request's own
/// faults are not.
fn stream_error(error: &Value) -> ProviderError {
    let kind = error["type"].as_str().unwrap_or("error");
    let message = format!(
        "{kind} event in the stream: {}",
        summarize(error["message"].as_str().unwrap_or("no message"))
    );
    let permanent = matches!(
        kind,
        "invalid_request_error" | "authentication_error" | "permission_error" | "not_found_error"
    );
    ProviderError::in_answer(permanent, message)
}

#[derive(Default)]
pub(crate) struct Decoder {
    stopped: bool,
    usage: Option<Usage>,
}

impl StreamDecoder for Decoder {
    fn event(&mut self, _name: &str, data: &str) -> Result<Option<String>, ProviderError> {
        let event: Value = sse::chunk(data, "a message stream event")?;
        let count = |v: &Value| v.as_u64();
        match event["type"].as_str() {
            Some("message_start") => {
                let u = &event["message"]["usage"];
                self.usage = Some(Usage {
                    input_tokens: count(&u["input_tokens"]).unwrap_or(0),
                    output_tokens: count(&u["output_tokens"]).unwrap_or(0),
                });
            }
            Some("content_block_delta") => {
                let delta = &event["delta"];
                if delta["type"] == "text_delta" {
                    return match delta["text"].as_str() {
                        Some(t) => Ok(Some(t.to_owned())),
                        None => Err(ProviderError::malformed("a text_delta without text")),
                    };
                }
            }
            Some("message_delta") => {
                // Counts here are cumulative for the whole message.
                let u = &event["usage"];
                let mut usage = self.usage.unwrap_or_default();
                if let Some(n) = count(&u["output_tokens"]) {
                    usage.output_tokens = n;
                }
                if let Some(n) = count(&u["input_tokens"]) {
                    usage.input_tokens = n;
                }
                self.usage = Some(usage);
            }
            Some("message_stop") => self.stopped = true,
            Some("error") => return Err(stream_error(&event["error"])),
            // ping, content_block_start/stop, and event types added later.
            Some(_) => {}
            None => return Err(ProviderError::malformed("an event without a type")),
        }
        Ok(None)
    }

    fn done(&self) -> bool {
        self.stopped
    }

    fn complete(&self) -> bool {
        self.stopped
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

impl HttpApi for Anthropic {
    type Decoder = Decoder;
    const PARSE: Parse = parse;

    fn request(
        &self,
        req: &ChatRequest,
        stream: bool,
        timeout: Duration,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let body = match stream {
            true => stream_body(req),
            false => body(req),
        };
        let mut request = self
            .http
            .post(format!("{}/messages", self.base_url))
            .timeout(timeout)
            .header("anthropic-version", API_VERSION)
            .json(&body);
        if let Some(key) = &self.api_key {
            request = request.header("x-api-key", key.expose());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_stream_gives_text_and_exact_usage() {
        let mut d = Decoder::default();
        let events = [
            r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude","stop_reason":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"ping"}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"!"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
        ];
        let text: String = events
            .iter()
            .filter_map(|e| d.event("message", e).unwrap())
            .collect();
        assert_eq!(text, "Hello!");
        assert!(!d.complete());
        d.event("message_stop", r#"{"type":"message_stop"}"#)
            .unwrap();
        assert!(d.complete() && d.done());
        assert_eq!(
            d.usage(),
            Some(Usage {
                input_tokens: 25,
                output_tokens: 15
            })
        );
    }

    #[test]
    fn an_error_event_fails_the_attempt_by_its_kind() {
        for (kind, permanent) in [("overloaded_error", false), ("invalid_request_error", true)] {
            let event = format!(r#"{{"type":"error","error":{{"type":"{kind}","message":"m"}}}}"#);
            let e = Decoder::default().event("error", &event).unwrap_err();
            assert_eq!(
                matches!(e, ProviderError::Permanent { .. }),
                permanent,
                "{e:?}"
            );
        }
    }
}
