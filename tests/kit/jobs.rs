//! Book jobs through the API: requesting one, and waiting for jobs to end.

use super::app::TestApp;
use super::http::JsonCalls;
use super::seed::TestUser;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Request a book about `topic` as `user`: the API's answer.
pub async fn request_book(app: &TestApp, user: &TestUser, topic: &str) -> (u16, Value) {
    app.post(
        "/v1/generations",
        &user.token,
        json!({"input": {"topic": topic}}),
    )
    .await
}

/// Request a book about `topic` as `user`, which must be accepted (202): the job's id.
pub async fn start_book(app: &TestApp, user: &TestUser, topic: &str) -> String {
    let (s, job) = request_book(app, user, topic).await;
    assert_eq!(s, 202, "{job}");
    job["id"].as_str().expect("job id").to_owned()
}

/// Request a book about `topic` as `user` and wait (up to `limit`) for the job to end.
pub async fn generate(app: &TestApp, user: &TestUser, topic: &str, limit: Duration) -> Value {
    let id = start_book(app, user, topic).await;
    wait_until(app, &user.token, &id, limit, finished).await
}

/// The job as `token` reads it, once `done` holds (polled every 100 ms, at most `limit`).
pub async fn wait_until(
    app: &TestApp,
    token: &str,
    id: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let (s, job) = app.get(&format!("/v1/generations/{id}"), token).await;
        assert_eq!(s, 200, "{job}");
        if done(&job) {
            return job;
        }
        assert!(
            start.elapsed() < limit,
            "timed out waiting; last state: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Has the job reached a final status?
pub fn finished(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

/// Every job of `jobs` (its owner's token, its id) ends, within `limit` each, and
/// succeeds.
pub async fn assert_all_succeed(app: &TestApp, jobs: &[(String, String)], limit: Duration) {
    for (token, id) in jobs {
        let job = wait_until(app, token, id, limit, finished).await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
}

/// The job failed, and its error says `reason`.
#[track_caller]
pub fn assert_failed_with(job: &Value, reason: &str) {
    assert_eq!(job["status"], "failed", "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(error.contains(reason), "{job}");
}
