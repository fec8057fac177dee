//! Google Gemini generateContent.

use super::{send, ChatProvider, ChatRequest, ChatResponse, ProviderError, Usage};
use crate::secret::Secret;
use async_trait::async_trait;
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
struct Candidate {
    #[serde(default)]
    content: Option<Content>,
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

#[derive(Deserialize)]
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

#[async_trait]
impl ChatProvider for Gemini {
    async fn chat(
        &self,
        req: &ChatRequest,
        timeout: Duration,
    ) -> Result<ChatResponse, ProviderError> {
        // The model name goes in the path: refuse anything that could change the path.
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
        let mut request = self
            .http
            .post(format!(
                "{}/models/{}:generateContent",
                self.base_url, req.model
            ))
            .timeout(timeout)
            .json(&body(req));
        if let Some(key) = &self.api_key {
            request = request.header("x-goog-api-key", key.expose());
        }
        let text = send(request).await?;
        let parsed: Generated = serde_json::from_str(&text)
            .map_err(|_| ProviderError::malformed("not a generateContent response"))?;
        let content: String = parsed
            .candidates
            .first()
            .and_then(|c| c.content.as_ref())
            .map(|c| c.parts.iter().filter_map(|p| p.text.as_deref()).collect())
            .unwrap_or_default();
        if content.is_empty() {
            return Err(ProviderError::malformed(
                "no candidates[0].content.parts[].text",
            ));
        }
        let usage = parsed
            .usage_metadata
            .map(|u| Usage {
                input_tokens: u.prompt_token_count,
                output_tokens: u.candidates_token_count,
            })
            .unwrap_or_default();
        Ok(ChatResponse {
            text: content,
            usage,
            note: None,
        })
    }
}
