//! OpenAI chat completions, and every OpenAI-compatible endpoint (Ollama,
//! OpenRouter, Groq, vLLM, the offline provider) by base URL.

use super::{send, ChatProvider, ChatRequest, ChatResponse, ProviderError, Usage};
use crate::secret::Secret;
use async_trait::async_trait;
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

#[derive(Deserialize)]
struct OaUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
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

#[async_trait]
impl ChatProvider for OpenAi {
    async fn chat(
        &self,
        req: &ChatRequest,
        timeout: Duration,
    ) -> Result<ChatResponse, ProviderError> {
        let mut request = self
            .http
            .post(format!("{}/chat/completions", self.base_url))
            .timeout(timeout)
            .json(&body(req, self.native));
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key.expose());
        }
        let text = send(request).await?;
        let parsed: Completion = serde_json::from_str(&text)
            .map_err(|_| ProviderError::malformed("not a chat completion"))?;
        let content = parsed
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .ok_or_else(|| ProviderError::malformed("no choices[0].message.content"))?;
        let usage = parsed
            .usage
            .map(|u| Usage {
                input_tokens: u.prompt_tokens,
                output_tokens: u.completion_tokens,
            })
            .unwrap_or_default();
        Ok(ChatResponse {
            text: content,
            usage,
            note: None,
        })
    }
}
