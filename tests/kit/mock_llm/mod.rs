//! Local mock servers that speak each provider's real wire format (OpenAI chat
//! completions, also what Ollama and compatible servers speak, Anthropic messages,
//! Gemini generateContent, and each one's streaming form), record what the client
//! sent, and inject faults, including faults in the middle of a stream.
//!
//! The benchmarks' provider is the same server in another mode
//! ([`MockProvider::fixed_latency`]): the same answer for every call after a fixed
//! latency, over which a stream's text is spread evenly, and only counts kept.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use wire::{
    answer_text, error_frame, even_pieces, frame, frames, prompt_of, whole_answer, words, Frames,
};

mod wire;

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
    // Streaming faults, after this many text chunks (a whole answer gets `Truncated`):
    /// The connection drops.
    BreakAfter(usize),
    /// A chunk that is not JSON.
    MalformedChunkAfter(usize),
    /// The provider's own error event (`error` object / `event: error`).
    ErrorEventAfter(usize),
    /// Nothing more is sent and the connection stays open.
    StallAfter(usize),
    /// The stream ends cleanly but without its terminal event or finish reason.
    EndWithoutTerminalAfter(usize),
    /// Keep-alives (Anthropic's `ping`, an SSE comment elsewhere) every 20 ms,
    /// for as long as the client listens.
    PingForeverAfter(usize),
}

impl Fault {
    fn in_stream(&self) -> Option<usize> {
        match self {
            Fault::BreakAfter(n)
            | Fault::MalformedChunkAfter(n)
            | Fault::ErrorEventAfter(n)
            | Fault::StallAfter(n)
            | Fault::EndWithoutTerminalAfter(n)
            | Fault::PingForeverAfter(n) => Some(*n),
            _ => None,
        }
    }
}

/// Holds a stream back after some chunks until the test opens it.
#[derive(Clone)]
pub struct Gate(Arc<Semaphore>);

impl Gate {
    pub fn open(&self) {
        self.0.add_permits(1 << 20);
    }
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
        prompt_of(&self.body)
    }
}

/// What the mock writes.
#[derive(Clone, Copy, Debug, Default)]
pub enum Answers {
    /// The outline "The Mock Book" (Alpha, Beta, Gamma), prose naming the prompt's
    /// first line, and a stream's text marked with its call's number ([`streamed_text`]).
    #[default]
    Echo,
    /// An outline of `chapters` chapters and one fixed paragraph: the same work for
    /// every call of a benchmark.
    Fixed { chapters: usize },
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
    /// Between two text chunks of a stream.
    chunk_interval: Duration,
    /// After this many text chunks, the next stream waits for the gate.
    hold: Option<(usize, Gate)>,
    /// Answer whole even when a stream is asked for (as some compatible servers do).
    ignore_stream: bool,
    answers: Answers,
    /// Cut a stream's text into this many even pieces (fewer when they would be
    /// empty) rather than one piece a word.
    stream_pieces: Option<usize>,
    /// A stream spends the latency sending its text, one piece every latency/pieces
    /// from its start, instead of waiting the latency before its first piece.
    spread_latency: bool,
    /// Keep no copy of the calls (a benchmark makes tens of thousands): counts only.
    forget_calls: bool,
}

#[derive(Clone)]
struct Shared {
    kind: Kind,
    calls: Arc<Mutex<Vec<Recorded>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    /// Streams whose body is still being sent (a closed connection drops it).
    open_streams: Arc<AtomicUsize>,
    counters: Arc<Counters>,
    /// A fixed answer's stream, rendered once per (model, usage asked, text, pieces): a
    /// benchmark's tens of thousands of calls then cost the mock what a whole answer
    /// costs it, not 40 JSON encodings each (its CPU shares the machine being measured).
    rendered: Arc<Mutex<HashMap<RenderKey, Rendered>>>,
}

/// (model, usage asked, text, pieces): what a fixed answer's stream depends on.
type RenderKey = (String, bool, String, usize);

/// A stream's frames as written: the head and the tail one write each, a write per
/// text piece. Cloning shares the bytes.
#[derive(Clone)]
struct Rendered {
    head: bytes::Bytes,
    text: Vec<bytes::Bytes>,
    tail: bytes::Bytes,
}

impl From<Frames> for Rendered {
    fn from(f: Frames) -> Self {
        Self {
            head: f.head.concat().into(),
            text: f.text.into_iter().map(Into::into).collect(),
            tail: f.tail.concat().into(),
        }
    }
}

#[derive(Default)]
struct Counters {
    /// Calls made since the start (or the last reset), recorded or not.
    calls: AtomicU64,
    /// Calls not yet answered: a stream counts until its text is sent.
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// Counts a call as in flight until dropped.
struct InFlight(Arc<Counters>);

impl InFlight {
    fn new(counters: &Arc<Counters>) -> Self {
        let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(counters.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a stream as open for as long as its body lives.
struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
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
            open_streams: Default::default(),
            behaviour: Default::default(),
            counters: Default::default(),
            rendered: Default::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock");
        let port = listener.local_addr().expect("addr").port();
        let app = Router::new().fallback(handle).with_state(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(bookengine::net::nodelay(listener), app).await;
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

    /// The benchmarks' provider: OpenAI's format; every call answered after `latency`
    /// with an outline of `chapters` chapters or a fixed paragraph, a stream's text in
    /// [`BENCH_STREAM_PIECES`] pieces spread evenly over the latency (deadlines from the
    /// stream's start: each sleep in a row would overshoot by up to a timer tick);
    /// counts kept, calls not.
    pub async fn fixed_latency(latency: Duration, chapters: usize) -> MockProvider {
        let mock = MockProvider::start(Kind::OpenAi).await;
        if let Ok(mut b) = mock.shared.behaviour.lock() {
            b.latency = latency;
            b.answers = Answers::Fixed { chapters };
            b.stream_pieces = Some(BENCH_STREAM_PIECES);
            b.spread_latency = true;
            b.forget_calls = true;
        }
        mock
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

    /// Stream text at a fixed rate: one chunk (a word) per `d`.
    pub fn chunk_interval(&self, d: Duration) {
        if let Ok(mut b) = self.shared.behaviour.lock() {
            b.chunk_interval = d;
        }
    }

    /// Calls made since the start or the last [`MockProvider::reset_counts`].
    pub fn call_count(&self) -> u64 {
        self.shared.counters.calls.load(Ordering::SeqCst)
    }

    /// The most calls in flight at once since the start or the last reset.
    pub fn max_in_flight(&self) -> u64 {
        self.shared.counters.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn reset_counts(&self) {
        let c = &self.shared.counters;
        c.calls.store(0, Ordering::SeqCst);
        c.max_in_flight.store(0, Ordering::SeqCst);
    }

    /// Streams this mock is still sending.
    pub fn open_streams(&self) -> usize {
        self.shared.open_streams.load(Ordering::SeqCst)
    }

    /// Answer `stream: true` requests with a whole JSON answer.
    pub fn ignore_stream(&self, on: bool) {
        if let Ok(mut b) = self.shared.behaviour.lock() {
            b.ignore_stream = on;
        }
    }

    /// The next stream sends `chunks` text chunks, then waits until the gate opens.
    pub fn hold_after(&self, chunks: usize) -> Gate {
        let gate = Gate(Arc::new(Semaphore::new(0)));
        if let Ok(mut b) = self.shared.behaviour.lock() {
            b.hold = Some((chunks, gate.clone()));
        }
        gate
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

async fn handle(State(s): State<Shared>, req: Request) -> Response {
    let in_flight = InFlight::new(&s.counters);
    let path = req.uri().path().to_owned();
    let (ignore_stream, forget_calls) = s
        .behaviour
        .lock()
        .map(|b| (b.ignore_stream, b.forget_calls))
        .unwrap_or((false, false));
    let headers: Vec<(String, String)> = if forget_calls {
        Vec::new()
    } else {
        req.headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let bytes = axum::body::to_bytes(req.into_body(), 1 << 24)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let prompt = prompt_of(&body);
    // The call's number and its scripted fault are taken under one lock, so that
    // two calls arriving together cannot both read the later number, and the
    // call marked "[call 1]" is the one that got the first scripted fault.
    let (call, streaming, fault, latency, pace, hold, answers, pieces) = {
        let mut calls = s.calls.lock().expect("calls");
        let call = s.counters.calls.fetch_add(1, Ordering::SeqCst) as usize + 1;
        if !forget_calls {
            calls.push(Recorded {
                path: path.clone(),
                headers,
                body: body.clone(),
            });
        }
        let streaming = !ignore_stream
            && match s.kind {
                Kind::OpenAi | Kind::Anthropic => body["stream"] == true,
                Kind::Gemini => path.contains(":streamGenerateContent"),
            };
        let (fault, latency, pace, hold, answers, pieces) = {
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
            let hold = if streaming { b.hold.take() } else { None };
            let pace = if b.spread_latency {
                Pace::Spread(b.latency)
            } else {
                Pace::Interval(b.chunk_interval)
            };
            (f, b.latency, pace, hold, b.answers, b.stream_pieces)
        };
        (call, streaming, fault, latency, pace, hold, answers, pieces)
    };
    // A stream's own faults come mid-stream; given a whole answer they cut it short.
    let (fault, stream_fault) = match fault {
        Some(f) if f.in_stream().is_some() => {
            if streaming {
                (None, Some(f))
            } else {
                (Some(Fault::Truncated), None)
            }
        }
        Some(Fault::MalformedJson) if streaming => (None, Some(Fault::MalformedChunkAfter(1))),
        Some(Fault::Truncated) if streaming => (None, Some(Fault::BreakAfter(1))),
        f => (f, None),
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
        // Mid-stream faults were moved to `stream_fault` above.
        Some(_) | None => {}
    }
    // A stream spreading its latency spends it sending.
    let spent_sending = streaming && matches!(pace, Pace::Spread(_));
    if !latency.is_zero() && !spent_sending {
        tokio::time::sleep(latency).await;
    }
    let wants_json = match s.kind {
        Kind::OpenAi => body["response_format"]["type"] == "json_object",
        Kind::Anthropic => prompt.contains("single JSON value"),
        Kind::Gemini => body["generationConfig"]["responseMimeType"] == "application/json",
    };
    let text = answer_text(answers, &prompt, wants_json);
    if streaming {
        let text = match answers {
            Answers::Echo => streamed_text(call, &text),
            Answers::Fixed { .. } => text,
        };
        let pieces = match pieces {
            Some(n) => even_pieces(&text, n),
            None => words(&text),
        };
        let include_usage = body["stream_options"]["include_usage"] == true;
        let render = || Rendered::from(frames(s.kind, &body["model"], &pieces, include_usage));
        let frames = match answers {
            Answers::Echo => render(),
            Answers::Fixed { .. } => {
                let key = (
                    body["model"].to_string(),
                    include_usage,
                    text.clone(),
                    pieces.len(),
                );
                let mut cache = s.rendered.lock().expect("rendered");
                if cache.len() > 64 {
                    cache.clear();
                }
                cache.entry(key).or_insert_with(render).clone()
            }
        };
        let open = OpenStream::new(&s.open_streams);
        return stream_response(s.kind, frames, pace, hold, stream_fault, (open, in_flight));
    }
    axum::Json(whole_answer(s.kind, &body["model"], &text)).into_response()
}

/// The text a streamed answer carries: marked with the call's number, so that
/// the text of an attempt that was cut can be told from the one that finished.
pub fn streamed_text(call: usize, text: &str) -> String {
    format!("[call {call}] {text}")
}

/// Usage each format's answers report (whole or streamed).
pub const OPENAI_USAGE: (u64, u64) = (11, 7);
pub const ANTHROPIC_USAGE: (u64, u64) = (13, 5);
pub const GEMINI_USAGE: (u64, u64) = (17, 3);

/// Text pieces a benchmark's stream is cut into.
pub const BENCH_STREAM_PIECES: usize = 40;

/// How a stream's text pieces are spaced.
#[derive(Clone, Copy)]
enum Pace {
    /// This long between two pieces, the first at once.
    Interval(Duration),
    /// The pieces evenly over this long, the last at its end.
    Spread(Duration),
}

fn stream_response(
    kind: Kind,
    frames: Rendered,
    pace: Pace,
    hold: Option<(usize, Gate)>,
    fault: Option<Fault>,
    (open, in_flight): (OpenStream, InFlight),
) -> Response {
    let at = fault.as_ref().and_then(Fault::in_stream);
    let start = tokio::time::Instant::now();
    let pieces = frames.text.len().max(1) as u32;
    let body = async_stream::stream! {
        let _open = open;
        // Frames around the text go out as one write each side, as a provider's server
        // sends them: a frame per write would cost the reader a read per frame.
        if !frames.head.is_empty() {
            yield Ok::<_, std::io::Error>(frames.head);
        }
        for (i, f) in frames.text.into_iter().enumerate() {
            if let Some((n, gate)) = &hold {
                if i == *n {
                    let _ = gate.0.acquire().await;
                }
            }
            if at == Some(i) {
                break;
            }
            match pace {
                Pace::Interval(d) if i > 0 && !d.is_zero() => tokio::time::sleep(d).await,
                Pace::Spread(d) if !d.is_zero() => {
                    tokio::time::sleep_until(start + d / pieces * (i as u32 + 1)).await;
                }
                _ => {}
            }
            yield Ok(f);
        }
        if let Some(fault) = &fault {
            // Let the chunks before the fault reach the client first (an aborted
            // connection may lose what was still buffered).
            tokio::time::sleep(Duration::from_millis(100)).await;
            match fault {
                Fault::BreakAfter(_) => {
                    yield Err(std::io::Error::other("injected: connection dropped"));
                }
                Fault::MalformedChunkAfter(_) => {
                    let data = match kind {
                        Kind::Anthropic => "event: content_block_delta\ndata: {\"type\": \"content_bl\n\n",
                        _ => "data: {\"choices\": [{\"delta\n\n",
                    };
                    yield Ok(bytes::Bytes::from(data));
                }
                Fault::ErrorEventAfter(_) => yield Ok(bytes::Bytes::from(error_frame(kind))),
                Fault::StallAfter(_) => futures::future::pending::<()>().await,
                Fault::PingForeverAfter(_) => loop {
                    let ping = match kind {
                        Kind::Anthropic => frame(Some("ping"), &json!({"type": "ping"})),
                        _ => ": keep-alive\n\n".to_owned(),
                    };
                    yield Ok(bytes::Bytes::from(ping));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                },
                _ => {}
            }
            return;
        }
        // The text is all sent: the call is answered.
        drop(in_flight);
        if !frames.tail.is_empty() {
            yield Ok(frames.tail);
        }
    };
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_default()
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

    /// Calls made to the three.
    pub fn call_count(&self) -> u64 {
        self.openai.call_count() + self.anthropic.call_count() + self.gemini.call_count()
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
