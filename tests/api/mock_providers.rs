//! Local mock servers that speak each provider's real wire format (OpenAI chat
//! completions, Anthropic messages, Gemini generateContent), record what the
//! client sent, and inject faults.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    OpenAi,
    Anthropic,
    Gemini,
}

#[derive(Debug, Clone)]
pub enum Fault {
    Status(u16),
    /// 429 with `Retry-After: secs`.
    RateLimited(u64),
    MalformedJson,
    /// Content-Length larger than the body, then the connection closes.
    Truncated,
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The user prompt, whatever the wire format.
    pub fn prompt(&self) -> String {
        let b = &self.body;
        if let Some(msgs) = b["messages"].as_array() {
            return msgs
                .iter()
                .filter(|m| m["role"] == "user")
                .filter_map(|m| m["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n");
        }
        b["contents"][0]["parts"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

#[derive(Default)]
struct Behaviour {
    /// Consumed one per call before `always`.
    script: VecDeque<Fault>,
    /// Applied to every call once the script is empty.
    always: Option<Fault>,
    /// Added to every successful answer.
    latency: Duration,
    /// Share of calls (0..1) that fail with a fault from a mix, chosen by a seeded generator.
    fail_rate: f64,
    rng: u64,
}

#[derive(Clone)]
struct Shared {
    kind: Kind,
    calls: Arc<Mutex<Vec<Recorded>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

pub struct MockProvider {
    pub base_url: String,
    shared: Shared,
}

impl MockProvider {
    pub async fn start(kind: Kind) -> MockProvider {
        let shared = Shared {
            kind,
            calls: Default::default(),
            behaviour: Default::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock");
        let port = listener.local_addr().expect("addr").port();
        let app = Router::new().fallback(handle).with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let prefix = match kind {
            Kind::OpenAi | Kind::Anthropic => "/v1",
            Kind::Gemini => "/v1beta",
        };
        MockProvider {
            base_url: format!("http://127.0.0.1:{port}{prefix}"),
            shared,
        }
    }

    pub fn calls(&self) -> Vec<Recorded> {
        self.shared
            .calls
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    pub fn script(&self, faults: Vec<Fault>) {
        if let Ok(mut b) = self.shared.behaviour.lock() {
            b.script = faults.into();
        }
    }

    pub fn always(&self, fault: Option<Fault>) {
        if let Ok(mut b) = self.shared.behaviour.lock() {
            b.always = fault;
        }
    }

    /// Fail this share of calls with a mix of 500, 503, 429, malformed and truncated bodies.
    pub fn fail_rate(&self, rate: f64, seed: u64) {
        if let Ok(mut b) = self.shared.behaviour.lock() {
            b.fail_rate = rate;
            b.rng = seed.max(1);
        }
    }

    pub fn latency(&self, d: Duration) {
        if let Ok(mut b) = self.shared.behaviour.lock() {
            b.latency = d;
        }
    }
}

fn recorded_key(s: &Shared) -> String {
    let last = s.calls.lock().ok().and_then(|c| c.last().cloned());
    last.map(|c| {
        ["authorization", "x-api-key", "x-goog-api-key"]
            .iter()
            .find_map(|h| {
                c.header(h)
                    .map(|v| v.trim_start_matches("Bearer ").to_owned())
            })
            .unwrap_or_default()
    })
    .unwrap_or_default()
}

/// A JSON outline when JSON is asked for, a chapter-ish text otherwise.
fn answer_text(prompt: &str, wants_json: bool) -> String {
    if wants_json {
        json!({"title": "The Mock Book", "chapters": [
            {"title": "Alpha", "summary": "first"},
            {"title": "Beta", "summary": "second"},
            {"title": "Gamma", "summary": "third"},
        ]})
        .to_string()
    } else {
        let first = prompt.lines().next().unwrap_or_default();
        format!("Text written for: {first}")
    }
}

async fn handle(State(s): State<Shared>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let bytes = axum::body::to_bytes(req.into_body(), 1 << 24)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let recorded = Recorded {
        path: path.clone(),
        headers,
        body: body.clone(),
    };
    let prompt = recorded.prompt();
    if let Ok(mut c) = s.calls.lock() {
        c.push(recorded);
    }
    let (fault, latency) = {
        let mut b = s.behaviour.lock().expect("behaviour");
        let mut f = b.script.pop_front().or_else(|| b.always.clone());
        if f.is_none() && b.fail_rate > 0.0 {
            // xorshift64: deterministic for a seed, no extra dependency.
            let mut x = b.rng;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.rng = x;
            if (x % 10_000) as f64 / 10_000.0 < b.fail_rate {
                f = Some(match (x >> 20) % 5 {
                    0 => Fault::Status(500),
                    1 => Fault::Status(503),
                    2 => Fault::RateLimited(0),
                    3 => Fault::MalformedJson,
                    _ => Fault::Truncated,
                });
            }
        }
        (f, b.latency)
    };
    match fault {
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            // Like some real providers, echo the credential that was sent.
            let message = format!("injected; you sent {}", recorded_key(&s));
            return (
                status,
                axum::Json(json!({"error": {"message": message, "type": "mock"}})),
            )
                .into_response();
        }
        Some(Fault::RateLimited(secs)) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", secs.to_string())],
                axum::Json(json!({"error": {"message": "slow down"}})),
            )
                .into_response();
        }
        Some(Fault::MalformedJson) => {
            return (
                StatusCode::OK,
                [("content-type", "application/json")],
                "{\"choices\": [",
            )
                .into_response();
        }
        Some(Fault::Truncated) => {
            return Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .header("content-length", "5000")
                .body(Body::from("{\"choices\":[{\"message\":"))
                .unwrap_or_default();
        }
        None => {}
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let wants_json = match s.kind {
        Kind::OpenAi => body["response_format"]["type"] == "json_object",
        Kind::Anthropic => prompt.contains("single JSON value"),
        Kind::Gemini => body["generationConfig"]["responseMimeType"] == "application/json",
    };
    let text = answer_text(&prompt, wants_json);
    let out = match s.kind {
        Kind::OpenAi => json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }),
        Kind::Anthropic => json!({
            "id": "msg_mock", "type": "message", "role": "assistant", "model": body["model"],
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 13, "output_tokens": 5},
        }),
        Kind::Gemini => json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 17, "candidatesTokenCount": 3, "totalTokenCount": 20},
        }),
    };
    axum::Json(out).into_response()
}

/// The three mocks, and provider settings that point the real clients at them.
pub struct Mocks {
    pub openai: MockProvider,
    pub anthropic: MockProvider,
    pub gemini: MockProvider,
}

pub const OPENAI_KEY: &str = "sk-test-openai-0123456789abcdef";
pub const ANTHROPIC_KEY: &str = "sk-ant-test-0123456789abcdef";
pub const GEMINI_KEY: &str = "AIzaTest0123456789abcdefghijklmnopqrstu";

impl Mocks {
    pub async fn start() -> Mocks {
        Mocks {
            openai: MockProvider::start(Kind::OpenAi).await,
            anthropic: MockProvider::start(Kind::Anthropic).await,
            gemini: MockProvider::start(Kind::Gemini).await,
        }
    }

    pub fn providers(&self) -> bookengine::providers::ProvidersConfig {
        use bookengine::secret::Secret;
        bookengine::providers::ProvidersConfig {
            openai_api_key: Some(Secret::new(OPENAI_KEY)),
            openai_base_url: self.openai.base_url.clone(),
            anthropic_api_key: Some(Secret::new(ANTHROPIC_KEY)),
            anthropic_base_url: self.anthropic.base_url.clone(),
            gemini_api_key: Some(Secret::new(GEMINI_KEY)),
            gemini_base_url: self.gemini.base_url.clone(),
            provider_concurrency: 8,
            ..Default::default()
        }
    }
}
