//! Google Gemini generateContent.

use super::sse::{self, HttpApi, Parse, StreamDecoder};
use super::{summarize, ChatRequest, ChatResponse, ProviderError, Usage};
use crate::secret::Secret;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

pub struct Gemini {
    pub http: reqwest::Client,
    /// e.g. https://generativelanguage.googleapis.com/v1beta
    pub base_url: String,
    pub api_key: Option<Secret>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Generated {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    usage_metadata: Option<GeUsage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    finish_reason: Option<String>,
}

/// One streamed chunk: a generateContent response, or an `error` object.
#[derive(Deserialize)]
struct Chunk {
    #[serde(flatten)]
    generated: Generated,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Deserialize)]
struct Part {
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct GeUsage {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
}

pub fn body(req: &ChatRequest) -> Value {
    let mut body = json!({"contents": [{"role": "user", "parts": [{"text": req.prompt}]}]});
    if let Some(system) = &req.system {
        body["systemInstruction"] = json!({"parts": [{"text": system}]});
    }
    let mut config = serde_json::Map::new();
    if let Some(t) = req.temperature {
        config.insert("temperature".into(), json!(t));
    }
    if let Some(m) = req.max_tokens {
        config.insert("maxOutputTokens".into(), json!(m));
    }
    if req.json {
        config.insert("responseMimeType".into(), json!("application/json"));
    }
    if !config.is_empty() {
        body["generationConfig"] = Value::Object(config);
    }
    body
}

impl From<GeUsage> for Usage {
    fn from(u: GeUsage) -> Self {
        Usage {
            input_tokens: u.prompt_token_count,
            output_tokens: u.candidates_token_count,
        }
    }
}

/// The text of a response's first candidate.
fn candidate_text(g: &Generated) -> String {
    g.candidates
        .first()
        .and_then(|c| c.content.as_ref())
        .map(|c| c.parts.iter().filter_map(|p| p.text.as_deref()).collect())
        .unwrap_or_default()
}

fn parse(text: &str) -> Result<ChatResponse, ProviderError> {
    let parsed: Generated = serde_json::from_str(text)
        .map_err(|_| ProviderError::malformed("not a generateContent response"))?;
    let content = candidate_text(&parsed);
    if content.is_empty() {
        return Err(ProviderError::malformed(
            "no candidates[0].content.parts[].text",
        ));
    }
    Ok(ChatResponse {
        text: content,
        usage: parsed.usage_metadata.map(Usage::from).unwrap_or_default(),
        note: None,
    })
}

/// An `error` object sent mid-stream (Google's `{code, message, status}`).
fn stream_error(error: &Value) -> ProviderError {
    let code = error["code"].as_u64().and_then(|c| u16::try_from(c).ok());
    let message = format!(
        "error in the stream: {}",
        summarize(error["message"].as_str().unwrap_or("no message"))
    );
    let permanent = code.is_some_and(|c| c >= 400 && !ProviderError::retryable_status(c));
    ProviderError::in_answer(permanent, message)
}

/// Gemini's stream has no terminal event: it is finished when a candidate
/// carries a `finishReason`, and over when the connection closes.
#[derive(Default)]
pub(crate) struct Decoder {
    finished: bool,
    usage: Option<Usage>,
}

impl StreamDecoder for Decoder {
    fn event(&mut self, _name: &str, data: &str) -> Result<Option<String>, ProviderError> {
        let chunk: Chunk = sse::chunk(data, "a generateContent chunk")?;
        if let Some(error) = &chunk.error {
            return Err(stream_error(error));
        }
        // Each chunk's usageMetadata covers the answer so far; the last is exact.
        if let Some(u) = chunk.generated.usage_metadata {
            self.usage = Some(u.into());
        }
        if chunk
            .generated
            .candidates
            .first()
            .is_some_and(|c| c.finish_reason.is_some())
        {
            self.finished = true;
        }
        Ok(Some(candidate_text(&chunk.generated)))
    }

    fn done(&self) -> bool {
        false
    }

    fn complete(&self) -> bool {
        self.finished
    }

    fn usage(&self) -> Option<Usage> {
        self.usage
    }
}

impl HttpApi for Gemini {
    type Decoder = Decoder;
    const PARSE: Parse = parse;

    /// The model name goes in the path: refuse anything that could change the path.
    fn request(
        &self,
        req: &ChatRequest,
        stream: bool,
        timeout: Duration,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        if req.model.is_empty()
            || !req
                .model
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        {
            return Err(ProviderError::Permanent {
                status: None,
                message: "invalid Gemini model name".into(),
            });
        }
        let method = match stream {
            true => "streamGenerateContent?alt=sse",
            false => "generateContent",
        };
        let mut request = self
            .http
            .post(format!("{}/models/{}:{method}", self.base_url, req.model))
            .timeout(timeout)
            .json(&body(req));
        if let Some(key) = &self.api_key {
            request = request.header("x-goog-api-key", key.expose());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_give_text_and_the_last_usage() {
        let mut d = Decoder::default();
        let chunks = [
            r#"{"candidates":[{"content":{"parts":[{"text":"Once "}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":8,"totalTokenCount":8},"modelVersion":"gemini-2.0-flash"}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"upon"},{"text":" a time"}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":3,"totalTokenCount":11}}"#,
        ];
        let text: String = chunks
            .iter()
            .filter_map(|c| d.event("message", c).unwrap())
            .collect();
        assert_eq!(text, "Once upon a time");
        assert!(!d.complete(), "no finishReason yet");
        d.event(
            "message",
            r#"{"candidates":[{"content":{"parts":[{"text":"."}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":4,"totalTokenCount":12}}"#,
        )
        .unwrap();
        assert!(d.complete());
        assert_eq!(
            d.usage(),
            Some(Usage {
                input_tokens: 8,
                output_tokens: 4
            })
        );
    }

    #[test]
    fn an_error_object_fails_the_attempt() {
        let mut d = Decoder::default();
        let e = d
            .event(
                "message",
                r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#,
            )
            .unwrap_err();
        assert!(matches!(e, ProviderError::Transient { .. }), "{e:?}");
        assert!(d.event("message", "{\"candidates\": [").is_err());
    }
}
