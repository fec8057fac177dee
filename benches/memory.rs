//! Memory of a `bookengine serve` process (API + worker): RSS when idle, and the
//! peak with 1,000 jobs in flight (one-step jobs, mock provider answering after 2 s,
//! worker and provider concurrency 1,000, jobs inserted by the service role, to
//! which the per-tier generation limits do not apply). From /proc/<pid>/status.
//!
//! `cargo bench --bench memory` · `BENCH_QUICK=1 cargo bench --bench memory`

#[path = "common/mod.rs"]
mod common;

use common::kit::{mock_llm::MockProvider, stack::Stack};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const JOBS: usize = 1_000;
const MOCK_LATENCY: Duration = Duration::from_secs(2);

fn main() {
    bench_main("memory", run);
}

async fn run() -> Res<()> {
    let q = quick();
    let load_before = loadavg();
    let stack = bench_stack("memory", 10).await?;
    println!(
        "mode: {}; {JOBS} one-step jobs, mock latency {} s, BOOKENGINE_WORKER_CONCURRENCY={JOBS}, BOOKENGINE_PROVIDER_CONCURRENCY={JOBS}",
        if q { "QUICK" } else { "full" },
        MOCK_LATENCY.as_secs()
    );
    let mock = MockProvider::fixed_latency(MOCK_LATENCY, 3).await;
    let (engine, users) = one_step_world(&stack, 100).await?;
    // Not needed for service-role inserts, but a user-driven variant would need it.
    stack
        .pg
        .batch_execute(
            "UPDATE public.generation_limits SET max_concurrent = 100000, max_per_hour = 1000000",
        )
        .await?;

    let port = bookengine::devstack::free_port()?;
    let mut env = stack.child_env();
    env.extend([
        ("BOOKENGINE_ADDR".to_owned(), format!("127.0.0.1:{port}")),
        (
            "WEBHOOK_SECRET".to_owned(),
            "bench-webhook-secret-0123456789abcdef".to_owned(),
        ),
        ("OPENAI_BASE_URL".to_owned(), mock.base_url.clone()),
        ("OPENAI_API_KEY".to_owned(), "x".to_owned()),
        ("BOOKENGINE_WORKER_CONCURRENCY".to_owned(), JOBS.to_string()),
        (
            "BOOKENGINE_PROVIDER_CONCURRENCY".to_owned(),
            JOBS.to_string(),
        ),
        ("BOOKENGINE_POLL_INTERVAL_MS".to_owned(), "100".to_owned()),
        ("BOOKENGINE_WORKER_ID".to_owned(), "bench-memory".to_owned()),
    ]);
    let mut serve = spawn_bookengine(&["serve"], &env, &log_dir().join("memory-serve.log"))?;
    let pid = serve.pid();
    let base = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{base}/healthz"), Duration::from_secs(20)).await?;
    serve
        .wait_log("worker started", Duration::from_secs(20))
        .await?;

    // Idle: started, worker polling, nothing to do.
    tokio::time::sleep(Duration::from_secs(if q { 2 } else { 5 })).await;
    let (idle_rss, idle_hwm) = rss_mib(pid).ok_or("no /proc status")?;
    println!(
        "idle after start: VmRSS {idle_rss:.1} MiB, VmHWM {idle_hwm:.1} MiB, threads {}",
        threads(pid).unwrap_or(0)
    );
    // Idle after some API traffic (routes, token verification, PostgREST client warm).
    let http = reqwest::Client::new();
    let token = stack.token_for(users[0]);
    for _ in 0..50 {
        for path in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/me/engines",
            "/v1/generations",
        ] {
            let _ = http
                .get(format!("{base}{path}"))
                .bearer_auth(&token)
                .send()
                .await?
                .bytes()
                .await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (warm_rss, warm_hwm) = rss_mib(pid).ok_or("no /proc status")?;
    println!("idle after 250 API requests: VmRSS {warm_rss:.1} MiB, VmHWM {warm_hwm:.1} MiB");

    // 1,000 jobs at once: with the specified 2 s provider latency, then (full mode)
    // with 10 s, long enough for all 1,000 calls to be open at the same time.
    let mut phases = vec![MOCK_LATENCY];
    if !q {
        phases.push(Duration::from_secs(10));
    }
    let mut results = Vec::new();
    for latency in phases {
        stack
            .pg
            .batch_execute("TRUNCATE public.generation_jobs CASCADE")
            .await?;
        mock.latency(latency);
        let busy = cpu_busy(Duration::from_millis(500)).await;
        println!(
            "\nmachine CPU busy before the load: {busy:.0}% (loadavg {})",
            loadavg()
        );
        let r = load_phase(&stack, &mock, &http, &base, pid, engine, &users).await?;
        println!(
            "provider latency {} s: {}/{JOBS} succeeded ({} failed) in {:.1} s; peak jobs `running` in the database {}; peak calls in flight at the provider {}; peak threads {}",
            latency.as_secs(),
            r.done,
            r.failed,
            r.elapsed.as_secs_f64(),
            r.peak_running,
            r.in_flight,
            r.peak_threads
        );
        println!(
            "  peak VmRSS sampled {:.1} MiB, VmHWM so far {:.1} MiB; 3 s after: VmRSS {:.1} MiB",
            r.peak_rss, r.hwm, r.after_rss
        );
        results.push((latency, r));
    }
    let pgrst = stack.postgrest.pid().and_then(rss_mib);
    serve.stop(Duration::from_secs(10));
    if let Some((r, h)) = pgrst {
        println!("(PostgREST, for reference: VmRSS {r:.1} MiB, VmHWM {h:.1} MiB)");
    }

    println!("\n================ memory: summary ================");
    println!(
        "idle: VmRSS {idle_rss:.1} MiB (after 250 requests {warm_rss:.1} MiB) -> {}",
        verdict_max(warm_rss.max(idle_rss), 30.0, " MiB")
    );
    for (latency, r) in &results {
        println!(
            "1,000 jobs, provider latency {} s: VmHWM {:.1} MiB (peak VmRSS sampled {:.1}; calls open at once: {}, jobs running: {}) -> {}",
            latency.as_secs(),
            r.hwm,
            r.peak_rss,
            r.in_flight,
            r.peak_running,
            verdict_max(r.hwm, 150.0, " MiB")
        );
    }
    println!(
        "loadavg before {load_before}, after {} (other processes may share the 2 cores)",
        loadavg()
    );
    drop(mock);
    Ok(())
}

struct Phase {
    done: i64,
    failed: i64,
    elapsed: Duration,
    peak_rss: f64,
    hwm: f64,
    after_rss: f64,
    peak_threads: u64,
    peak_running: i64,
    in_flight: u64,
}

async fn load_phase(
    stack: &Stack,
    mock: &MockProvider,
    http: &reqwest::Client,
    base: &str,
    pid: u32,
    engine: uuid::Uuid,
    users: &[uuid::Uuid],
) -> Res<Phase> {
    mock.reset_counts();
    let rows: Vec<Value> = (0..JOBS)
        .map(|i| json!({"user_id": users[i % users.len()], "engine_id": engine, "input": {"topic": format!("memory {i}")}}))
        .collect();
    let t0 = Instant::now();
    insert_job_rows(http, stack, &rows).await?;
    // Wake the worker as the database webhook would.
    let _ = http
        .post(format!("{base}/webhooks/generation"))
        .bearer_auth("bench-webhook-secret-0123456789abcdef")
        .json(&json!({"type": "INSERT", "table": "generation_jobs", "schema": "public", "record": {"id": null}}))
        .send()
        .await?;
    let mut peak_rss = 0.0f64;
    let mut peak_threads = 0u64;
    let mut peak_running = 0i64;
    let mut last_db = Instant::now() - Duration::from_secs(1);
    let limit = Duration::from_secs(180);
    let (done, failed) = loop {
        if let Some((rss, _)) = rss_mib(pid) {
            peak_rss = peak_rss.max(rss);
        }
        peak_threads = peak_threads.max(threads(pid).unwrap_or(0));
        if last_db.elapsed() >= Duration::from_millis(200) {
            last_db = Instant::now();
            let row = stack
                .pg
                .query_one(
                    "SELECT count(*) FILTER (WHERE status = 'running'), count(*) FILTER (WHERE status = 'succeeded'),
                            count(*) FILTER (WHERE status IN ('failed', 'cancelled')) FROM public.generation_jobs",
                    &[],
                )
                .await?;
            let (running, done, failed): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            peak_running = peak_running.max(running);
            if (done + failed) as usize >= JOBS || t0.elapsed() > limit {
                break (done, failed);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elapsed = t0.elapsed();
    let (_, hwm) = rss_mib(pid).ok_or("no /proc status")?;
    let in_flight = mock.max_in_flight();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (after_rss, _) = rss_mib(pid).ok_or("no /proc status")?;
    Ok(Phase {
        done,
        failed,
        elapsed,
        peak_rss,
        hwm,
        after_rss,
        peak_threads,
        peak_running,
        in_flight,
    })
}
