//! The reading side of issue #14: a job's text over SSE.
//!
//! 1. token → SSE client latency: a simulated provider emits a token every 20 ms (50
//!    tokens/s); a simulated worker writer flushes what it has every 100 ms with one
//!    `delta_append` (as src/worker/deltas.rs does); an SSE client stamps each token
//!    when its row arrives. Polling (100 ms) and LISTEN wake-ups, side by side.
//! 2. 1,000 viewers across 50 running jobs (20 streams per job, each job's owner), every
//!    job gaining one row per 100 ms flush (one `delta_append` carrying all 50 jobs):
//!    the service's CPU (its own runtime threads), the process RSS, and the service's
//!    PostgREST reads/s by kind; then the same with every viewer reconnecting every ~3 s
//!    with Last-Event-ID (each checks it got every row once, in order).
//!
//! `cargo bench --bench streams` · `BENCH_QUICK=1` for shorter windows. The service runs
//! in this process on a runtime of its own (threads named `svc`), so its CPU is read
//! from those threads alone; RSS is the whole process (clients included).

#[path = "common/mod.rs"]
mod common;

use bookengine::generations::watch::StreamConfig;
use bookengine::metrics::Metrics;
use bookengine::secret::Secret;
use common::kit::{
    flows::one_step_flow,
    seed::{engine_row, mark_checked},
    stack::Stack,
};
use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

fn main() {
    bench_main("streams", run);
}

/// CPU seconds used by this process's threads named `svc`.
fn service_cpu_secs() -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    let mut total = 0u64;
    for t in tasks.flatten() {
        let p = t.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if comm.trim() != "svc" {
            continue;
        }
        let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
        // Fields after the ")" of comm: state is 3rd; utime 14th, stime 15th overall.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ut: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0);
            let st: u64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
            total += ut + st;
        }
    }
    total as f64 / tick
}

fn reads() -> HashMap<&'static str, u64> {
    let m = &Metrics::global().stream_reads;
    ["join", "light", "full", "head", "deltas", "replay"]
        .into_iter()
        .map(|k| (k, m.with_label_values(&[k]).get()))
        .collect()
}

fn diff(
    a: &HashMap<&'static str, u64>,
    b: &HashMap<&'static str, u64>,
) -> Vec<(&'static str, u64)> {
    let mut v: Vec<_> = b
        .iter()
        .map(|(k, n)| (*k, n - a.get(k).copied().unwrap_or(0)))
        .collect();
    v.sort();
    v
}

/// A running job of `user` (raw SQL, triggers off: admission is not measured here).
async fn running_job(stack: &Stack, engine: Uuid, user: Uuid) -> Res<(Uuid, Uuid)> {
    let lease = Uuid::new_v4();
    stack
        .pg
        .batch_execute("SET session_replication_role = replica")
        .await?;
    let row = stack
        .pg
        .query_one(
            "WITH j AS (INSERT INTO public.generation_jobs (user_id, engine_id, engine_name, engine_snapshot,
                 input, status, attempt, lease_token, lease_owner, lease_expires_at, started_at, scheduled_at)
               VALUES ($1, $2, 'streams', '{\"flow_config\": {}}', '{}', 'running', 1, $3, 'bench',
                 now() + interval '1 hour', now(), now()) RETURNING id) SELECT id FROM j",
            &[&user, &engine, &lease],
        )
        .await?;
    stack
        .pg
        .batch_execute("RESET session_replication_role")
        .await?;
    Ok((row.get(0), lease))
}

/// An SSE client's events: (event, id, data).
struct Sse {
    resp: reqwest::Response,
    buf: String,
}

impl Sse {
    async fn open(
        http: &reqwest::Client,
        url: &str,
        job: Uuid,
        token: &str,
        last: i64,
    ) -> Res<Sse> {
        let mut req = http
            .get(format!("{url}/v1/generations/{job}/events"))
            .bearer_auth(token);
        if last > 0 {
            req = req.header("Last-Event-ID", last.to_string());
        }
        let resp = req.send().await?;
        if !resp.status().is_success() {
            return Err(format!("stream answered {}", resp.status()).into());
        }
        Ok(Sse {
            resp,
            buf: String::new(),
        })
    }

    async fn next(&mut self) -> Option<(String, Option<i64>, String)> {
        loop {
            if let Some(cut) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..cut + 2).collect();
                let (mut event, mut id, mut data) = (String::from("message"), None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some((event, id, data));
            }
            match self.resp.chunk().await {
                Ok(Some(b)) => self.buf.push_str(&String::from_utf8_lossy(&b)),
                _ => return None,
            }
        }
    }
}

fn listen_url(stack: &Stack) -> Secret {
    Secret::new(bookengine::devstack::url_for(&stack.db))
}

/// 1. Token → SSE latency for one job and one viewer, `tokens` tokens at 50/s.
async fn latency(stack: &Stack, engine: Uuid, streams: StreamConfig, tokens: usize) -> Res<Stats> {
    let svc = ApiService::start_with_streams(stack, streams).await?;
    let user = stack.user(Some("pro"), false).await.id;
    let token = stack.token_for(user);
    let (job, lease) = running_job(stack, engine, user).await?;
    let http = reqwest::Client::new();
    let mut sse = Sse::open(&http, &svc.url, job, &token, 0).await?;
    // Let the reader start (first progress) before the first token.
    while let Some((event, _, _)) = sse.next().await {
        if event == "progress" {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let emitted: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let pending: Arc<Mutex<String>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    // The provider: a token every 20 ms.
    let provider = {
        let (emitted, pending) = (emitted.clone(), pending.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            for i in 0..tokens {
                tick.tick().await;
                emitted.lock().unwrap().push(Instant::now());
                pending.lock().unwrap().push_str(&format!("t{i} "));
            }
        })
    };
    // The worker's writer: every 100 ms, what arrived since the last flush, as one row.
    let writer = {
        let (pending, done) = (pending.clone(), done.clone());
        let db = stack.db.clone();
        tokio::spawn(async move {
            let (pg, conn) = db.connect(tokio_postgres::NoTls).await.expect("pg");
            tokio::spawn(conn);
            let mut seq = 0i64;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let text = std::mem::take(&mut *pending.lock().unwrap());
                if text.is_empty() {
                    if done.load(Ordering::Relaxed) {
                        return;
                    }
                    continue;
                }
                seq += 1;
                let rows = json!([{"job_id": job, "lease": lease, "seq": seq, "step_id": "chapters",
                    "item_index": 0, "kind": "delta", "attempt": 1, "run": 1, "text": text}]);
                pg.query_one("SELECT public.delta_append($1::jsonb)", &[&rows])
                    .await
                    .expect("delta_append");
            }
        })
    };
    let mut lat = Vec::with_capacity(tokens);
    while lat.len() < tokens {
        let Some((event, _, data)) =
            tokio::time::timeout(Duration::from_secs(30), sse.next()).await?
        else {
            return Err("the stream ended".into());
        };
        if event != "delta" {
            continue;
        }
        let now = Instant::now();
        let row: Value = serde_json::from_str(&data)?;
        let emitted = emitted.lock().unwrap().clone();
        for t in row["text"].as_str().unwrap_or("").split_whitespace() {
            if let Some(i) = t.strip_prefix('t').and_then(|n| n.parse::<usize>().ok()) {
                if let Some(at) = emitted.get(i) {
                    lat.push(ms(now - *at));
                }
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    provider.await?;
    writer.await?;
    Ok(Stats::of_ms(&lat))
}

/// Viewers: `jobs` running jobs with `per_job` viewers each (the job's owner), for `window`.
/// With `reconnect`, each viewer reconnects with Last-Event-ID every ~3 s.
async fn viewers(
    stack: &Stack,
    engine: Uuid,
    jobs: usize,
    per_job: usize,
    window: Duration,
    reconnect: bool,
    listen: bool,
) -> Res<String> {
    let svc = ApiService::start_with_streams(
        stack,
        StreamConfig {
            streams_per_user: 1000,
            streams_per_job: 1000,
            stream_listen_url: listen.then(|| listen_url(stack)),
            ..StreamConfig::default()
        },
    )
    .await?;
    let mut list = Vec::new();
    for _ in 0..jobs {
        let user = stack.user(Some("pro"), false).await.id;
        let (job, lease) = running_job(stack, engine, user).await?;
        list.push((job, lease, stack.token_for(user)));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let rows_seen = Arc::new(AtomicU64::new(0));
    let broken = Arc::new(AtomicU64::new(0));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(2000)
        .build()?;
    let mut tasks = Vec::new();
    for (i, (job, _, token)) in list.iter().cloned().enumerate() {
        for v in 0..per_job {
            let (http, url, stop, rows_seen, broken, errors) = (
                http.clone(),
                svc.url.clone(),
                stop.clone(),
                rows_seen.clone(),
                broken.clone(),
                errors.clone(),
            );
            let token = token.clone();
            let offset = Duration::from_millis(((i * per_job + v) * 37 % 3000) as u64);
            tasks.push(tokio::spawn(async move {
                let mut last = 0i64;
                let mut first = true;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut sse) = Sse::open(&http, &url, job, &token, last).await else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    let life = if reconnect {
                        if first {
                            Duration::from_millis(500) + offset
                        } else {
                            Duration::from_secs(3)
                        }
                    } else {
                        Duration::from_secs(3600)
                    };
                    first = false;
                    let until = tokio::time::Instant::now() + life;
                    loop {
                        let next = tokio::select! {
                            _ = tokio::time::sleep_until(until) => break,
                            n = sse.next() => n,
                        };
                        let Some((event, id, data)) = next else { break };
                        if event == "error" {
                            errors.lock().unwrap().push(data);
                        }
                        if let Some(id) = id {
                            if id != last + 1 {
                                broken.fetch_add(1, Ordering::Relaxed);
                            }
                            last = id;
                            rows_seen.fetch_add(1, Ordering::Relaxed);
                        }
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
            }));
        }
    }
    // The worker: one delta_append per 100 ms carrying a row for every job.
    let writer = {
        let (stop, db) = (stop.clone(), stack.db.clone());
        let list = list.clone();
        tokio::spawn(async move {
            let (pg, conn) = db.connect(tokio_postgres::NoTls).await.expect("pg");
            tokio::spawn(conn);
            let mut seq = 0i64;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut flushes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                seq += 1;
                let rows: Vec<Value> = list
                    .iter()
                    .map(|(job, lease, _)| {
                        json!({"job_id": job, "lease": lease, "seq": seq,
                        "step_id": "chapters", "item_index": 0, "kind": "delta", "attempt": 1,
                        "run": 1, "text": "a few words of a chapter, about forty bytes "})
                    })
                    .collect();
                pg.query_one(
                    "SELECT public.delta_append($1::jsonb)",
                    &[&Value::Array(rows)],
                )
                .await
                .expect("delta_append");
                flushes += 1;
            }
            flushes
        })
    };
    // Warm-up: every viewer joined and the readers running.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (r0, cpu0, rows0, t0) = (
        reads(),
        service_cpu_secs(),
        rows_seen.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(window).await;
    let (r1, cpu1, rows1, secs) = (
        reads(),
        service_cpu_secs(),
        rows_seen.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    );
    let rss = rss_mib(std::process::id());
    stop.store(true, Ordering::Relaxed);
    let flushes = writer.await?;
    for t in tasks {
        t.abort();
    }
    let per_kind = diff(&r0, &r1);
    let mut codes: HashMap<String, usize> = HashMap::new();
    for e in errors.lock().unwrap().iter() {
        let code = serde_json::from_str::<Value>(e)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_owned))
            .unwrap_or_else(|| e.clone());
        *codes.entry(code).or_default() += 1;
    }
    if !codes.is_empty() {
        println!("  error events: {codes:?}");
    }
    let total: u64 = per_kind.iter().map(|(_, n)| n).sum();
    let per_kind_s: Vec<String> = per_kind
        .iter()
        .map(|(k, n)| format!("{k} {:.1}/s", *n as f64 / secs))
        .collect();
    let delta_reads = per_kind
        .iter()
        .filter(|(k, _)| *k == "deltas")
        .map(|(_, n)| *n)
        .sum::<u64>() as f64
        / secs;
    Ok(format!(
        "{jobs} jobs x {per_job} viewers{}{}: service CPU {:.0}% of one core; process RSS {}; \
         PostgREST reads {:.0}/s ({}); shared text reads per job {:.2}/s; rows delivered {:.0}/s \
         (expected {:.0}/s); out-of-order or missing rows seen: {}; flushes {flushes}",
        if reconnect {
            ", reconnecting every ~3 s with Last-Event-ID"
        } else {
            ""
        },
        if listen {
            ", LISTEN"
        } else {
            ", polling 100 ms"
        },
        100.0 * (cpu1 - cpu0) / secs,
        rss.map(|(cur, peak)| format!("{cur:.0} MiB (peak {peak:.0})"))
            .unwrap_or_else(|| "?".into()),
        total as f64 / secs,
        per_kind_s.join(", "),
        delta_reads / jobs as f64,
        (rows1 - rows0) as f64 / secs,
        (jobs * per_job) as f64 * 10.0,
        broken.load(Ordering::Relaxed),
    ))
}

async fn run() -> Res<()> {
    let quick = quick();
    let mut stack = Stack::bench("streams", 20, log_dir()).await?;
    let engine = engine_row(&stack.pg, &one_step_flow("openai", "streams")).await?;
    mark_checked(&stack.pg, None).await?;
    stack.restart_postgrest().await;
    println!("{}", machine_report(&stack).await);
    println!(
        "load before: {} (busy {:.0}%)",
        loadavg(),
        cpu_busy(Duration::from_secs(1)).await
    );

    let tokens = if quick { 150 } else { 500 };
    let polled = latency(&stack, engine, StreamConfig::default(), tokens).await?;
    println!(
        "{}",
        polled.line("token → SSE, polling 100 ms, flush 100 ms")
    );
    println!("  {}", verdict_max(polled.p50, 150.0, "ms p50"));
    println!("  {}", verdict_max(polled.p99, 400.0, "ms p99"));
    let listened = latency(
        &stack,
        engine,
        StreamConfig {
            stream_listen_url: Some(listen_url(&stack)),
            ..StreamConfig::default()
        },
        tokens,
    )
    .await?;
    println!("{}", listened.line("token → SSE, LISTEN, flush 100 ms"));
    println!("  {}", verdict_max(listened.p50, 150.0, "ms p50"));
    println!("  {}", verdict_max(listened.p99, 400.0, "ms p99"));
    println!("load after latency: {}", loadavg());

    let window = Duration::from_secs(if quick { 5 } else { 15 });
    let jobs = std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 10 } else { 50 });
    let per_job = 20;
    for (reconnect, listen) in [(false, false), (false, true), (true, false), (true, true)] {
        let line = viewers(&stack, engine, jobs, per_job, window, reconnect, listen).await?;
        println!("{line}");
        println!("  load: {}", loadavg());
    }
    Ok(())
}
