//! Issue: engine-based book generation, through real PostgREST, with mock
//! providers speaking the real wire formats.

use crate::kit::answers::{assert_api_error, assert_rest_error};
use crate::kit::app::{
    app_with_mocks, book_setup, fast_worker, spawn_app_with, TestApp, WEBHOOK_SECRET,
};
use crate::kit::flows::example_flow;
use crate::kit::http::JsonCalls;
use crate::kit::jobs::{
    assert_failed_with, finished, generate, request_book, start_book, wait_until,
};
use crate::kit::mock_llm::{Fault, Mocks, ANTHROPIC_KEY, GEMINI_KEY, OPENAI_KEY};
use crate::kit::seed::TestUser;
use bookengine::worker::WorkerConfig;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pro_user_generates_a_book_with_a_multi_step_multi_model_flow() {
    let (app, mocks) = app_with_mocks().await;
    let (_admin, pro, engine) = book_setup(&app).await;
    let (s, job) = request_book(&app, &pro, "sea otters").await;
    assert_eq!(s, 202, "{job}");
    assert_eq!(job["engine_id"], json!(engine));
    assert_eq!(job["status"], "queued");
    let id = job["id"].as_str().unwrap().to_owned();
    let job = wait_until(&app, &pro.token, &id, Duration::from_secs(30), finished).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let book = job["result"]["book"].as_str().unwrap();
    assert!(book.starts_with("# The Mock Book"), "{book}");
    // outline (openai) -> 3 chapters (anthropic) -> edit (gemini)
    let steps = job["steps"].as_array().unwrap();
    let by = |id: &str, idx: i64| {
        steps
            .iter()
            .find(|s| s["step_id"] == id && s["item_index"] == idx)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(
        (
            by("outline", -1)["provider"].clone(),
            by("outline", -1)["model"].clone()
        ),
        (json!("openai"), json!("gpt-4o-mini"))
    );
    for k in 0..3 {
        assert_eq!(by("chapters", k)["provider"], "anthropic", "{job}");
        assert_eq!(by("chapters", k)["status"], "succeeded");
    }
    assert_eq!(by("edit", -1)["provider"], "gemini");
    assert_eq!(job["progress"]["done"], job["progress"]["total"], "{job}");
    // Token usage summed from every step: 11+7 (openai) + 3*(13+5) (anthropic) + 17+3 (gemini).
    assert_eq!(
        job["usage"],
        json!({"input_tokens": 11 + 3 * 13 + 17, "output_tokens": 7 + 3 * 5 + 3})
    );

    // What the clients sent: each provider's real request shape and auth header.
    let o = &mocks.openai.calls()[0];
    assert_eq!(o.path, "/v1/chat/completions");
    assert_eq!(
        o.header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    assert_eq!(o.body["model"], "gpt-4o-mini");
    assert_eq!(o.body["messages"][0]["role"], "system");
    assert_eq!(o.body["response_format"]["type"], "json_object");
    assert_eq!(o.body["max_completion_tokens"], 2000);
    assert!(o.body["messages"][1]["content"]
        .as_str()
        .unwrap()
        .contains("sea otters"));
    let a = mocks.anthropic.calls();
    assert_eq!(a.len(), 3);
    assert_eq!(a[0].path, "/v1/messages");
    assert_eq!(a[0].header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(a[0].header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(a[0].body["max_tokens"], 4000);
    assert!(a[0].body["system"]
        .as_str()
        .unwrap()
        .contains("The Mock Book"));
    let mut titles: Vec<String> = a.iter().map(|c| c.prompt()).collect();
    titles.sort();
    assert!(
        titles[0].contains("\"Alpha\"")
            && titles[1].contains("\"Beta\"")
            && titles[2].contains("\"Gamma\""),
        "{titles:?}"
    );
    let g = &mocks.gemini.calls()[0];
    // The worker streams every call (BOOKENGINE_STREAM_DELTAS, on by default).
    assert_eq!(
        g.path,
        "/v1beta/models/gemini-1.5-flash:streamGenerateContent"
    );
    assert_eq!(g.header("x-goog-api-key"), Some(GEMINI_KEY));
    assert_eq!(g.body["generationConfig"]["maxOutputTokens"], 8000);
    assert!(g.body["systemInstruction"]["parts"][0]["text"].is_string());
    // Chapters are joined in order into the edit prompt.
    let edit_prompt = g.prompt();
    let (ia, ib) = (
        edit_prompt.find("Alpha").unwrap(),
        edit_prompt.find("Gamma").unwrap(),
    );
    assert!(ia < ib);

    // Another user cannot see the job, directly or through PostgREST.
    let other = app.stack.user(Some("pro"), false).await;
    let (s, b) = app
        .get(&format!("/v1/generations/{id}"), &other.token)
        .await;
    assert_api_error(s, &b, 404, "generation_not_found");
    let (_, rows) = app
        .stack
        .get(&format!("generation_steps?job_id=eq.{id}"), &other.token)
        .await;
    assert_eq!(rows, json!([]));
    let (_, mine) = app.get("/v1/generations", &other.token).await;
    assert_eq!(mine, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_primary_falls_back_and_is_recorded() {
    let (app, mocks) = app_with_mocks().await;
    let (_admin, pro, _) = book_setup(&app).await;
    mocks.anthropic.always(Some(Fault::Status(500)));
    let job = generate(&app, &pro, "bees", Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let chapters: Vec<&Value> = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["step_id"] == "chapters" && s["item_index"] != -1)
        .collect();
    assert_eq!(chapters.len(), 3);
    for c in chapters {
        assert_eq!(
            (c["provider"].clone(), c["fallback_used"].clone()),
            (json!("openai"), json!(true)),
            "{c}"
        );
        // 1 try + 2 retries on anthropic, then openai.
        assert_eq!(c["attempts"], 4, "{c}");
        assert_eq!(c["attempt_log"][0]["status"], 500);
    }
    assert_eq!(mocks.anthropic.calls().len(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_retried_honouring_retry_after() {
    let (app, mocks) = app_with_mocks().await;
    let (_admin, pro, _) = book_setup(&app).await;
    mocks.openai.script(vec![
        Fault::RateLimited(1),
        Fault::MalformedJson,
        Fault::Truncated,
    ]);
    let started = Instant::now();
    let id = start_book(&app, &pro, "clouds").await;
    // The outline has retries: 2, so three faults exhaust openai's tries: the outline has no fallback.
    let job = wait_until(&app, &pro.token, &id, Duration::from_secs(30), finished).await;
    assert_failed_with(&job, "step outline");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    let outline = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_id"] == "outline")
        .cloned()
        .unwrap();
    let log = outline["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0]["status"], 429);
    // No key or prompt in what was recorded.
    assert!(!job.to_string().contains(OPENAI_KEY));

    // Two faults then success: the job succeeds.
    mocks
        .openai
        .script(vec![Fault::Status(503), Fault::MalformedJson]);
    let job = generate(&app, &pro, "rain", Duration::from_secs(30)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
}

/// The outline and chapters succeed, the edit fails for good: the job fails, and the
/// records made before the failure are saved and their tokens counted in its usage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_last_step_keeps_the_work_done_before_it() {
    let (app, mocks) = app_with_mocks().await;
    let (_admin, pro, _) = book_setup(&app).await;
    mocks.gemini.always(Some(Fault::Status(401)));
    let job = generate(&app, &pro, "kept", Duration::from_secs(20)).await;
    assert_eq!(job["status"], "failed", "{job}");
    let steps = job["steps"].as_array().unwrap();
    let done: Vec<&Value> = steps
        .iter()
        .filter(|s| s["status"] == "succeeded")
        .collect();
    assert!(
        done.iter().any(|s| s["step_id"] == "outline")
            && done
                .iter()
                .any(|s| s["step_id"] == "chapters" && s["item_index"] == -1),
        "finished steps were not saved: {job}"
    );
    let tokens: u64 = done
        .iter()
        .map(|s| s["usage"]["input_tokens"].as_u64().unwrap_or(0))
        .sum();
    assert!(tokens > 0, "{job}");
    assert_eq!(job["usage"]["input_tokens"], json!(tokens), "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_provider_fails_the_job_fails_with_a_reason_in_bounded_time() {
    let (app, mocks) = app_with_mocks().await;
    let (_admin, pro, _) = book_setup(&app).await;
    mocks.openai.always(Some(Fault::Status(500)));
    mocks.anthropic.always(Some(Fault::Status(401)));
    let started = Instant::now();
    let id = start_book(&app, &pro, "x").await;
    let job = wait_until(&app, &pro.token, &id, Duration::from_secs(20), finished).await;
    assert_failed_with(&job, "every model failed");
    assert!(started.elapsed() < Duration::from_secs(20));
    // A 401 is not retried on the same model.
    mocks.openai.always(None);
    let job = generate(&app, &pro, "y", Duration::from_secs(20)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let c = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_id"] == "chapters" && s["item_index"] == 0)
        .cloned()
        .unwrap();
    assert_eq!(c["attempts"], 2, "401 then the fallback: {c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_stops_a_running_job_within_seconds() {
    let (app, mocks) = app_with_mocks().await;
    let (_admin, pro, _) = book_setup(&app).await;
    mocks.anthropic.latency(Duration::from_secs(20));
    let id = start_book(&app, &pro, "slow").await;
    wait_until(&app, &pro.token, &id, Duration::from_secs(10), |j| {
        j["steps"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["step_id"] == "chapters"))
    })
    .await;
    let other = app.stack.user(Some("pro"), false).await;
    let (s, _) = cancel(&app, &id, &other).await;
    assert_eq!(s, 404, "another user cannot cancel");
    let asked = Instant::now();
    let (s, b) = cancel(&app, &id, &pro).await;
    assert_eq!(
        (s, b["cancel_requested"].clone()),
        (200, json!(true)),
        "{b}"
    );
    let job = wait_until(&app, &pro.token, &id, Duration::from_secs(10), finished).await;
    assert_eq!(job["status"], "cancelled");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "took {:?}",
        asked.elapsed()
    );
    // A queued job is cancelled at once (no worker involved).
    let (s, b) = cancel(&app, &id, &pro).await;
    assert_eq!(
        (s, b["status"].clone()),
        (200, json!("cancelled")),
        "idempotent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_streams_as_server_sent_events() {
    let (app, mocks) = app_with_mocks().await;
    let (admin, pro, _) = book_setup(&app).await;
    mocks.anthropic.latency(Duration::from_millis(1500));
    let id = start_book(&app, &pro, "events").await;
    // An admin follows someone else's book too (sql/V10: owner-only tables, definer reads).
    let admin_view = events(&app, &id, &admin).await;
    assert_eq!(admin_view.status().as_u16(), 200);
    let resp = events(&app, &id, &pro).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = tokio::time::timeout(Duration::from_secs(30), resp.text())
        .await
        .expect("stream ends")
        .unwrap();
    let progress = text.matches("event: progress").count();
    assert!(progress >= 2, "expected several progress events: {text}");
    assert!(text.contains("event: done"));
    assert!(text.contains("\"succeeded\""));
    let admin_text = tokio::time::timeout(Duration::from_secs(30), admin_view.text())
        .await
        .expect("the admin's stream ends")
        .unwrap();
    assert!(admin_text.contains("event: done"), "{admin_text}");
    // Someone else's job: 404 before any stream starts.
    let other = app.stack.user(Some("pro"), false).await;
    let (s, _) = app
        .get(&format!("/v1/generations/{id}/events"), &other.token)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_cannot_forge_jobs_through_postgrest() {
    let (app, _mocks) = app_with_mocks().await;
    let (admin, pro, engine) = book_setup(&app).await;
    let hobby = app.stack.user(Some("hobby"), false).await;
    let st = &app.stack;
    // A configuration written by the user: column privileges refuse it.
    let forged = json!({"input": {}, "engine_id": engine, "engine_snapshot": {"flow_config": {"steps": []}}, "engine_name": "mine"});
    let (s, b) = st.post("generation_jobs", &pro.token, forged).await;
    assert!(s == 401 || s == 403, "{s} {b}");
    // On behalf of another user: refused.
    let (s, b) = st
        .post(
            "generation_jobs",
            &pro.token,
            json!({"input": {}, "user_id": hobby.id}),
        )
        .await;
    assert!(s == 401 || s == 403, "{s} {b}");
    // An engine the user cannot see, named directly: 404.
    let (s, b) = st
        .post(
            "rpc/request_generation",
            &hobby.token,
            json!({"input": {}, "engine_id": engine}),
        )
        .await;
    assert_rest_error(s, &b, 404, "engine_not_found");
    let (s, b) = app
        .post("/v1/generations", &hobby.token, json!({"input": {}}))
        .await;
    assert_api_error(s, &b, 404, "no_engine_assigned");
    // The allowed path: the snapshot is the engine's, taken by the database.
    let (s, b) = st
        .post(
            "generation_jobs",
            &pro.token,
            json!({"input": {"topic": "t"}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b[0]["user_id"], json!(pro.id));
    let (_, e) = app
        .get(&format!("/v1/engines/{engine}"), &admin.token)
        .await;
    assert_eq!(b[0]["engine_snapshot"]["flow_config"], e["flow_config"]);
    assert_eq!(b[0]["status"], "queued");
    // The snapshot helper shows a user only engines they may use.
    let (s, hidden) = st
        .post(
            "rpc/engine_for_generation",
            &hobby.token,
            json!({"engine_id": engine}),
        )
        .await;
    assert!(
        s == 200 && (hidden.is_null() || hidden["id"].is_null()),
        "{s} {hidden}"
    );
    // Users cannot touch the queue functions.
    let (s, _) = st
        .post("rpc/job_claim", &pro.token, json!({"worker": "me"}))
        .await;
    assert!(s == 401 || s == 403 || s == 404, "{s}");
    let (s, _) = st
        .patch(
            &format!("generation_jobs?id=eq.{}", b[0]["id"].as_str().unwrap()),
            &pro.token,
            json!({"status": "succeeded"}),
        )
        .await;
    assert!(s == 401 || s == 403, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redeploy_does_not_change_a_queued_or_running_job() {
    let (app, mocks) = app_with_mocks().await;
    let (admin, pro, engine) = book_setup(&app).await;
    mocks.anthropic.latency(Duration::from_millis(500));
    let id = start_book(&app, &pro, "stable").await;
    let mut flow = example_flow();
    flow["steps"][2]["configuration"]["model"] = json!("gemini-2.0-pro");
    let (s, _) = app
        .patch(
            &format!("/v1/engines/{engine}"),
            &admin.token,
            json!({"flow": flow, "active": false}),
        )
        .await;
    assert_eq!(s, 200);
    let job = wait_until(&app, &pro.token, &id, Duration::from_secs(30), finished).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let edit = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step_id"] == "edit")
        .cloned()
        .unwrap();
    assert_eq!(
        edit["model"], "gemini-1.5-flash",
        "the job ran on its snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_wake_the_worker_and_refuse_bad_deliveries() {
    let (app, _mocks) = app_with_mocks().await;
    let url = format!("{}/webhooks/generation", app.address);
    let payload = json!({"type": "INSERT", "table": "generation_jobs", "schema": "public", "record": {"id": Uuid::new_v4()}, "old_record": null});
    let ok = format!("Bearer {WEBHOOK_SECRET}");
    assert_eq!(
        app.deliver_webhook(Some(&ok), payload.to_string())
            .await
            .status(),
        202
    );
    assert_eq!(
        app.deliver_webhook(Some("Bearer wrong"), payload.to_string())
            .await
            .status(),
        401
    );
    assert_eq!(
        app.deliver_webhook(None, payload.to_string())
            .await
            .status(),
        401
    );
    let r = app.deliver_webhook(Some(&ok), "{oops".into()).await;
    assert_eq!(r.status().as_u16(), 400);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "invalid_json");
    // Over the 2 MiB a whole job row can take (webhooks.rs).
    let big = json!({"type": "INSERT", "table": "generation_jobs", "record": {"pad": "x".repeat(3 << 20)}});
    // The service answers 413 as soon as the length is known and closes the connection;
    // a client still writing the body may see that close instead of the answer.
    // Its own client, so the closed connection is not reused by the requests after it.
    let refused = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("authorization", &ok)
        .body(big.to_string())
        .send()
        .await;
    match refused {
        Ok(r) => assert_eq!(r.status().as_u16(), 413),
        Err(e) => assert!(e.is_request(), "refused how? {e}"),
    }
    // Duplicate deliveries are harmless.
    for _ in 0..20 {
        let r = app.deliver_webhook(Some(&ok), payload.to_string()).await;
        assert_eq!(r.status(), 202);
    }
    let other = json!({"type": "UPDATE", "table": "generation_jobs", "record": {}});
    let b: Value = app
        .deliver_webhook(Some(&ok), other.to_string())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(b["woken"], false);
    let (s, m) = app.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(s, 200);
    assert!(m.as_str().unwrap().contains("bookengine_webhooks_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_webhook_deliveries_cause_no_duplicate_work() {
    let n = if crate::load::long() { 1000 } else { 200 };
    let mocks = Mocks::start().await;
    // Polling effectively off: the webhook is what wakes the worker.
    let worker = WorkerConfig {
        poll_interval_ms: 60_000,
        ..fast_worker()
    };
    let app = spawn_app_with(Some((worker, mocks.providers()))).await;
    let (_admin, pro, _) = book_setup(&app).await;
    // Through PostgREST directly, as the React app would: the service is not told.
    let (s, rows) = app
        .stack
        .post(
            "rpc/request_generation",
            &pro.token,
            json!({"input": {"topic": "hooks"}}),
        )
        .await;
    assert_eq!(s, 200, "{rows}");
    let id = rows["id"].as_str().unwrap().to_owned();
    let payload = json!({"type": "INSERT", "table": "generation_jobs", "schema": "public", "record": rows, "old_record": null}).to_string();
    let ok = format!("Bearer {WEBHOOK_SECRET}");
    let sends = (0..n).map(|_| app.deliver_webhook(Some(&ok), payload.clone()));
    for r in futures::future::join_all(sends).await {
        assert_eq!(r.status(), 202);
    }
    let job = wait_until(&app, &pro.token, &id, Duration::from_secs(30), finished).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 1, "claimed once");
    let calls = mocks.call_count();
    assert_eq!(calls, 5, "{n} deliveries, one run of 5 calls");
}

/// `user`'s request to cancel job `id`.
async fn cancel(app: &TestApp, id: &str, user: &TestUser) -> (u16, Value) {
    let path = format!("/v1/generations/{id}/cancel");
    app.post(&path, &user.token, json!({})).await
}

/// Job `id`'s event stream as `user` opens it.
async fn events(app: &TestApp, id: &str, user: &TestUser) -> reqwest::Response {
    app.http
        .get(format!("{}/v1/generations/{id}/events", app.address))
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("open the event stream")
}
