//! Anthropic Messages API.

use super::{send, ChatProvider, ChatRequest, ChatResponse, ProviderError, Usage};
use crate::secret::Secret;
use async_trait::async_trait;
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

#[async_trait]
impl ChatProvider for Anthropic {
    async fn chat(
        &self,
        req: &ChatRequest,
        timeout: Duration,
    ) -> Result<ChatResponse, ProviderError> {
        let mut request = self
            .http
            .post(format!("{}/messages", self.base_url))
            .timeout(timeout)
            .header("anthropic-version", API_VERSION)
            .json(&body(req));
        if let Some(key) = &self.api_key {
            request = request.header("x-api-key", key.expose());
        }
        let text = send(request).await?;
        let parsed: Message =
            serde_json::from_str(&text).map_err(|_| ProviderError::malformed("not a message"))?;
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
}
