//! Crash and resume, and lease fencing, with real worker processes.

use crate::generations::{book_setup, wait_until};
use crate::helpers::{spawn_app, TestApp};
use crate::mock_providers::{Mocks, ANTHROPIC_KEY, GEMINI_KEY, OPENAI_KEY};
use bookengine::queue::Queue;
use bookengine::rest::Rest;
use serde_json::json;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

fn worker_process(app: &TestApp, mocks: &Mocks, name: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_bookengine"))
        .arg("worker")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("POSTGREST_URL", &app.stack.rest_url)
        .env("SUPABASE_SERVICE_ROLE_KEY", app.stack.service_key.expose())
        .env("OPENAI_API_KEY", OPENAI_KEY)
        .env("OPENAI_BASE_URL", &mocks.openai.base_url)
        .env("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .env("ANTHROPIC_BASE_URL", &mocks.anthropic.base_url)
        .env("GEMINI_API_KEY", GEMINI_KEY)
        .env("GEMINI_BASE_URL", &mocks.gemini.base_url)
        .env("BOOKENGINE_LEASE_SECONDS", "2")
        .env("BOOKENGINE_POLL_INTERVAL_MS", "100")
        .env("BOOKENGINE_FANOUT_CONCURRENCY", "1")
        .env("BOOKENGINE_WORKER_ID", name)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start worker process")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_resumed_by_another_without_repeating_finished_chapters() {
    let mocks = Mocks::start().await;
    let app = spawn_app().await;
    let (_admin, pro, _) = book_setup(&app).await;
    mocks.anthropic.latency(Duration::from_millis(700));
    let mut first = worker_process(&app, &mocks, "worker-a");
    let (s, job) = app
        .post(
            "/v1/generations",
            &pro.token,
            json!({"input": {"topic": "resilience"}}),
        )
        .await;
    assert_eq!(s, 202);
    let id = job["id"].as_str().unwrap().to_owned();
    // Kill it once the first chapter is done and the second is under way.
    wait_until(&app, &pro.token, &id, Duration::from_secs(20), |j| {
        j["steps"].as_array().is_some_and(|s| {
            s.iter().any(|s| {
                s["step_id"] == "chapters" && s["item_index"] == 0 && s["status"] == "succeeded"
            })
        })
    })
    .await;
    first.start_kill().expect("SIGKILL");
    let _ = first.wait().await;
    let alpha_before = mocks
        .anthropic
        .calls()
        .iter()
        .filter(|c| c.prompt().contains("\"Alpha\""))
        .count();
    assert_eq!(alpha_before, 1);

    let _second = worker_process(&app, &mocks, "worker-b");
    let job = wait_until(&app, &pro.token, &id, Duration::from_secs(30), |j| {
        matches!(
            j["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        )
    })
    .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempt"], 2, "taken over once: {job}");
    let calls = mocks.anthropic.calls();
    let count = |t: &str| {
        calls
            .iter()
            .filter(|c| c.prompt().contains(&format!("\"{t}\"")))
            .count()
    };
    assert_eq!(count("Alpha"), 1, "a finished chapter was requested again");
    assert!(count("Beta") <= 2 && count("Gamma") >= 1);
    assert_eq!(
        mocks.openai.calls().len(),
        1,
        "the finished outline was requested again"
    );
    assert_eq!(mocks.gemini.calls().len(), 1);
    assert!(job["errors"].to_string().contains("lease expired"), "{job}");
}

#[tokio::test]
async fn a_worker_whose_lease_was_taken_over_cannot_complete_or_overwrite() {
    let app = spawn_app().await;
    let (_admin, pro, _) = book_setup(&app).await;
    let (_, job) = app
        .post(
            "/v1/generations",
            &pro.token,
            json!({"input": {"topic": "fence"}}),
        )
        .await;
    let id: uuid::Uuid = job["id"].as_str().unwrap().parse().unwrap();
    let queue = Queue::new(Rest::new(&app.stack.supabase_config()).unwrap());
    let a = queue.claim("a", 1, 1).await.unwrap();
    assert_eq!(a.len(), 1);
    let stale = a[0].lease_token;
    // A second worker cannot claim it while the lease holds...
    assert!(queue.claim("b", 1, 30).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // ...and takes it over once it expires.
    let b = queue.claim("b", 1, 30).await.unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].attempt, 2);
    let step = bookengine::queue::StepWrite {
        step_id: "outline".into(),
        item_index: -1,
        status: "succeeded",
        output: Some(json!("stale")),
        usage: json!({}),
        attempt_log: json!([]),
        ..Default::default()
    };
    for (what, err) in [
        (
            "complete",
            queue
                .complete(id, stale, &json!({"book": "stale"}), None)
                .await
                .err(),
        ),
        ("fail", queue.fail(id, stale, "x", false, 0).await.err()),
        ("heartbeat", queue.heartbeat(id, stale, 30).await.err()),
        (
            "save_step",
            queue.save_step(id, stale, &step, None).await.err(),
        ),
        ("cancelled", queue.cancelled(id, stale).await.err()),
    ] {
        let e = err.unwrap_or_else(|| panic!("{what} with a stale lease was accepted"));
        assert_eq!(e.code, "lease_lost", "{what}");
    }
    // The current holder writes; a finished step is written once.
    let fresh = b[0].lease_token;
    let saved = queue.save_step(id, fresh, &step, None).await.unwrap();
    assert_eq!(saved.output, Some(json!("stale")));
    let again = bookengine::queue::StepWrite {
        output: Some(json!("overwrite")),
        ..step
    };
    let saved = queue.save_step(id, fresh, &again, None).await.unwrap();
    assert_eq!(
        saved.output,
        Some(json!("stale")),
        "a succeeded step was overwritten"
    );
    queue
        .complete(id, fresh, &json!({"book": "ok"}), None)
        .await
        .unwrap();
    let (_, job) = app.get(&format!("/v1/generations/{id}"), &pro.token).await;
    assert_eq!(
        (job["status"].clone(), job["result"]["book"].clone()),
        (json!("succeeded"), json!("ok"))
    );
}
