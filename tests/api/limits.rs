//! Per-tier generation limits, enforced in Postgres: 429 with Retry-After.

use crate::kit::answers::assert_rest_error;
use crate::kit::app::spawn_app;
use crate::kit::http::JsonCalls;
use crate::kit::jobs::request_book;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_limits_refuse_with_429_and_retry_after() {
    let app = spawn_app().await; // no worker: jobs stay queued
    let st = &app.stack;
    let admin = st.admin().await;
    let hobby = st.user(Some("hobby"), false).await;
    let pro = st.user(Some("pro"), false).await;
    let engine = app.deploy_example(&admin).await;
    for tier in ["hobby", "pro"] {
        app.post(
            "/v1/assignments",
            &admin.token,
            json!({"engine_id": engine, "tier": tier}),
        )
        .await;
    }
    // hobby: 1 at a time.
    let (s, first) = request_book(&app, &hobby, "a").await;
    assert_eq!(s, 202, "{first}");
    let resp = app
        .http
        .post(format!("{}/v1/generations", app.address))
        .bearer_auth(&hobby.token)
        .json(&json!({"input": {"topic": "b"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "30");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("hobby"),
        "{body}"
    );
    // The same through PostgREST directly (supabase-js rpc).
    let (s, b) = st
        .post("rpc/request_generation", &hobby.token, json!({"input": {}}))
        .await;
    assert_rest_error(s, &b, 429, "rate_limited");
    // Cancelling frees the slot.
    let id = first["id"].as_str().unwrap();
    app.post(
        &format!("/v1/generations/{id}/cancel"),
        &hobby.token,
        json!({}),
    )
    .await;
    let (s, _) = request_book(&app, &hobby, "c").await;
    assert_eq!(s, 202);

    // pro: 3 at a time, even when requests race.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let http = app.http.clone();
        let url = format!("{}/v1/generations", app.address);
        let token = pro.token.clone();
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .bearer_auth(token)
                .json(&json!({"input": {"topic": i}}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|c| **c == 202).count(), 3, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 3, "{codes:?}");

    // Limits are rows admins edit; the hourly cap answers with the wait until a slot frees.
    let (s, b) = st
        .patch(
            "generation_limits?tier=eq.hobby",
            &admin.token,
            json!({"max_concurrent": 10, "max_per_hour": 3}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let (s, _) = st
        .patch(
            "generation_limits?tier=eq.hobby",
            &hobby.token,
            json!({"max_concurrent": 99}),
        )
        .await;
    assert_eq!(s, 200, "filtered, not an error");
    let (_, limits) = st
        .get("generation_limits?tier=eq.hobby", &hobby.token)
        .await;
    assert_eq!(limits[0]["max_concurrent"], 10, "a user changed the limits");
    let (s, _) = request_book(&app, &hobby, "d").await;
    assert_eq!(s, 202, "the third of the hour");
    let resp = app
        .http
        .post(format!("{}/v1/generations", app.address))
        .bearer_auth(&hobby.token)
        .json(&json!({"input": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        429,
        "three created within the hour already"
    );
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 3000 && wait <= 3600, "{wait}");
}
