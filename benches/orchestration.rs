//! Orchestration overhead: the example book flow (outline -> 12 chapters fanned out
//! -> edit) deployed as an engine, every step on one mock provider that answers
//! after a fixed L = 200 ms. End-to-end time (POST /v1/generations -> succeeded)
//! against the ideal: 3L on the critical path in parallel mode, 14L (the sum of the
//! calls) in sequential mode (fan-out width 1). The rest is the service's overhead
//! (claim, template rendering, every step persisted through PostgREST, completion).
//!
//! `cargo bench --bench orchestration` · `BENCH_QUICK=1 cargo bench --bench orchestration`

#[path = "common/mod.rs"]
mod common;

use common::kit::{
    flows::book_flow,
    mock_llm::{MockProvider, BENCH_STREAM_PIECES},
    service::{serve_config, Service},
    stack::Stack,
};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const L: Duration = Duration::from_millis(200);
const CHAPTERS: usize = 12;
/// Calls per book: outline + 12 chapters + edit.
const CALLS: usize = CHAPTERS + 2;

fn main() {
    bench_main("orchestration", run);
}

struct Bench {
    stack: Stack,
    http: reqwest::Client,
    service: String,
    user_token: String,
}

/// One book: client-observed and database-recorded times, and a breakdown from the
/// job's and its steps' timestamps (Postgres `now()` of each write's transaction).
#[derive(Clone, Copy, Debug)]
struct Run {
    client_ms: f64,
    db_ms: f64,
    /// created_at -> started_at (the claim).
    claim_ms: f64,
    /// Model calls recorded (rows with a latency).
    calls: f64,
    /// Sum over calls of the worker-measured provider latency minus L: the HTTP
    /// client and the mock's own answer time.
    provider_over_ms: f64,
    /// (job finished - job started) - sum of provider latencies: rendering, step
    /// records, completion, and time between steps. (A finished call's row starts at
    /// its save time minus its latency, so rows cannot split this further.)
    /// Meaningful as a sum only in sequential runs (calls do not overlap).
    between_ms: f64,
}

impl Bench {
    async fn book(&self, engine: Uuid) -> Res<Run> {
        let t0 = Instant::now();
        let r = self
            .http
            .post(format!("{}/v1/generations", self.service))
            .bearer_auth(&self.user_token)
            .json(&json!({"engine_id": engine, "input": {"topic": "benchmarks", "chapters": CHAPTERS}}))
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await?;
        if status.as_u16() != 202 {
            return Err(format!("POST /v1/generations: {status} {body}").into());
        }
        let id = Uuid::parse_str(body["id"].as_str().unwrap_or_default())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let client_ms = loop {
            let row = self
                .stack
                .pg
                .query_one(
                    "SELECT status FROM public.generation_jobs WHERE id = $1",
                    &[&id],
                )
                .await?;
            let s: String = row.get(0);
            match s.as_str() {
                "succeeded" => break ms(t0.elapsed()),
                "failed" | "cancelled" => {
                    let e: Option<String> = self
                        .stack
                        .pg
                        .query_one(
                            "SELECT error FROM public.generation_jobs WHERE id = $1",
                            &[&id],
                        )
                        .await?
                        .get(0);
                    return Err(format!("job {id} {s}: {e:?}").into());
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(format!("job {id} did not finish in 60 s").into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let row = self
            .stack
            .pg
            .query_one(
                "SELECT extract(epoch FROM j.finished_at - j.created_at)::float8 * 1000,
                        extract(epoch FROM j.started_at - j.created_at)::float8 * 1000,
                        extract(epoch FROM j.finished_at - j.started_at)::float8 * 1000,
                        s.lat, s.calls
                 FROM public.generation_jobs j,
                      LATERAL (SELECT coalesce(sum(x.latency_ms), 0)::float8 AS lat, count(*)::float8 AS calls
                               FROM public.generation_steps x WHERE x.job_id = j.id AND x.latency_ms IS NOT NULL) s
                 WHERE j.id = $1",
                &[&id],
            )
            .await?;
        let (db_ms, claim_ms, run_ms, lat, calls): (f64, f64, f64, f64, f64) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        Ok(Run {
            client_ms,
            db_ms,
            claim_ms,
            calls,
            provider_over_ms: lat - calls * ms(L),
            between_ms: run_ms - lat,
        })
    }
}

fn worker_config(fanout: usize, stream: bool) -> bookengine::worker::WorkerConfig {
    bookengine::worker::WorkerConfig {
        concurrency: 4,
        fanout_concurrency: fanout,
        poll_interval_ms: 1000,
        stream_deltas: stream,
        ..Default::default()
    }
}

/// One mode's runs: parallel books, then sequential books, on a fresh worker.
struct Phase {
    stream: bool,
    par: Vec<Run>,
    seq: Vec<Run>,
    par_calls: u64,
    par_max_in_flight: u64,
    seq_calls: u64,
    seq_max_in_flight: u64,
    /// Delta rows and their bytes (table + indexes) per book, streaming on.
    rows_per_book: f64,
}

async fn run() -> Res<()> {
    let q = quick();
    let (n_par, n_seq) = if q { (3, 2) } else { (10, 5) };
    let load_before = loadavg();
    let stack = bench_stack("orchestration", 10).await?;
    println!(
        "mode: {}; L = {} ms; flow: outline -> {CHAPTERS} chapters (for_each) -> edit = {CALLS} calls; all steps on provider `openai` -> in-bench mock",
        if q { "QUICK" } else { "full" },
        L.as_millis()
    );
    let mock = MockProvider::fixed_latency(L, CHAPTERS).await;
    stack
        .pg
        .batch_execute(
            "UPDATE public.generation_limits SET max_concurrent = 1000, max_per_hour = 100000",
        )
        .await?;
    let admin = stack.user(Some("enterprise"), true).await.id;
    let user = stack.user(Some("enterprise"), false).await.id;

    let supabase = stack.supabase_config();
    let providers = bookengine::providers::ProvidersConfig {
        openai_api_key: Some(bookengine::secret::Secret::new("x")),
        openai_base_url: mock.base_url.clone(),
        provider_concurrency: 16,
        ..Default::default()
    };
    let config = bookengine::http::ServeConfig {
        worker: worker_config(16, true),
        providers: providers.clone(),
        ..serve_config(&stack)
    };
    let app = Service::start(&config).await?;
    let wake = app.state.wake.clone();
    let service = app.address.clone();
    wait_http(&format!("{service}/healthz"), Duration::from_secs(10)).await?;

    let http = reqwest::Client::new();
    let admin_token = stack.token_for(admin);
    let user_token = stack.token_for(user);
    let mut engines = Vec::new();
    for (mode, name) in [
        ("parallel", "Bench book (parallel)"),
        ("sequential", "Bench book (sequential)"),
    ] {
        let r = http
            .post(format!("{service}/v1/engines"))
            .bearer_auth(&admin_token)
            .json(&book_flow("openai", mode, name))
            .send()
            .await?;
        let status = r.status();
        let body: Value = r.json().await?;
        if !status.is_success() {
            return Err(format!("deploy {mode}: {status} {body}").into());
        }
        let id = Uuid::parse_str(body["id"].as_str().unwrap_or_default())?;
        let r = http
            .post(format!("{service}/v1/assignments"))
            .bearer_auth(&admin_token)
            .json(&json!({"engine_id": id, "user_id": user}))
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(format!("assign {mode}: {}", r.text().await?).into());
        }
        engines.push(id);
    }
    let bench = Bench {
        stack,
        http,
        service,
        user_token,
    };

    // Streaming on, then off, on the same stack: fan-out width 16 (>= 12 chapters at once).
    let mut phases = Vec::new();
    for stream in [true, false] {
        let shutdown = CancellationToken::new();
        let (_, handle) = bookengine::worker::spawn(
            &supabase,
            &worker_config(16, stream),
            &providers,
            wake.clone(),
            shutdown.clone(),
        )
        .await?;
        // Warm-up (connections, first-use costs), not counted.
        bench.book(engines[0]).await?;
        mock.reset_counts();
        let busy = cpu_busy(Duration::from_millis(500)).await;
        println!(
            "streaming {}: machine CPU busy before measuring: {busy:.0}% (loadavg {})",
            if stream { "ON" } else { "OFF" },
            loadavg()
        );
        let rows0: i64 = bench
            .stack
            .pg
            .query_one("SELECT count(*) FROM public.generation_deltas", &[])
            .await?
            .get(0);
        let mut par = Vec::new();
        for _ in 0..n_par {
            par.push(bench.book(engines[0]).await?);
        }
        let rows1: i64 = bench
            .stack
            .pg
            .query_one("SELECT count(*) FROM public.generation_deltas", &[])
            .await?
            .get(0);
        let par_calls = mock.call_count();
        let par_max_in_flight = mock.max_in_flight();
        // Sequential mode on the same worker (fan-out width 16): `sequential` runs one
        // call at a time, a for_each's items included, whatever the configured width.
        mock.reset_counts();
        let mut seq = Vec::new();
        for _ in 0..n_seq {
            seq.push(bench.book(engines[1]).await?);
        }
        let seq_calls = mock.call_count();
        let seq_max_in_flight = mock.max_in_flight();
        shutdown.cancel();
        let _ = handle.await;
        phases.push(Phase {
            stream,
            rows_per_book: (rows1 - rows0) as f64 / par.len().max(1) as f64,
            par,
            seq,
            par_calls,
            par_max_in_flight,
            seq_calls,
            seq_max_in_flight,
        });
    }

    let l = ms(L);
    let report = |label: &str, runs: &[Run], ideal_calls: f64, steps_on_path: f64, target: f64| {
        let client = Stats::of_ms(&runs.iter().map(|r| r.client_ms).collect::<Vec<_>>());
        let db = Stats::of_ms(&runs.iter().map(|r| r.db_ms).collect::<Vec<_>>());
        let med =
            |f: &dyn Fn(&Run) -> f64| Stats::of_ms(&runs.iter().map(f).collect::<Vec<_>>()).p50;
        let claim = med(&|r| r.claim_ms);
        let calls = med(&|r| r.calls);
        let provider_over = med(&|r| r.provider_over_ms);
        let between = med(&|r| r.between_ms);
        let ideal = ideal_calls * l;
        let ratio = client.p50 / ideal;
        let per_step = (client.p50 - ideal) / steps_on_path;
        println!("\n{label} ({} runs)", runs.len());
        println!(
            "  end-to-end (client: POST -> status succeeded seen): p50 {:.1} ms, min {:.1}, max {:.1}",
            client.p50,
            runs.iter().map(|r| r.client_ms).fold(f64::INFINITY, f64::min),
            client.max
        );
        println!(
            "  end-to-end (database: created_at -> finished_at):    p50 {:.1} ms",
            db.p50
        );
        println!(
            "  floor {ideal_calls}L = {ideal:.0} ms; ratio {ratio:.3}x -> {}",
            verdict_max(ratio, target, "x")
        );
        println!(
            "  overhead {:.1} ms over {steps_on_path} steps on the path = {per_step:.2} ms per step -> {}",
            client.p50 - ideal,
            verdict_max(per_step, 5.0, " ms")
        );
        println!(
            "  breakdown (medians): request -> claimed {claim:.1} ms; per call: provider round trip over L {:.2} ms",
            provider_over / calls.max(1.0)
        );
        if steps_on_path == CALLS as f64 {
            println!(
                "  sequential sum: claim {claim:.1} + provider over L {provider_over:.1} + between calls/complete {between:.1} = {:.1} ms (database end-to-end minus 14L: {:.1} ms)",
                claim + provider_over + between,
                db.p50 - ideal
            );
        }
        (client.p50, ratio, per_step)
    };
    println!("\n================ orchestration: summary ================");
    let mut results = Vec::new();
    for ph in &phases {
        let on = if ph.stream {
            "streaming ON"
        } else {
            "streaming OFF"
        };
        let p = report(
            &format!("{on}: parallel mode, fan-out width 16, provider concurrency 16"),
            &ph.par,
            3.0,
            3.0,
            1.15,
        );
        println!(
            "  mock calls {} (expected {}), max in flight at the mock {}",
            ph.par_calls,
            ph.par.len() * CALLS,
            ph.par_max_in_flight
        );
        let s = report(
            &format!("{on}: sequential mode (every call one after another; the worker's fan-out width is 16)"),
            &ph.seq,
            CALLS as f64,
            CALLS as f64,
            1.05,
        );
        println!(
            "  mock calls {} (expected {}), max in flight at the mock {}",
            ph.seq_calls,
            ph.seq.len() * CALLS,
            ph.seq_max_in_flight
        );
        if ph.stream {
            println!(
                "  delta rows per parallel book: {:.1} ({CALLS} calls x {BENCH_STREAM_PIECES} chunks = {} provider deltas)",
                ph.rows_per_book,
                CALLS * BENCH_STREAM_PIECES
            );
        }
        println!(
            "\nRESULT {on}: parallel {:.1} ms = {:.3}x of 3L ({:.2} ms/step); sequential {:.1} ms = {:.3}x of 14L ({:.2} ms/step)",
            p.0, p.1, p.2, s.0, s.1, s.2
        );
        results.push((ph.stream, p, s));
    }
    if let (Some(on), Some(off)) = (results.iter().find(|r| r.0), results.iter().find(|r| !r.0)) {
        println!(
            "streaming on / off, same run: parallel {:.3}x, sequential {:.3}x",
            on.1 .0 / off.1 .0,
            on.2 .0 / off.2 .0
        );
    }
    println!(
        "loadavg before {load_before}, after {} (other processes may share the 2 cores)",
        loadavg()
    );
    drop(app);
    drop(bench);
    Ok(())
}
