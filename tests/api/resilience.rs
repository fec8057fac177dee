//! Crash and resume, and lease fencing, with real worker processes.

use crate::kit::app::{book_setup, example_engine_for, spawn_app, TestApp};
use crate::kit::http::JsonCalls;
use crate::kit::jobs::{assert_all_succeed, request_book, start_book, wait_until};
use crate::kit::mock_llm::{Mocks, ANTHROPIC_KEY, GEMINI_KEY, OPENAI_KEY};
use bookengine::queue::{Claim, ClaimedJob, Queue};
use bookengine::rest::Rest;
use serde_json::json;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// The readable jobs of a claim (tests claim only ordinary jobs).
pub fn ready(claims: Vec<Claim>) -> Vec<ClaimedJob> {
    claims
        .into_iter()
        .map(|c| match c {
            Claim::Ready(j) => j,
            Claim::Unreadable { id, reason, .. } => panic!("job {id} unreadable: {reason}"),
        })
        .collect()
}

pub fn worker_process(app: &TestApp, mocks: &Mocks, name: &str) -> Child {
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
        .env("BOOKENGINE_WORKER_CONCURRENCY", "4")
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
    let (s, job) = request_book(&app, &pro, "resilience").await;
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
    let job = wait_until(
        &app,
        &pro.token,
        &id,
        Duration::from_secs(30),
        crate::kit::jobs::finished,
    )
    .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    // A lost worker is not the job's fault: no attempt spent, one lease loss recorded.
    assert_eq!(
        (job["attempt"].clone(), job["lease_losses"].clone()),
        (json!(1), json!(1)),
        "taken over once: {job}"
    );
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
    let (_, job) = request_book(&app, &pro, "fence").await;
    let id: uuid::Uuid = job["id"].as_str().unwrap().parse().unwrap();
    let queue = Queue::new(Rest::new(&app.stack.supabase_config()).unwrap());
    let a = ready(queue.claim("a", 1, 1).await.unwrap());
    assert_eq!(a.len(), 1);
    let stale = a[0].lease_token;
    // A second worker cannot claim it while the lease holds...
    assert!(queue.claim("b", 1, 30).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // ...and takes it over once it expired, after the short jittered delay a rescued
    // job waits (0.5-1.5 s) so that fresh work goes first.
    let b = loop {
        let b = ready(queue.claim("b", 1, 30).await.unwrap());
        if !b.is_empty() {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(b.len(), 1);
    assert_eq!(
        (b[0].attempt, b[0].lease_losses),
        (1, 1),
        "a lost lease is not an attempt"
    );
    let step = bookengine::jobs::StepRecord {
        step_id: "outline".into(),
        item_index: -1,
        status: bookengine::jobs::StepStatus::Succeeded,
        output: Some(json!("stale")),
        usage: json!({}),
        attempt_log: json!([]),
        ..Default::default()
    };
    for (what, err) in [
        (
            "complete",
            queue
                .complete(
                    id,
                    stale,
                    &json!({"book": "stale"}),
                    None,
                    std::slice::from_ref(&step),
                    &[],
                )
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
    // Nothing the stale worker sent was written, not even the step held for completion.
    assert!(
        queue.steps(id).await.unwrap().is_empty(),
        "a stale lease wrote a step"
    );
    // The current holder writes; a finished step is written once.
    let fresh = b[0].lease_token;
    let saved = queue.save_step(id, fresh, &step, None).await.unwrap();
    assert_eq!(saved.output, Some(json!("stale")));
    let again = bookengine::jobs::StepRecord {
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
        .complete(id, fresh, &json!({"book": "ok"}), None, &[again], &[])
        .await
        .unwrap();
    let steps = queue.steps(id).await.unwrap();
    assert_eq!(
        (steps.len(), steps[0].output.clone()),
        (1, Some(json!("stale"))),
        "a step held for completion overwrote a finished one"
    );
    let (_, job) = app.get(&format!("/v1/generations/{id}"), &pro.token).await;
    assert_eq!(
        (job["status"].clone(), job["result"]["book"].clone()),
        (json!("succeeded"), json!("ok"))
    );
}

/// Many jobs, the worker SIGKILLed at random moments and restarted: every job ends
/// `succeeded`, no chapter is written twice, and finished work is not billed again.
/// Short in every run; `BOOKENGINE_LONG_TESTS=1`: 200 jobs, 20 kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sigkills_lose_and_repeat_nothing() {
    let (jobs, kills) = if crate::load::long() {
        (200, 20)
    } else {
        (8, 3)
    };
    let mocks = Mocks::start().await;
    mocks.anthropic.latency(Duration::from_millis(150));
    let app = spawn_app().await;
    example_engine_for(&app, "enterprise").await;
    let mut ids = Vec::new();
    let mut users = Vec::new();
    for i in 0..jobs {
        if i % 10 == 0 {
            users.push(app.stack.user(Some("enterprise"), false).await);
        }
        let u = users.last().expect("a user");
        let id = start_book(&app, u, &format!("k{i}")).await;
        ids.push((u.token.clone(), id));
    }
    // Kills are paced by the work, not the clock, so that they mean the same on a slow
    // machine and a fast one: each worker is killed once it has saved about k more
    // step records (k jittered by +-25 %), spreading the kills over the whole run.
    let rows_needed = jobs as i64 * 6;
    // One share of work more than there are kills: the last worker has work left too.
    let k = rows_needed / (kills as i64 + 2);
    let saved = || async {
        app.stack
            .count(
                "SELECT count(*) FROM generation_steps WHERE status = 'succeeded'",
                &[],
            )
            .await
    };
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for n in 0..kills {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let target =
            (saved().await + k * 3 / 4 + (seed % (k as u64 / 2 + 1)) as i64).min(rows_needed);
        let mut w = worker_process(&app, &mocks, &format!("w{n}"));
        let since = std::time::Instant::now();
        while saved().await < target {
            assert!(
                since.elapsed() < Duration::from_secs(120),
                "kill {n}: no progress to {target} saved steps in 120 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        w.start_kill().expect("SIGKILL");
        let _ = w.wait().await;
    }
    let _last = worker_process(&app, &mocks, "final");
    assert_all_succeed(&app, &ids, Duration::from_secs(180)).await;
    // One row per step and item (a unique key), all succeeded: no output written twice.
    let dup: i64 = app
        .stack
        .count(
            "SELECT count(*) FROM (SELECT job_id, step_id, item_index FROM generation_steps \
             GROUP BY 1, 2, 3 HAVING count(*) > 1) d",
            &[],
        )
        .await;
    assert_eq!(dup, 0);
    let rows: i64 = app
        .stack
        .count(
            "SELECT count(*) FROM generation_steps WHERE status = 'succeeded'",
            &[],
        )
        .await;
    assert_eq!(rows, jobs as i64 * 6);
    // No provider ever failed: every lost lease was refunded, none cost an attempt.
    let row = app
        .stack
        .pg
        .query_one(
            "SELECT max(attempt), coalesce(sum(lease_losses), 0)::bigint, max(lease_losses) FROM generation_jobs",
            &[],
        )
        .await
        .unwrap();
    let (max_attempt, losses, max_losses): (i32, i64, i32) = (row.get(0), row.get(1), row.get(2));
    println!("sigkill: {losses} lost leases in all, at most {max_losses} for one job");
    assert_eq!(max_attempt, 1, "a lost lease cost a job an attempt");
    assert!(
        losses >= 1,
        "no kill ever took a lease: the test did not test"
    );
    // Provider calls: the 5 per job, plus at most the calls in flight at each kill
    // (4 jobs x (1 + 3 chapters) per worker): finished work is never requested again.
    let calls = mocks.call_count() as i64;
    println!(
        "sigkill: {jobs} jobs, {kills} kills, {calls} provider calls for {} needed",
        jobs * 5
    );
    assert!(calls >= jobs as i64 * 5);
    assert!(
        calls <= jobs as i64 * 5 + kills as i64 * 16,
        "{calls} calls: finished work was re-billed"
    );
}
