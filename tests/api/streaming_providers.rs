//! Streaming calls against the mock providers speaking each real wire format
//! (OpenAI chunks, Anthropic's event stream, Gemini's `alt=sse`, and the
//! OpenAI format for Ollama and compatible endpoints), the offline provider and
//! the local model: text arrives before the call ends, joins into the answer,
//! usage is exact, and an attempt cut part-way is discarded and retried.

use crate::kit::mock_llm::{
    streamed_text, Fault, MockProvider, Mocks, ANTHROPIC_USAGE, GEMINI_USAGE, OPENAI_USAGE,
};
use async_trait::async_trait;
use bookengine::flow::ModelRef;
use bookengine::providers::{
    call_with_fallbacks, call_with_fallbacks_streaming, reassemble, CallFailure, CallOutcome,
    CallPolicy, ChatProvider, ChatRequest, ChatResponse, ProviderError, ProviderRegistry,
    StreamEvent, StreamOptions, Usage,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

const PROMPT: &str = "Write chapter one about lighthouses";

/// Each provider name, its model, and which mock answers for it.
const PROVIDERS: &[(&str, &str)] = &[
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-3-5-haiku-latest"),
    ("gemini", "gemini-2.0-flash"),
    ("ollama", "llama3.2"),
    ("openai_compatible", "meta-llama/llama-3.1-8b-instruct"),
];

fn mock<'a>(mocks: &'a Mocks, provider: &str) -> &'a MockProvider {
    match provider {
        "anthropic" => &mocks.anthropic,
        "gemini" => &mocks.gemini,
        _ => &mocks.openai,
    }
}

fn usage_of(provider: &str) -> Usage {
    let (input_tokens, output_tokens) = match provider {
        "anthropic" => ANTHROPIC_USAGE,
        "gemini" => GEMINI_USAGE,
        _ => OPENAI_USAGE,
    };
    Usage {
        input_tokens,
        output_tokens,
    }
}

async fn registry(mocks: &Mocks) -> ProviderRegistry {
    let mut config = mocks.providers();
    // Ollama and other compatible servers speak OpenAI's format: the OpenAI mock.
    config.ollama_base_url = Some(mocks.openai.base_url.clone());
    config.openai_compatible_base_url = Some(mocks.openai.base_url.clone());
    config.registry().await.expect("registry")
}

fn policy(retries: u32) -> CallPolicy {
    CallPolicy {
        retries,
        timeout: Duration::from_secs(20),
        base_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    }
}

fn chain(links: &[(&str, &str)]) -> Vec<ModelRef> {
    links
        .iter()
        .map(|(provider, model)| ModelRef {
            provider: (*provider).into(),
            model: (*model).into(),
        })
        .collect()
}

fn request() -> ChatRequest {
    ChatRequest {
        model: String::new(),
        system: Some("You write books.".into()),
        prompt: PROMPT.into(),
        temperature: Some(0.7),
        max_tokens: Some(200),
        json: false,
    }
}

type Outcome = Result<CallOutcome<String>, CallFailure>;

/// Start a streaming call; the events come on the receiver.
fn start(
    registry: ProviderRegistry,
    links: &[(&str, &str)],
    policy: CallPolicy,
    idle: Duration,
) -> (
    tokio::task::JoinHandle<Outcome>,
    UnboundedReceiver<StreamEvent>,
) {
    let (tx, rx) = unbounded_channel();
    let chain = chain(links);
    let call = tokio::spawn(async move {
        let options = StreamOptions {
            events: tx,
            idle_timeout: idle,
        };
        call_with_fallbacks_streaming(&registry, &chain, &request(), &policy, &options, |t| {
            Ok(t.to_owned())
        })
        .await
    });
    (call, rx)
}

/// Run a streaming call to its end: the outcome and every event it sent.
async fn run(
    registry: ProviderRegistry,
    links: &[(&str, &str)],
    policy: CallPolicy,
    idle: Duration,
) -> (Outcome, Vec<StreamEvent>) {
    let (call, mut rx) = start(registry, links, policy, idle);
    let outcome = call.await.expect("call task");
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (outcome, events)
}

fn deltas_of(events: &[StreamEvent], attempt: u32) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Delta { attempt: a, text } if *a == attempt => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn discarded(events: &[StreamEvent]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Discard { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect()
}

/// The text each mock writes for PROMPT (as the answer of call `n`).
fn expected_text(n: usize) -> String {
    streamed_text(n, &format!("Text written for: {PROMPT}"))
}

#[tokio::test]
async fn each_provider_streams_text_before_the_call_ends_with_exact_usage() {
    for (provider, model) in PROVIDERS {
        let mocks = Mocks::start().await;
        let gate = mock(&mocks, provider).hold_after(2);
        let (call, mut rx) = start(
            registry(&mocks).await,
            &[(provider, model)],
            policy(0),
            Duration::from_secs(10),
        );
        // The mock holds everything after two chunks back until the gate opens.
        let mut early = Vec::new();
        while deltas_of(&early, 1).len() < 2 {
            let event = tokio::time::timeout(Duration::from_secs(15), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("{provider}: no delta while the mock held back"))
                .expect("events");
            early.push(event);
        }
        assert!(
            !call.is_finished(),
            "{provider}: the call ended before the mock sent the rest"
        );
        assert_eq!(
            deltas_of(&early, 1).concat(),
            "[call 1] ",
            "{provider}: the first two chunks"
        );
        gate.open();
        let outcome = call.await.expect("task").expect("the call answers");
        let mut events = early;
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        assert_eq!(outcome.value, expected_text(1), "{provider}");
        assert_eq!(deltas_of(&events, 1).concat(), outcome.value, "{provider}");
        assert!(
            deltas_of(&events, 1).len() >= 5,
            "{provider}: one delta per word"
        );
        assert_eq!(reassemble(&events), outcome.value, "{provider}");
        assert_eq!(outcome.usage, usage_of(provider), "{provider}: exact usage");
        assert!(discarded(&events).is_empty(), "{provider}");
        assert_eq!(
            events.first(),
            Some(&StreamEvent::Attempt {
                attempt: 1,
                provider: (*provider).into(),
                model: (*model).into()
            })
        );
        // The request was a streaming one in each format.
        let sent = mock(&mocks, provider).calls();
        let last = sent.last().expect("a call");
        match *provider {
            "gemini" => assert!(
                last.path.ends_with(":streamGenerateContent"),
                "{}",
                last.path
            ),
            "anthropic" => assert_eq!(last.body["stream"], true),
            _ => {
                assert_eq!(last.body["stream"], true);
                assert_eq!(last.body["stream_options"]["include_usage"], true);
            }
        }
    }
}

#[tokio::test]
async fn every_mid_stream_fault_is_a_discarded_attempt_and_the_retry_is_whole() {
    let faults = [
        (Fault::BreakAfter(2), "broke"),
        (Fault::MalformedChunkAfter(2), "malformed"),
        (Fault::ErrorEventAfter(2), "error"),
        (Fault::StallAfter(2), "stalled"),
        (Fault::EndWithoutTerminalAfter(2), "terminal event"),
    ];
    for (provider, model) in PROVIDERS {
        for (fault, says) in &faults {
            let mocks = Mocks::start().await;
            mock(&mocks, provider).script(vec![fault.clone()]);
            mock(&mocks, provider).chunk_interval(Duration::from_millis(2));
            let (outcome, events) = run(
                registry(&mocks).await,
                &[(provider, model)],
                policy(2),
                Duration::from_millis(400),
            )
            .await;
            let what = format!("{provider} {fault:?}");
            let outcome = outcome.unwrap_or_else(|f| panic!("{what}: {}", f.message));
            assert_eq!(outcome.attempts, 2, "{what}");
            // The broken attempt's text was sent, then discarded.
            assert_eq!(deltas_of(&events, 1).concat(), "[call 1] ", "{what}");
            assert_eq!(discarded(&events), vec![1], "{what}");
            let discard_at = events
                .iter()
                .position(|e| matches!(e, StreamEvent::Discard { .. }))
                .unwrap_or_default();
            assert!(
                events[..discard_at]
                    .iter()
                    .all(|e| !matches!(e, StreamEvent::Delta { attempt: 2, .. })),
                "{what}: the discard comes before the retry's text"
            );
            // The answer is the retry's, whole, and free of the cut attempt.
            assert_eq!(outcome.value, expected_text(2), "{what}");
            assert!(!outcome.value.contains("[call 1]"), "{what}");
            assert_eq!(reassemble(&events), outcome.value, "{what}");
            assert_eq!(outcome.usage, usage_of(provider), "{what}");
            let first = &outcome.log[0];
            let error = first.error.as_deref().unwrap_or_default();
            assert!(error.contains(says), "{what}: {error}");
            // Anthropic reports input tokens first: the cut attempt's are logged.
            if *provider == "anthropic" && !matches!(fault, Fault::MalformedChunkAfter(_)) {
                assert_eq!(
                    first.usage.map(|u| u.input_tokens),
                    Some(ANTHROPIC_USAGE.0),
                    "{what}"
                );
            }
        }
    }
}

#[tokio::test]
async fn repeated_breaks_fall_back_to_the_next_model() {
    let mocks = Mocks::start().await;
    mocks.openai.always(Some(Fault::BreakAfter(1)));
    let (outcome, events) = run(
        registry(&mocks).await,
        &[
            ("openai", "gpt-4o-mini"),
            ("anthropic", "claude-3-5-haiku-latest"),
        ],
        policy(1),
        Duration::from_secs(5),
    )
    .await;
    let outcome = outcome.expect("the fallback answers");
    assert_eq!(outcome.attempts, 3);
    assert!(outcome.fallback_used);
    assert_eq!(outcome.provider, "anthropic");
    assert_eq!(discarded(&events), vec![1, 2]);
    // One chunk each (the first word) before the connection dropped.
    assert_eq!(deltas_of(&events, 1).concat(), "[call ");
    assert_eq!(deltas_of(&events, 2).concat(), "[call ");
    // Anthropic's first call.
    assert_eq!(outcome.value, expected_text(1));
    assert_eq!(reassemble(&events), outcome.value);
    assert_eq!(outcome.usage, usage_of("anthropic"));
    assert_eq!(mocks.openai.calls().len(), 2);
    let attempts: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Attempt {
                attempt, provider, ..
            } => Some((*attempt, provider.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        attempts,
        vec![(1, "openai"), (2, "openai"), (3, "anthropic")]
    );
}

#[tokio::test]
async fn a_429_before_the_stream_waits_for_retry_after_and_discards_nothing() {
    let mocks = Mocks::start().await;
    mocks.gemini.script(vec![Fault::RateLimited(1)]);
    let started = Instant::now();
    let (outcome, events) = run(
        registry(&mocks).await,
        &[("gemini", "gemini-2.0-flash")],
        policy(2),
        Duration::from_secs(5),
    )
    .await;
    let outcome = outcome.expect("the retry answers");
    // The policy's own backoff is 5-20 ms: only Retry-After makes it wait a second.
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(outcome.attempts, 2);
    assert_eq!(outcome.log[0].status, Some(429));
    assert!(discarded(&events).is_empty(), "nothing was streamed");
    assert!(deltas_of(&events, 1).is_empty());
    assert_eq!(outcome.value, expected_text(2));
    assert_eq!(reassemble(&events), outcome.value);
}

#[tokio::test]
async fn permanent_errors_before_the_stream_go_straight_to_the_fallback() {
    let mocks = Mocks::start().await;
    mocks.openai.always(Some(Fault::Status(401)));
    let (outcome, events) = run(
        registry(&mocks).await,
        &[("openai", "gpt-4o-mini"), ("gemini", "gemini-2.0-flash")],
        policy(3),
        Duration::from_secs(5),
    )
    .await;
    let outcome = outcome.expect("the fallback answers");
    assert_eq!(outcome.attempts, 2, "a 401 is not retried");
    assert_eq!(outcome.provider, "gemini");
    assert!(discarded(&events).is_empty());
    assert_eq!(reassemble(&events), outcome.value);
    let logged = serde_json::to_string(&outcome.log).expect("log");
    assert!(!logged.contains(crate::kit::mock_llm::OPENAI_KEY));
}

#[tokio::test]
async fn the_offline_provider_streams_the_same_answer_it_gives_whole() {
    let registry = bookengine::providers::ProvidersConfig::default()
        .registry()
        .await
        .expect("registry");
    let links = [("offline", "offline")];
    let whole = call_with_fallbacks(&registry, &chain(&links), &request(), &policy(0), |t| {
        Ok(t.to_owned())
    })
    .await
    .expect("whole answer");
    let (outcome, events) = run(registry, &links, policy(0), Duration::from_secs(5)).await;
    let outcome = outcome.expect("streamed answer");
    assert_eq!(outcome.value, whole.value);
    assert_eq!(outcome.usage, whole.usage);
    assert!(outcome.usage.output_tokens > 10);
    assert!(deltas_of(&events, 1).len() as u64 >= outcome.usage.output_tokens);
    assert_eq!(reassemble(&events), outcome.value);
    assert!(outcome.value.contains("not model output"));
}

#[tokio::test]
async fn a_server_that_answers_whole_is_read_as_one_delta() {
    let mocks = Mocks::start().await;
    mocks.openai.ignore_stream(true);
    let (outcome, events) = run(
        registry(&mocks).await,
        &[("openai_compatible", "some-model")],
        policy(0),
        Duration::from_secs(5),
    )
    .await;
    let outcome = outcome.expect("answer");
    assert_eq!(
        deltas_of(&events, 1),
        vec![format!("Text written for: {PROMPT}")]
    );
    assert_eq!(outcome.usage, usage_of("openai"));
}

#[tokio::test]
async fn an_answer_that_parse_refuses_after_streaming_is_discarded_too() {
    let mocks = Mocks::start().await;
    let registry = registry(&mocks).await;
    let (tx, mut rx) = unbounded_channel();
    let seen = std::sync::atomic::AtomicU32::new(0);
    let outcome = call_with_fallbacks_streaming(
        &registry,
        &chain(&[("anthropic", "claude-3-5-haiku-latest")]),
        &request(),
        &policy(2),
        &StreamOptions::new(tx),
        |t| {
            // The first answer is refused (as a JSON step refuses prose).
            if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                Err("not the JSON asked for".to_owned())
            } else {
                Ok(t.to_owned())
            }
        },
    )
    .await
    .expect("the retry is accepted");
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    assert_eq!(discarded(&events), vec![1]);
    assert_eq!(deltas_of(&events, 1).concat(), expected_text(1));
    assert_eq!(outcome.value, expected_text(2));
    assert_eq!(reassemble(&events), outcome.value);
    // The refused answer was complete: its usage is in the attempt log.
    assert_eq!(
        outcome.log[0].usage,
        Some(Usage {
            input_tokens: ANTHROPIC_USAGE.0,
            output_tokens: ANTHROPIC_USAGE.1
        })
    );
    assert_eq!(outcome.log[1].usage, None);
}

#[tokio::test]
async fn dropping_a_streaming_call_closes_the_provider_stream() {
    let mocks = Mocks::start().await;
    // After one chunk the mock sends pings for as long as the connection lives.
    mocks.anthropic.script(vec![Fault::PingForeverAfter(1)]);
    let (call, mut rx) = start(
        registry(&mocks).await,
        &[("anthropic", "claude-3-5-haiku-latest")],
        policy(0),
        Duration::from_secs(10),
    );
    while !matches!(rx.recv().await, Some(StreamEvent::Delta { .. })) {}
    assert_eq!(mocks.anthropic.open_streams(), 1);
    call.abort();
    let _ = call.await;
    let mut waited = 0;
    while mocks.anthropic.open_streams() > 0 && waited < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    assert_eq!(mocks.anthropic.open_streams(), 0, "the stream was closed");
    assert_eq!(mocks.anthropic.calls().len(), 1, "and not called again");
}

/// A provider that only answers whole.
struct WholeOnly;

#[async_trait]
impl ChatProvider for WholeOnly {
    async fn chat(
        &self,
        _req: &ChatRequest,
        _timeout: Duration,
    ) -> Result<ChatResponse, ProviderError> {
        Ok(ChatResponse {
            text: "all at once".into(),
            usage: Usage {
                input_tokens: 3,
                output_tokens: 4,
            },
            note: None,
        })
    }
}

#[tokio::test]
async fn a_provider_that_cannot_stream_sends_its_answer_as_one_delta() {
    let mut registry = ProviderRegistry::default();
    registry.insert("whole", "whole", Arc::new(WholeOnly), 1);
    let (outcome, events) = run(
        registry,
        &[("whole", "m")],
        policy(0),
        Duration::from_secs(5),
    )
    .await;
    let outcome = outcome.expect("answer");
    assert_eq!(deltas_of(&events, 1), vec!["all at once".to_owned()]);
    assert_eq!(outcome.usage.output_tokens, 4);
}

#[cfg(feature = "local-model")]
#[tokio::test]
async fn the_local_model_streams_token_by_token() {
    use bookengine::providers::local::{
        default_cache_dir, fetch_default_model, LocalModelProvider,
    };
    let path = fetch_default_model(&default_cache_dir(), false)
        .await
        .expect("the default model");
    let local = LocalModelProvider::new(path).with_seed(42);
    // Loaded before the calls, so that neither spends its time budget loading.
    local.warm_up().await.expect("load the model");
    let mut registry = ProviderRegistry::default();
    registry.insert("local", "local", Arc::new(local), 1);
    let generous = CallPolicy {
        timeout: Duration::from_secs(120),
        ..policy(0)
    };
    let mut req = request();
    req.prompt = "Write a short paragraph about lighthouses.".into();
    req.temperature = Some(0.0);
    req.max_tokens = Some(64);
    let links = chain(&[("local", "smollm2")]);
    let whole = call_with_fallbacks(&registry, &links, &req, &generous, |t| Ok(t.to_owned()))
        .await
        .expect("whole answer");

    let (tx, mut rx) = unbounded_channel();
    let call = {
        let (registry, links, req, generous) = (
            registry.clone(),
            links.clone(),
            req.clone(),
            generous.clone(),
        );
        tokio::spawn(async move {
            let options = StreamOptions {
                events: tx,
                idle_timeout: Duration::from_secs(60),
            };
            call_with_fallbacks_streaming(&registry, &links, &req, &generous, &options, |t| {
                Ok(t.to_owned())
            })
            .await
        })
    };
    let mut events = Vec::new();
    while deltas_of(&events, 1).is_empty() {
        events.push(rx.recv().await.expect("a delta before the end"));
    }
    assert!(
        !call.is_finished(),
        "the first token came before the answer was done"
    );
    let outcome = call.await.expect("task").expect("streamed answer");
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    // Greedy decoding: the same answer as the whole call, in many pieces.
    assert_eq!(outcome.value, whole.value);
    assert_eq!(outcome.usage, whole.usage);
    assert_eq!(deltas_of(&events, 1).concat(), outcome.value);
    assert!(deltas_of(&events, 1).len() > 10, "{events:?}");
}
