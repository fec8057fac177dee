//! OpenAI chat completions, and every OpenAI-compatible endpoint (Ollama,
//! OpenRouter, Groq, vLLM, the offline provider) by base URL.

use super::sse::{self, HttpApi, Parse, StreamDecoder};
use super::{summarize, ChatRequest, ChatResponse, ProviderError, Usage};
use crate::secret::Secret;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

pub struct OpenAi {
    pub http: reqwest::Client,
    /// e.g. https://api.openai.com/v1 (no trailing slash).
    pub base_url: String,
    pub api_key: Option<Secret>,
    /// OpenAI's own API wants `max_completion_tokens`; compatible servers `max_tokens`.
    pub native: bool,
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<OaUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Message,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
struct OaUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl From<OaUsage> for Usage {
    fn from(u: OaUsage) -> Self {
        Usage {
            input_tokens: u.prompt_tokens,
            output_tokens: u.completion_tokens,
        }
    }
}

/// One `chat.completion.chunk` (or an `error` object sent mid-stream).
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<OaUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Option<Message>,
    #[serde(default)]
    finish_reason: Option<String>,
}

pub fn body(req: &ChatRequest, native: bool) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = &req.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": req.prompt}));
    let mut body = json!({"model": req.model, "messages": messages});
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(m) = req.max_tokens {
        let key = if native {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body[key] = json!(m);
    }
    if req.json {
        body["response_format"] = json!({"type": "json_object"});
    }
    body
}

/// The streaming body: usage comes in a last chunk whose `choices` is empty.
pub fn stream_body(req: &ChatRequest, native: bool) -> Value {
    let mut body = body(req, native);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    body
}

fn parse(text: &str) -> Result<ChatResponse, ProviderError> {
    let parsed: Completion = serde_json::from_str(text)
        .map_err(|_| ProviderError::malformed("not a chat completion"))?;
    let content = parsed
        .choices
        .into_iter()
        .next()
        .and_then(|c| c.message.content)
        .ok_or_else(|| ProviderError::malformed("no choices[0].message.content"))?;
    Ok(ChatResponse {
        text: content,
        usage: parsed.usage.map(Usage::from).unwrap_or_default(),
        note: None,
    })
}

/// An `error` object in the stream: the request's fault if OpenAI says so, else
/// the server's (retried).
pub(crate) fn stream_error(error: &Value) -> ProviderError {
    let message = format!(
        "error event in the stream: {}",
        summarize(error["message"].as_str().unwrap_or("no message"))
    );
    ProviderError::in_answer(error["type"] == "invalid_request_error", message)
}

#[derive(Default)]
pub(crate) struct Decoder {
    /// OpenAI itself always ends with `[DONE]` (after the usage chunk): a stream
    /// cut before it has lost its usage, so it is not complete without it.
    require_done: bool,
    done: bool,
    finished: bool,
    usage: Option<Usage>,
}

impl StreamDecoder for Decoder {
    fn event(&mut self, _name: &str, data: &str) -> Result<Option<String>, ProviderError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(None);
        }
        let chunk: Chunk = sse::chunk(data, "a chat.completion.chunk")?;
        if let Some(error) = &chunk.error {
            return Err(stream_error(error));
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(u.into());
        }
        let Some(choice) = chunk.choices.into_iter().next() else {
            return Ok(None);
        };
        if choice.finish_reason.is_some() {
            self.finished = true;
        }
        Ok(choice.delta.and_then(|d| d.content))
    }

    fn done(&self) -> bool {
        self.done
    }

    fn complete(&self) -> bool {
        // Some compatible servers just close after the finish reason.
        self.done || (self.finished && !self.require_done)
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

impl HttpApi for OpenAi {
    type Decoder = Decoder;
    const PARSE: Parse = parse;

    fn request(
        &self,
        req: &ChatRequest,
        stream: bool,
        timeout: Duration,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let body = match stream {
            true => stream_body(req, self.native),
            false => body(req, self.native),
        };
        let mut request = self
            .http
            .post(format!("{}/chat/completions", self.base_url))
            .timeout(timeout)
            .json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(d: &mut Decoder, data: &str) -> Result<Option<String>, ProviderError> {
        d.event("message", data)
    }

    #[test]
    fn chunks_give_deltas_then_usage_then_done() {
        let mut d = Decoder::default();
        let text: String = [
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#,
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}],"usage":null}"#,
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}],"usage":null}"#,
            r#"{"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
            r#"{"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#,
        ]
        .iter()
        .filter_map(|c| feed(&mut d, c).unwrap())
        .collect();
        assert_eq!(text, "Hello");
        assert!(d.complete() && !d.done());
        assert_eq!(
            d.usage(),
            Some(Usage {
                input_tokens: 9,
                output_tokens: 2
            })
        );
        assert_eq!(feed(&mut d, "[DONE]").unwrap(), None);
        assert!(d.done());
    }

    #[test]
    fn openai_itself_is_complete_only_at_done() {
        let mut d = Decoder {
            require_done: true,
            ..Decoder::default()
        };
        feed(
            &mut d,
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":"stop"}]}"#,
        )
        .unwrap();
        assert!(
            !d.complete(),
            "the usage chunk and [DONE] are still to come"
        );
        feed(&mut d, "[DONE]").unwrap();
        assert!(d.complete());
    }

    #[test]
    fn malformed_chunks_and_error_objects_fail_the_attempt() {
        let mut d = Decoder::default();
        assert!(matches!(
            feed(&mut d, r#"{"choices": ["#),
            Err(ProviderError::Transient { .. })
        ));
        let e = feed(
            &mut d,
            r#"{"error":{"message":"The server had an error","type":"server_error"}}"#,
        )
        .unwrap_err();
        assert!(matches!(e, ProviderError::Transient { .. }));
        assert!(e.to_string().contains("The server had an error"));
        assert!(!d.complete());
    }

    #[test]
    fn the_stream_body_asks_for_usage() {
        let req = ChatRequest {
            model: "gpt-4o-mini".into(),
            system: None,
            prompt: "hi".into(),
            temperature: None,
            max_tokens: Some(10),
            json: false,
        };
        let b = stream_body(&req, true);
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["max_completion_tokens"], 10);
    }
}
