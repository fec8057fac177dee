//! Queue throughput: 10,000 one-step jobs (mock provider, 0 ms) inserted by the
//! service role through PostgREST, run by 1, 2 and 4 `bookengine worker` processes;
//! jobs/s from the first insert to the last `succeeded`. In the same run: the raw
//! PostgREST RPC rate at concurrency 16 (the ceiling every queue call shares), the
//! PostgREST calls one job costs (counted by a pass-through proxy), and the
//! webhook-to-claim latency of a `bookengine serve` whose polling is off (10 min).
//!
//! Streaming on against off, the ratio issue #14 sets a target for, is measured in
//! interleaved rounds (each round runs every arm once, in an order that turns round
//! by round), as the phases of one run drift by more than the difference itself.
//! `BENCH_QUEUE_BASELINE_BIN=<another build of bookengine>` adds that build's worker
//! as two more arms of the same rounds: an A/B between commits on one stack and mock.
//!
//! `cargo bench --bench queue` · `BENCH_QUICK=1 cargo bench --bench queue`
//! · `BENCH_AB_ROUNDS=5` (default 3, QUICK 1)

#[path = "common/mod.rs"]
mod common;

use common::kit::{mock_llm::MockProvider, proxy::CountingProxy, stack::Stack};
use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

const WORKER_CONCURRENCY: usize = 16;
const WEBHOOK_SECRET: &str = "bench-webhook-secret-0123456789abcdef";

fn main() {
    bench_main("queue", run);
}

struct Ctx {
    stack: Stack,
    mock: MockProvider,
    http: reqwest::Client,
    engine: Uuid,
    users: Vec<Uuid>,
}

/// What the worker processes of one throughput run are.
#[derive(Clone)]
struct Arm {
    /// Which build: "this build" or "baseline".
    build: &'static str,
    bin: PathBuf,
    /// BOOKENGINE_STREAM_DELTAS (streamed calls, deltas stored).
    stream: bool,
}

impl Arm {
    fn label(&self) -> String {
        let state = if self.stream { "on" } else { "off" };
        format!("{}, streaming {state}", self.build)
    }
}

impl Ctx {
    fn worker_env(
        &self,
        rest_url: &str,
        id: &str,
        poll_ms: u64,
        stream: bool,
    ) -> Vec<(String, String)> {
        let mut env = self.stack.child_env();
        env.retain(|(k, _)| k != "POSTGREST_URL");
        env.extend([
            ("POSTGREST_URL".to_owned(), rest_url.to_owned()),
            ("OPENAI_BASE_URL".to_owned(), self.mock.base_url.clone()),
            ("OPENAI_API_KEY".to_owned(), "x".to_owned()),
            (
                "BOOKENGINE_WORKER_CONCURRENCY".to_owned(),
                WORKER_CONCURRENCY.to_string(),
            ),
            (
                "BOOKENGINE_PROVIDER_CONCURRENCY".to_owned(),
                "64".to_owned(),
            ),
            (
                "BOOKENGINE_POLL_INTERVAL_MS".to_owned(),
                poll_ms.to_string(),
            ),
            ("BOOKENGINE_WORKER_ID".to_owned(), id.to_owned()),
            ("BOOKENGINE_STREAM_DELTAS".to_owned(), stream.to_string()),
        ]);
        env
    }

    async fn reset_jobs(&self) -> Res<()> {
        self.stack
            .pg
            .batch_execute("TRUNCATE public.generation_jobs CASCADE")
            .await?;
        Ok(())
    }

    /// Insert `n` jobs as the service role through PostgREST, `chunk` rows a request.
    async fn insert_jobs(&self, n: usize, chunk: usize) -> Res<()> {
        let mut left = n;
        let mut k = 0usize;
        while left > 0 {
            let m = left.min(chunk);
            let rows: Vec<Value> = (0..m)
                .map(|i| {
                    json!({"user_id": self.users[(k + i) % self.users.len()], "engine_id": self.engine,
                           "input": {"topic": format!("job {}", k + i)}})
                })
                .collect();
            insert_job_rows(&self.http, &self.stack, &rows).await?;
            left -= m;
            k += m;
        }
        Ok(())
    }

    async fn counts(&self) -> Res<(i64, i64)> {
        let row = self
            .stack
            .pg
            .query_one(
                "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status IN ('failed', 'cancelled')) FROM public.generation_jobs",
                &[],
            )
            .await?;
        Ok((row.get(0), row.get(1)))
    }

    /// Start `workers` processes, insert `n` jobs, wait for all to finish.
    async fn throughput(
        &self,
        workers: usize,
        n: usize,
        limit: Duration,
        rest_url: &str,
        arm: &Arm,
    ) -> Res<Throughput> {
        self.reset_jobs().await?;
        let mut procs = Vec::new();
        for w in 0..workers {
            let id = format!("bench-w{w}");
            let log = log_dir().join(format!("queue-worker-{workers}-{w}.log"));
            procs.push(spawn_binary(
                &arm.bin,
                &["worker"],
                &self.worker_env(rest_url, &id, 20, arm.stream),
                &log,
            )?);
        }
        for p in &mut procs {
            p.wait_log("worker started", Duration::from_secs(20))
                .await?;
        }
        let pids: Vec<u32> = procs.iter().map(|p| p.pid()).collect();
        let cpu0: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
        let pgrst0 = self.stack.postgrest.pid().map(cpu_seconds).unwrap_or(0.0);
        // This process: the mock provider (it streams, too), the inserts, the polling.
        let bench0 = cpu_seconds(std::process::id());
        let pg0: Vec<(u32, f64)> = self
            .backend_pids()
            .await?
            .into_iter()
            .map(|p| (p, cpu_seconds(p)))
            .collect();
        let busy = cpu_busy(Duration::from_millis(300)).await;
        let t0 = Instant::now();
        self.insert_jobs(n, 1000).await?;
        let inserted = t0.elapsed();
        let (done, failed) = loop {
            let (s, f) = self.counts().await?;
            if (s + f) as usize >= n || t0.elapsed() > limit {
                break (s, f);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let elapsed = t0.elapsed();
        let worker_cpu: f64 = pids
            .iter()
            .zip(&cpu0)
            .map(|(p, c0)| cpu_seconds(*p) - c0)
            .sum();
        let pgrst_cpu = self.stack.postgrest.pid().map(cpu_seconds).unwrap_or(0.0) - pgrst0;
        let bench_cpu = cpu_seconds(std::process::id()) - bench0;
        // Backends PostgREST opened during the run count from zero.
        let pg_cpu: f64 = self
            .backend_pids()
            .await?
            .into_iter()
            .map(|p| {
                let before = pg0
                    .iter()
                    .find(|(q, _)| *q == p)
                    .map(|(_, c)| *c)
                    .unwrap_or(0.0);
                cpu_seconds(p) - before
            })
            .sum();
        let db_span: Option<f64> = self
            .stack
            .pg
            .query_one(
                "SELECT extract(epoch FROM max(finished_at) - min(created_at))::float8 FROM public.generation_jobs WHERE status = 'succeeded'",
                &[],
            )
            .await?
            .get(0);
        for mut p in procs {
            p.stop(Duration::from_secs(5));
        }
        Ok(Throughput {
            workers,
            n,
            done,
            failed,
            elapsed,
            inserted,
            db_span: db_span.unwrap_or(f64::NAN),
            busy_before: busy,
            worker_cpu,
            pgrst_cpu,
            pg_cpu,
            bench_cpu,
        })
    }

    /// The Postgres backends serving PostgREST for this database.
    async fn backend_pids(&self) -> Res<Vec<u32>> {
        let rows = self
            .stack
            .pg
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE 'PostgREST%'",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.to_owned();
            let f: Vec<&str> = after.split_whitespace().collect();
            let ut: f64 = f.get(11)?.parse().ok()?;
            let st: f64 = f.get(12)?.parse().ok()?;
            Some((ut + st) / 100.0)
        })
        .unwrap_or(0.0)
}

struct Throughput {
    workers: usize,
    n: usize,
    done: i64,
    failed: i64,
    elapsed: Duration,
    inserted: Duration,
    db_span: f64,
    busy_before: f64,
    worker_cpu: f64,
    pgrst_cpu: f64,
    pg_cpu: f64,
    /// This bench process (mock provider, inserts, polling).
    bench_cpu: f64,
}

impl Throughput {
    /// CPU ms per finished job by process, and the share of two cores they kept busy.
    fn cpu_per_job(&self) -> String {
        let per = |s: f64| 1000.0 * s / (self.done.max(1) as f64);
        let total = self.worker_cpu + self.pgrst_cpu + self.pg_cpu + self.bench_cpu;
        format!(
            "CPU ms per job: workers {:.2}, PostgREST {:.2}, Postgres {:.2}, bench process (mock, inserts) {:.2}; total {:.2} = {:.0}% of 2 cores over the run",
            per(self.worker_cpu),
            per(self.pgrst_cpu),
            per(self.pg_cpu),
            per(self.bench_cpu),
            per(total),
            100.0 * total / (2.0 * self.elapsed.as_secs_f64())
        )
    }

    fn jobs_per_s(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64()
    }
}

// ------------------------------------------------------------------ the benchmark

async fn raw_rpc(ctx: &Ctx, n: usize, limit: Duration) -> (Stats, Stats) {
    let http = ctx.http.clone();
    let url = format!("{}/rpc/job_claim", ctx.stack.rest_url);
    let key = ctx.stack.service_key.expose().to_owned();
    let claim = run_load(16, n, limit, move |_, _| {
        let (http, url, key) = (http.clone(), url.clone(), key.clone());
        async move {
            let noop = json!({"worker": "bench-noop", "max_jobs": 0, "lease_seconds": 30});
            call_ok(http.post(&url).bearer_auth(&key).json(&noop))
                .await
                .is_ok()
        }
    })
    .await;
    let http = ctx.http.clone();
    let url = format!("{}/rpc/my_engines", ctx.stack.rest_url);
    let token = ctx.stack.token_for(ctx.users[0]);
    let mine = run_load(16, n, limit, move |_, _| {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        async move {
            let req = http
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body("{}");
            call_ok(req).await.is_ok()
        }
    })
    .await;
    (Stats::of(&claim), Stats::of(&mine))
}

async fn webhook_latency(ctx: &Ctx, samples: usize) -> Res<(Stats, Stats, f64)> {
    ctx.reset_jobs().await?;
    let port = bookengine::devstack::free_port()?;
    let mut env = ctx.worker_env(&ctx.stack.rest_url, "bench-serve", 600_000, true);
    env.extend([
        ("BOOKENGINE_ADDR".to_owned(), format!("127.0.0.1:{port}")),
        ("WEBHOOK_SECRET".to_owned(), WEBHOOK_SECRET.to_owned()),
    ]);
    let mut serve = spawn_bookengine(&["serve"], &env, &log_dir().join("queue-serve.log"))?;
    let base = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{base}/healthz"), Duration::from_secs(20)).await?;
    serve
        .wait_log("worker started", Duration::from_secs(20))
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut db_ms = Vec::new();
    let mut client_ms = Vec::new();
    let mut missed = 0usize;
    for k in 0..samples {
        let t0 = Instant::now();
        let r = ctx
            .http
            .post(format!("{}/generation_jobs", ctx.stack.rest_url))
            .bearer_auth(ctx.stack.service_key.expose())
            .header("Prefer", "return=representation")
            .json(&json!({"user_id": ctx.users[k % ctx.users.len()], "engine_id": ctx.engine, "input": {"topic": "webhook"}}))
            .send()
            .await?;
        let rows: Value = r.json().await?;
        let record = rows[0].clone();
        let id = Uuid::parse_str(record["id"].as_str().unwrap_or_default())?;
        // What a Supabase Database Webhook sends on INSERT.
        let hook = ctx
            .http
            .post(format!("{base}/webhooks/generation"))
            .bearer_auth(WEBHOOK_SECRET)
            .json(&json!({"type": "INSERT", "table": "generation_jobs", "schema": "public", "record": record, "old_record": null}))
            .send()
            .await?;
        if hook.status().as_u16() != 202 {
            return Err(format!("webhook answered {}", hook.status()).into());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let row = ctx
                .stack
                .pg
                .query_one(
                    "SELECT status, extract(epoch FROM started_at - created_at)::float8 * 1000 FROM public.generation_jobs WHERE id = $1",
                    &[&id],
                )
                .await?;
            let started: Option<f64> = row.get(1);
            if let Some(s) = started {
                db_ms.push(s);
                client_ms.push(ms(t0.elapsed()));
                let status: String = row.get(0);
                if status != "succeeded" {
                    // Let it finish so samples do not overlap.
                    while Instant::now() < deadline {
                        let st: String = ctx
                            .stack
                            .pg
                            .query_one(
                                "SELECT status FROM public.generation_jobs WHERE id = $1",
                                &[&id],
                            )
                            .await?
                            .get(0);
                        if st != "running" {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                break;
            }
            if Instant::now() > deadline {
                missed += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    serve.stop(Duration::from_secs(5));
    if missed > 0 {
        println!("webhook: {missed} job(s) not claimed within 5 s of their webhook");
    }
    Ok((
        Stats::of_ms(&db_ms),
        Stats::of_ms(&client_ms),
        missed as f64,
    ))
}

async fn run() -> Res<()> {
    let q = quick();
    let n_jobs = if q { 500 } else { 10_000 };
    let n_calib = if q { 100 } else { 1_000 };
    let limit = Duration::from_secs(if q { 30 } else { 240 });
    let (raw_n, raw_limit) = if q {
        (3_000, Duration::from_secs(3))
    } else {
        (20_000, Duration::from_secs(10))
    };
    let hook_samples = if q { 40 } else { 200 };
    let load_before = loadavg();

    let stack = bench_stack("queue", 10).await?;
    println!(
        "mode: {}; {n_jobs} one-step jobs per run; worker concurrency {WORKER_CONCURRENCY}, poll 20 ms; mock latency 0 ms; PostgREST db-pool {}",
        if q { "QUICK" } else { "full" },
        stack.postgrest.pool
    );
    let mock = MockProvider::fixed_latency(Duration::ZERO, 3).await;
    let (engine, users) = one_step_world(&stack, 50).await?;
    let ctx = Ctx {
        stack,
        mock,
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?,
        engine,
        users,
    };
    let head = Arm {
        build: "this build",
        bin: bookengine_bin(),
        stream: true,
    };

    // 1. The ceiling: raw PostgREST RPC rate at concurrency 16.
    let busy = cpu_busy(Duration::from_millis(500)).await;
    println!(
        "machine CPU busy before measuring: {busy:.0}% (loadavg {})",
        loadavg()
    );
    ctx.reset_jobs().await?;
    let _ = raw_rpc(&ctx, 500, Duration::from_secs(5)).await;
    let (claim_rate, mine_rate) = raw_rpc(&ctx, raw_n, raw_limit).await;
    println!(
        "{}",
        claim_rate.line("raw rpc/job_claim max_jobs=0 (service), c=16")
    );
    println!("{}", mine_rate.line("raw rpc/my_engines (user), c=16"));

    // 2. Calls per job, through a counting pass-through proxy (1 worker).
    let proxy = CountingProxy::start(&ctx.stack.rest_url, |method, path_and_query| {
        let path = path_and_query.split('?').next().unwrap_or_default();
        format!("{method} {path}")
    })
    .await?;
    let calib = ctx.throughput(1, n_calib, limit, &proxy.url, &head).await?;
    let per_job: Vec<(String, f64, f64)> = proxy
        .take()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.count as f64 / calib.done.max(1) as f64,
                v.total_ms / v.count.max(1) as f64,
            )
        })
        .collect();
    let calls_per_job: f64 = per_job.iter().map(|(_, c, _)| c).sum();
    println!(
        "\ncalls per job (proxy, 1 worker, {} jobs, {:.0} jobs/s through the proxy):",
        calib.done,
        calib.jobs_per_s()
    );
    let total_time: f64 = per_job.iter().map(|(_, c, m)| c * m).sum();
    for (k, c, m) in &per_job {
        println!(
            "  {k:<34} {c:>5.2} per job   mean {m:>6.2} ms at PostgREST   {:>4.0}% of a job's PostgREST time",
            100.0 * c * m / total_time.max(1e-9)
        );
    }
    println!("  total {calls_per_job:.2} PostgREST calls per job");

    // 3. Throughput with 1, 2, 4 worker processes, straight to PostgREST.
    let mut results = Vec::new();
    for workers in [1usize, 2, 4] {
        let r = ctx
            .throughput(workers, n_jobs, limit, &ctx.stack.rest_url, &head)
            .await?;
        println!(
            "\n{} worker process(es): {}/{} succeeded ({} failed) in {:.2} s -> {:.0} jobs/s (db span {:.2} s; inserts took {:.2} s; CPU s: workers {:.1}, PostgREST {:.1}, its Postgres backends {:.1}; machine busy before {:.0}%)",
            r.workers,
            r.done,
            r.n,
            r.failed,
            r.elapsed.as_secs_f64(),
            r.jobs_per_s(),
            r.db_span,
            r.inserted.as_secs_f64(),
            r.worker_cpu,
            r.pgrst_cpu,
            r.pg_cpu,
            r.busy_before
        );
        println!("  {}", r.cpu_per_job());
        results.push(r);
    }

    // What the last streaming run stored (the next run's reset deletes it).
    let delta_rows: i64 = ctx
        .stack
        .pg
        .query_one("SELECT count(*) FROM public.generation_deltas", &[])
        .await?
        .get(0);

    // 3b. Streaming on against off (and this build against a baseline build), in
    // interleaved rounds.
    // Arms come in (on, off) pairs of one build.
    let mut arms = vec![
        head.clone(),
        Arm {
            stream: false,
            ..head.clone()
        },
    ];
    if let Some(base) = std::env::var_os("BENCH_QUEUE_BASELINE_BIN") {
        let base = Arm {
            build: "baseline",
            bin: PathBuf::from(base),
            stream: true,
        };
        println!("\nbaseline build: {}", base.bin.display());
        arms.extend([
            base.clone(),
            Arm {
                stream: false,
                ..base
            },
        ]);
    }
    let rounds: usize = std::env::var("BENCH_AB_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if q { 1 } else { 3 });
    // ab[arm][workers index][round] = jobs/s
    let ab_workers = [1usize, 4];
    let mut ab = vec![vec![Vec::new(); ab_workers.len()]; arms.len()];
    for round in 0..rounds {
        // Each round starts one arm later, and every other round runs backwards, so no
        // arm always runs first or right after the same one.
        let mut order: Vec<usize> = (0..arms.len()).map(|k| (k + round) % arms.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for (wi, &workers) in ab_workers.iter().enumerate() {
            for &a in &order {
                let r = ctx
                    .throughput(workers, n_jobs, limit, &ctx.stack.rest_url, &arms[a])
                    .await?;
                println!(
                    "\nround {}/{rounds}, {} worker process(es), {}: {}/{} succeeded in {:.2} s -> {:.0} jobs/s ({})",
                    round + 1,
                    r.workers,
                    arms[a].label(),
                    r.done,
                    r.n,
                    r.elapsed.as_secs_f64(),
                    r.jobs_per_s(),
                    r.cpu_per_job()
                );
                ab[a][wi].push(r.jobs_per_s());
            }
        }
    }

    // 4. Webhook -> claim latency, polling off.
    let (hook_db, hook_client, _) = webhook_latency(&ctx, hook_samples).await?;

    println!("\n================ queue: summary ================");
    let ceiling = claim_rate.rps / calls_per_job.max(1.0);
    println!(
        "raw PostgREST RPC rate (no-op job_claim, c=16): {:.0} req/s; my_engines: {:.0} req/s",
        claim_rate.rps, mine_rate.rps
    );
    println!("calls per job: {calls_per_job:.2} -> PostgREST-bound ceiling {ceiling:.0} jobs/s");
    for r in &results {
        let jps = r.jobs_per_s();
        println!(
            "  {} worker(s): {jps:>6.0} jobs/s = {:.3} of the raw RPC rate ({:.0}% of the ceiling {ceiling:.0}) -> {}",
            r.workers,
            jps / claim_rate.rps,
            100.0 * jps / ceiling,
            verdict_min(jps, 500.0, " jobs/s")
        );
    }
    // Ratios are taken within a round (the arms ran minutes apart, not a run apart),
    // then the median over the rounds.
    let ratio = |a: usize, b: usize, wi: usize| -> (f64, Vec<f64>) {
        let per_round: Vec<f64> = ab[a][wi]
            .iter()
            .zip(&ab[b][wi])
            .map(|(x, y)| x / y.max(1e-9))
            .collect();
        (median(&per_round), per_round)
    };
    let list = |v: &[f64], digits: usize| {
        v.iter()
            .map(|x| format!("{x:.digits$}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (wi, workers) in ab_workers.iter().enumerate() {
        for (a, arm) in arms.iter().enumerate() {
            println!(
                "  {workers} worker(s), {}: median {:.0} jobs/s (rounds: {})",
                arm.label(),
                median(&ab[a][wi]),
                list(&ab[a][wi], 0)
            );
        }
        for on in (0..arms.len()).step_by(2) {
            let (m, per_round) = ratio(on, on + 1, wi);
            println!(
                "  {workers} worker(s), {}: streaming on/off median {m:.3} (rounds: {}) -> {}",
                arms[on].build,
                list(&per_round, 3),
                verdict_min(m, 0.90, "x of off")
            );
        }
        if arms.len() == 4 {
            for (a, b) in [(0, 2), (1, 3)] {
                let (m, per_round) = ratio(a, b, wi);
                println!(
                    "  {workers} worker(s), {} / {}: median {m:.3} (rounds: {})",
                    arms[a].label(),
                    arms[b].label(),
                    list(&per_round, 3)
                );
            }
        }
    }
    println!("  delta rows left by the last streaming run: {delta_rows}");
    println!(
        "webhook -> claim (created_at -> started_at, polling every 10 min): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={}); client insert -> seen claimed p50 {:.2} ms",
        hook_db.p50, hook_db.p99, hook_db.max, hook_db.n, hook_client.p50
    );
    println!(
        "loadavg before {load_before}, after {} (other processes may share the 2 cores)",
        loadavg()
    );
    Ok(())
}
