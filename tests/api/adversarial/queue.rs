//! Issue #13, items 1, 4 and 5: one user's input, one user's scan and one large row
//! must not cost anyone else.

use crate::kit::app::{book_setup, fast_worker, spawn_app, TestApp, WEBHOOK_SECRET};
use crate::kit::http::JsonCalls;
use crate::kit::jobs::{finished, wait_until};
use crate::kit::mock_llm::Mocks;
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// `{"topic": …, "x": [[[…]]]}`, `depth` arrays deep.
fn deep_input(depth: usize) -> String {
    format!(
        r#"{{"topic":"deep","x":{}{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

/// POST raw JSON text to PostgREST (serde_json could not even build a 200-deep Value
/// to send, nor read one back).
async fn rest_raw(app: &TestApp, path: &str, token: &str, body: String) -> (u16, String) {
    let r = app
        .stack
        .http
        .post(format!("{}/{path}", app.stack.rest_url))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("Prefer", "return=representation")
        .body(body)
        .send()
        .await
        .expect("PostgREST request");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// A worker in this process, stopped by the returned token.
pub async fn start_worker(app: &TestApp, mocks: &Mocks) -> tokio_util::sync::CancellationToken {
    let stop = tokio_util::sync::CancellationToken::new();
    bookengine::worker::spawn(
        &app.stack.supabase_config(),
        &fast_worker(),
        &mocks.providers(),
        Arc::new(tokio::sync::Notify::new()),
        stop.clone(),
    )
    .await
    .expect("worker");
    stop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_deep_input_is_refused_at_admission_and_fails_alone_when_forced_in() {
    let mocks = Mocks::start().await;
    let app = spawn_app().await;
    let (_admin, pro, engine) = book_setup(&app).await;

    // Through PostgREST, as the React app would: refused at admission, with its code.
    let body = format!(r#"{{"input":{}}}"#, deep_input(200));
    let (s, text) = rest_raw(&app, "rpc/request_generation", &pro.token, body).await;
    assert_eq!(s, 400, "{text}");
    assert!(text.contains("input_too_deep"), "{text}");
    // Through the API: 40 levels parse, and the database's limit answers.
    let (s, b) = app
        .call(
            Method::POST,
            "/v1/generations",
            Some(&pro.token),
            Some(serde_json::from_str(&format!(r#"{{"input":{}}}"#, deep_input(40))).unwrap()),
        )
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("input_too_deep")),
        "{b}"
    );

    // Forced in anyway (admission bypassed, as the service role), first in line, with an
    // ordinary job right behind it: both are claimed in one batch.
    app.stack
        .pg
        .batch_execute("ALTER TABLE generation_jobs DISABLE TRIGGER generation_jobs_admission")
        .await
        .unwrap();
    let body = format!(
        r#"{{"user_id":"{}","engine_id":"{engine}","input":{}}}"#,
        pro.id,
        deep_input(200)
    );
    let (s, text) = rest_raw(
        &app,
        "generation_jobs?select=id",
        app.stack.service_key.expose(),
        body,
    )
    .await;
    app.stack
        .pg
        .batch_execute("ALTER TABLE generation_jobs ENABLE TRIGGER generation_jobs_admission")
        .await
        .unwrap();
    assert_eq!(s, 201, "{text}");
    let deep: Value = serde_json::from_str(&text).unwrap();
    let deep = deep[0]["id"].as_str().unwrap().to_owned();
    let (s, ordinary) = app
        .stack
        .post(
            "rpc/request_generation",
            &pro.token,
            json!({"input": {"topic": "ordinary"}}),
        )
        .await;
    assert_eq!(s, 200, "{ordinary}");
    let ordinary = ordinary["id"].as_str().unwrap().to_owned();

    // The owner's list and the job itself still answer (the deep columns left out).
    let (s, list) = app.get("/v1/generations", &pro.token).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    let (s, shown) = app
        .get(&format!("/v1/generations/{deep}"), &pro.token)
        .await;
    assert_eq!(s, 200, "{shown}");
    assert!(shown["input"].is_null(), "{shown}");

    let stop = start_worker(&app, &mocks).await;
    let ok = wait_until(
        &app,
        &pro.token,
        &ordinary,
        Duration::from_secs(60),
        finished,
    )
    .await;
    let bad = wait_until(&app, &pro.token, &deep, Duration::from_secs(60), finished).await;
    stop.cancel();
    assert_eq!(ok["status"], "succeeded", "{ok}");
    assert_eq!(ok["attempt"], 1, "the ordinary job spent one attempt: {ok}");
    assert_eq!(ok["lease_losses"], 0, "{ok}");
    assert_eq!(bad["status"], "failed", "{bad}");
    let error = bad["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cannot be run") && error.contains("input"),
        "{error}"
    );
    assert_eq!(bad["attempt"], 1, "failed at once, not retried: {bad}");
}

#[tokio::test]
async fn a_user_lists_only_their_own_jobs_and_an_admin_every_job() {
    let app = spawn_app().await;
    let (admin, pro, _) = book_setup(&app).await;
    let other = app.stack.user(Some("pro"), false).await;
    let mut mine = Vec::new();
    for (u, n) in [(&pro, 2), (&other, 3)] {
        for i in 0..n {
            let (s, j) = app
                .post(
                    "/v1/generations",
                    &u.token,
                    json!({"input": {"topic": format!("t{i}")}}),
                )
                .await;
            assert_eq!(s, 202, "{j}");
            if u.id == pro.id {
                mine.push(j["id"].as_str().unwrap().to_owned());
            }
        }
    }
    let owners = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|j| j["user_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (s, list) = app.get("/v1/generations", &pro.token).await;
    assert_eq!(s, 200);
    assert_eq!(owners(&list), vec![pro.id.to_string(); 2]);
    // The React app's natural query, without a filter, straight through PostgREST.
    let (s, rows) = app
        .stack
        .get(
            "generation_jobs?select=id,user_id&order=created_at.desc&limit=50",
            &pro.token,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(owners(&rows), vec![pro.id.to_string(); 2]);
    // Steps: only those of the caller's jobs.
    app.stack
        .pg
        .execute(
            "INSERT INTO generation_steps (job_id, step_id, status) \
             SELECT id, 'outline', 'succeeded' FROM generation_jobs",
            &[],
        )
        .await
        .unwrap();
    let (s, steps) = app
        .stack
        .get("generation_steps?select=job_id", &other.token)
        .await;
    assert_eq!(
        (s, steps.as_array().map(Vec::len)),
        (200, Some(3)),
        "{steps}"
    );
    let (s, _) = app
        .get(&format!("/v1/generations/{}", mine[0]), &other.token)
        .await;
    assert_eq!(s, 404);
    // An admin sees every job through the API, and any job with its steps.
    let (s, all) = app.get("/v1/generations?limit=10", &admin.token).await;
    assert_eq!((s, all.as_array().map(Vec::len)), (200, Some(5)), "{all}");
    let (s, one) = app
        .get(&format!("/v1/generations/{}", mine[0]), &admin.token)
        .await;
    assert_eq!(s, 200, "{one}");
    assert_eq!(one["steps"].as_array().map(Vec::len), Some(1), "{one}");
    let (s, queued) = app.get("/v1/generations?status=queued", &admin.token).await;
    assert_eq!((s, queued.as_array().map(Vec::len)), (200, Some(5)));
}

#[tokio::test]
async fn a_dashboard_webhook_carrying_the_largest_job_row_is_accepted() {
    let app = spawn_app().await;
    // 64 KiB of input, a snapshot of a flow near the API's 1 MiB limit, the rest.
    let input = json!({"topic": "big", "notes": "n".repeat(65_000)});
    let mut flow = crate::kit::flows::example_flow();
    flow["description"] = json!("d".repeat(1_000_000));
    let id = uuid::Uuid::new_v4();
    let record = json!({
        "id": id, "user_id": uuid::Uuid::new_v4(), "engine_id": null, "engine_name": "Book",
        "engine_snapshot": {"flow_config": flow, "models": [], "execution_mode": "parallel", "tier": "pro"},
        "input": input, "status": "queued", "progress": {"done": 0, "total": 0}, "attempt": 0,
        "max_attempts": 5, "lease_losses": 0, "errors": [], "usage": {"input_tokens": 0, "output_tokens": 0},
    });
    let body = json!({"type": "INSERT", "table": "generation_jobs", "schema": "public", "record": record, "old_record": null})
        .to_string();
    assert!(body.len() > 1_050_000, "{}", body.len());
    let signed = format!("Bearer {WEBHOOK_SECRET}");
    let r = app.deliver_webhook(Some(&signed), body).await;
    assert_eq!(r.status().as_u16(), 202);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["woken"], true, "{b}");
    // A row too deep for any JSON decoder is skipped unread, and the id still counts.
    let body = format!(
        r#"{{"type":"INSERT","table":"generation_jobs","schema":"public","record":{{"input":{},"id":"{id}"}},"old_record":null}}"#,
        deep_input(10_000)
    );
    let r = app.deliver_webhook(Some(&signed), body).await;
    assert_eq!(r.status().as_u16(), 202);
}
