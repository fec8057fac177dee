//! Load: simulated users requesting books and polling progress. Short in every
//! run; `BOOKENGINE_LONG_TESTS=1` runs the long version (200 users, 60 s).
//! It reports latencies; it asserts only correctness (no 5xx, no lost job).

use crate::kit::app::{example_engine_for, spawn_app_with};
use crate::kit::jobs::assert_all_succeed;
use crate::kit::mock_llm::Mocks;
use bookengine::worker::WorkerConfig;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub fn long() -> bool {
    std::env::var("BOOKENGINE_LONG_TESTS").is_ok_and(|v| v == "1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_users_request_and_poll_books_without_5xx_or_lost_jobs() {
    let (users, secs) = if long() { (200, 60) } else { (12, 8) };
    let mocks = Mocks::start().await;
    for m in [&mocks.openai, &mocks.anthropic, &mocks.gemini] {
        m.latency(Duration::from_millis(50));
    }
    let worker = WorkerConfig {
        poll_interval_ms: 100,
        concurrency: 16,
        fanout_concurrency: 4,
        ..Default::default()
    };
    let mut providers = mocks.providers();
    providers.provider_concurrency = 32;
    let app = spawn_app_with(Some((worker, providers))).await;
    example_engine_for(&app, "enterprise").await;
    let mut people = Vec::new();
    for _ in 0..users {
        people.push(app.stack.user(Some("enterprise"), false).await);
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for u in people {
        let http = app.http.clone();
        let base = app.address.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors_5xx = 0u32;
            let mut accepted = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let r = http
                    .post(format!("{base}/v1/generations"))
                    .bearer_auth(&u.token)
                    .json(&json!({"input": {"topic": "load"}}))
                    .send()
                    .await;
                latencies.push(t.elapsed());
                let Ok(r) = r else {
                    errors_5xx += 1;
                    continue;
                };
                if r.status().is_server_error() {
                    errors_5xx += 1;
                    continue;
                }
                if r.status().as_u16() == 429 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                let job: Value = r.json().await.unwrap_or(Value::Null);
                let Some(id) = job["id"].as_str().map(str::to_owned) else {
                    continue;
                };
                accepted.push(id.clone());
                loop {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let t = Instant::now();
                    let r = http
                        .get(format!("{base}/v1/generations/{id}"))
                        .bearer_auth(&u.token)
                        .send()
                        .await;
                    latencies.push(t.elapsed());
                    match r {
                        Ok(r) if r.status().is_server_error() => errors_5xx += 1,
                        Ok(r) => {
                            let j: Value = r.json().await.unwrap_or(Value::Null);
                            if crate::kit::jobs::finished(&j) || Instant::now() > deadline {
                                break;
                            }
                        }
                        Err(_) => errors_5xx += 1,
                    }
                }
            }
            (u.token, latencies, errors_5xx, accepted)
        }));
    }
    let mut all_latencies = Vec::new();
    let mut errors = 0;
    let mut accepted: Vec<(String, String)> = Vec::new();
    for t in tasks {
        let (token, l, e, a) = t.await.unwrap();
        all_latencies.extend(l);
        errors += e;
        accepted.extend(a.into_iter().map(|id| (token.clone(), id)));
    }
    all_latencies.sort();
    let pct = |p: f64| {
        all_latencies
            .get(
                ((all_latencies.len() as f64 * p) as usize)
                    .min(all_latencies.len().saturating_sub(1)),
            )
            .copied()
            .unwrap_or_default()
    };
    println!(
        "load: {users} users, {secs} s, {} API calls, p50 {:?}, p99 {:?}, {} jobs accepted, {errors} errors",
        all_latencies.len(),
        pct(0.50),
        pct(0.99),
        accepted.len()
    );
    assert_eq!(errors, 0, "5xx or transport errors under load");
    assert!(!accepted.is_empty());
    // Every accepted job finishes; none is lost.
    assert_all_succeed(&app, &accepted, Duration::from_secs(120)).await;
    let n: i64 = app
        .stack
        .count("SELECT count(*) FROM generation_jobs", &[])
        .await;
    assert_eq!(n, accepted.len() as i64);
}
