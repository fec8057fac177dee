//! Shared pieces of the benchmarks: load generation with latency percentiles, the
//! release binary as a child process, and what the machine was doing. The stack,
//! seeding, flows and the mock provider (`MockProvider::fixed_latency`) are the test
//! kit's (tests/kit), shared with the integration tests.
//!
//! Benchmarks measure and print; nothing here asserts a timing.
#![allow(dead_code)]

#[path = "../../tests/kit/mod.rs"]
pub mod kit;

use kit::flows::one_step_flow;
use kit::seed::engine_row;
use kit::service::serve_config;
use kit::stack::{repo_root, Stack};

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub use kit::stack::BoxError;
pub type Res<T> = std::result::Result<T, BoxError>;

/// A benchmark's `main`: `run` on a runtime of two worker threads (the machine's two
/// cores); a failure is printed as "<name> benchmark failed: …" and exits 1.
pub fn bench_main<F>(name: &str, run: impl FnOnce() -> F)
where
    F: std::future::Future<Output = Res<()>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(run()) {
        eprintln!("{name} benchmark failed: {e}");
        std::process::exit(1);
    }
}

/// `BENCH_QUICK=1` or `-- --quick`: the short run CI can afford.
pub fn quick() -> bool {
    std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        || std::env::args().any(|a| a == "--quick")
}

/// A benchmark's stack (see `Stack::bench`), once what the machine is has been printed.
pub async fn bench_stack(name: &str, pool: u16) -> Res<Stack> {
    let stack = Stack::bench(name, pool, log_dir()).await?;
    println!("{}", machine_report(&stack).await);
    Ok(stack)
}

/// The queue and memory benchmarks' data: one one-step engine on provider `openai`
/// ("Bench one-step") and `users` enterprise users.
pub async fn one_step_world(stack: &Stack, users: usize) -> Res<(Uuid, Vec<Uuid>)> {
    let engine = engine_row(&stack.pg, &one_step_flow("openai", "Bench one-step")).await?;
    let mut ids = Vec::with_capacity(users);
    for _ in 0..users {
        ids.push(stack.user(Some("enterprise"), false).await.id);
    }
    Ok((engine, ids))
}

/// Insert job rows as the service role through PostgREST, none sent back.
pub async fn insert_job_rows(
    http: &reqwest::Client,
    stack: &Stack,
    rows: &[serde_json::Value],
) -> Res<()> {
    let r = http
        .post(format!("{}/generation_jobs", stack.rest_url))
        .bearer_auth(stack.service_key.expose())
        .header("Prefer", "return=minimal")
        .json(&rows)
        .send()
        .await?;
    if !r.status().is_success() {
        return Err(format!("inserting jobs: {}", r.text().await?).into());
    }
    Ok(())
}

/// Send `req` and read its whole answer: `Ok` for a 2xx, else what went wrong (the
/// status and body, or the transport error).
pub async fn call_ok(req: reqwest::RequestBuilder) -> Result<(), String> {
    let r = req.send().await.map_err(|e| e.to_string())?;
    let status = r.status();
    let body = r.bytes().await.unwrap_or_default();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{status} {}", String::from_utf8_lossy(&body)))
    }
}

/// Where benchmark logs (PostgREST, child processes) go.
pub fn log_dir() -> PathBuf {
    let d = repo_root().join("target").join("bench-logs");
    let _ = std::fs::create_dir_all(&d);
    d
}

impl Stack {
    /// The environment a `bookengine serve|worker` child needs to reach this stack.
    pub fn child_env(&self) -> Vec<(String, String)> {
        vec![
            ("POSTGREST_URL".into(), self.rest_url.clone()),
            (
                "SUPABASE_SERVICE_ROLE_KEY".into(),
                self.service_key.expose().into(),
            ),
            ("SUPABASE_ANON_KEY".into(), self.anon_key.expose().into()),
            (
                "SUPABASE_JWT_SECRET".into(),
                self.jwt_secret.expose().into(),
            ),
            // The documented default (`info`); the binary otherwise logs warnings only,
            // since the CLI's logger is installed before the service's.
            ("RUST_LOG".into(), "info,tower_http=warn".into()),
        ]
    }
}

// ---------------------------------------------------------------------------------
// Load generation and statistics
// ---------------------------------------------------------------------------------

/// Latencies of one load run.
pub struct Sample {
    pub lat: Vec<Duration>,
    pub elapsed: Duration,
    pub errors: usize,
}

/// Run `f(caller, i)` for i = 0.. with `concurrency` callers at once, until `max`
/// calls were made or `limit` has passed. `f` returns whether the call succeeded.
pub async fn run_load<F, Fut>(concurrency: usize, max: usize, limit: Duration, f: F) -> Sample
where
    F: Fn(usize, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    run_load_min(concurrency, 0, max, limit, f).await
}

/// [`run_load`], making at least `min` calls even when `limit` has passed.
pub async fn run_load_min<F, Fut>(
    concurrency: usize,
    min: usize,
    max: usize,
    limit: Duration,
    f: F,
) -> Sample
where
    F: Fn(usize, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..concurrency {
        let f = f.clone();
        let next = next.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max || (i >= min && start.elapsed() >= limit) {
                    break;
                }
                let t = Instant::now();
                let ok = f(caller, i).await;
                lat.push(t.elapsed());
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap_or_default());
    }
    Sample {
        lat,
        elapsed: start.elapsed(),
        errors: errors.load(Ordering::Relaxed),
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub n: usize,
    pub errors: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
    pub rps: f64,
}

/// Nearest-rank percentile of sorted milliseconds.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Stats {
    pub fn of(sample: &Sample) -> Stats {
        let mut v: Vec<f64> = sample.lat.iter().map(|d| ms(*d)).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        Stats {
            n,
            errors: sample.errors,
            p50: pct(&v, 50.0),
            p90: pct(&v, 90.0),
            p99: pct(&v, 99.0),
            max: v.last().copied().unwrap_or(f64::NAN),
            mean: v.iter().sum::<f64>() / n.max(1) as f64,
            rps: n as f64 / sample.elapsed.as_secs_f64().max(1e-9),
        }
    }

    pub fn of_ms(values: &[f64]) -> Stats {
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        Stats {
            n,
            errors: 0,
            p50: pct(&v, 50.0),
            p90: pct(&v, 90.0),
            p99: pct(&v, 99.0),
            max: v.last().copied().unwrap_or(f64::NAN),
            mean: v.iter().sum::<f64>() / n.max(1) as f64,
            rps: f64::NAN,
        }
    }

    pub fn line(&self, label: &str) -> String {
        format!(
            "{label:<44} n={:<6} err={:<3} p50={:>7.2} ms  p90={:>7.2} ms  p99={:>7.2} ms  max={:>7.2} ms  {:>8.0} req/s",
            self.n, self.errors, self.p50, self.p90, self.p99, self.max, self.rps
        )
    }
}

/// "met" / "missed by X" for a figure against a target (lower is better).
pub fn verdict_max(value: f64, target: f64, unit: &str) -> String {
    if value <= target {
        format!(
            "MET (target <= {target}{unit}, margin {:.2}{unit})",
            target - value
        )
    } else {
        format!(
            "MISSED (target <= {target}{unit}, over by {:.2}{unit} = {:.0}%)",
            value - target,
            (value / target - 1.0) * 100.0
        )
    }
}

/// Same, higher is better.
pub fn verdict_min(value: f64, target: f64, unit: &str) -> String {
    if value >= target {
        format!(
            "MET (target >= {target}{unit}, margin {:.1}{unit})",
            value - target
        )
    } else {
        format!(
            "MISSED (target >= {target}{unit}, short by {:.1}{unit} = {:.0}%)",
            target - value,
            (1.0 - value / target) * 100.0
        )
    }
}

// ---------------------------------------------------------------------------------
// The release binary as a child process
// ---------------------------------------------------------------------------------

/// The `bookengine` binary cargo built for this bench (target/release/bookengine).
pub fn bookengine_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bookengine"))
}

/// A child process killed (and reaped) when dropped.
pub struct ChildGuard {
    pub child: Child,
    pub log: PathBuf,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait up to `grace` before SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait until the child's log contains `needle`.
    pub async fn wait_log(&mut self, needle: &str, timeout: Duration) -> Res<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if std::fs::read_to_string(&self.log).is_ok_and(|s| s.contains(needle)) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited ({status}); see {}",
                    bookengine_bin().display(),
                    self.log.display()
                )
                .into());
            }
            if Instant::now() >= deadline {
                return Err(format!("no `{needle}` in {} in time", self.log.display()).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `bookengine <args>` with exactly `env` (plus PATH and HOME), logging to `log`.
pub fn spawn_bookengine(args: &[&str], env: &[(String, String)], log: &Path) -> Res<ChildGuard> {
    spawn_binary(&bookengine_bin(), args, env, log)
}

/// As [`spawn_bookengine`], with another build of it (an A/B against an older commit).
pub fn spawn_binary(
    bin: &Path,
    args: &[&str],
    env: &[(String, String)],
    log: &Path,
) -> Res<ChildGuard> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.env_clear();
    for k in ["PATH", "HOME"] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    Ok(ChildGuard {
        child,
        log: log.to_owned(),
    })
}

/// (VmRSS, VmHWM) of a process in MiB, from /proc/<pid>/status.
pub fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Threads of a process, from /proc/<pid>/status.
pub fn threads(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("Threads:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------
// The machine
// ---------------------------------------------------------------------------------

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Busy CPU share of the whole machine over `window` (from /proc/stat): how much
/// else was running just before a measurement.
pub async fn cpu_busy(window: Duration) -> f64 {
    fn read() -> Option<(u64, u64)> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = s
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
        Some((v.iter().sum(), idle))
    }
    let a = read();
    tokio::time::sleep(window).await;
    let b = read();
    match (a, b) {
        (Some((t0, i0)), Some((t1, i1))) if t1 > t0 => {
            100.0 * (1.0 - (i1 - i0) as f64 / (t1 - t0) as f64)
        }
        _ => f64::NAN,
    }
}

pub async fn machine_report(stack: &Stack) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let pg = stack
        .pg
        .query_one("SHOW server_version", &[])
        .await
        .map(|r| r.get::<_, String>(0))
        .unwrap_or_else(|_| "?".into());
    let pgrst = Command::new(&stack.postgrest.bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "?".into());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "machine: {cores} cores ({cpu}), {mem} RAM, PostgreSQL {pg}, {pgrst}, {date}, loadavg {}",
        loadavg()
    )
}

/// Wait until `url` answers 2xx.
pub async fn wait_http(url: &str, timeout: Duration) -> Res<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = http.get(url).timeout(Duration::from_secs(1)).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("{url} did not answer in time").into());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The HTTP API (no worker) in this process, on a runtime and thread of its own, as a
/// separate process would be: its CPU is not the load generator's.
pub struct ApiService {
    pub url: String,
    stop: tokio_util::sync::CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiService {
    pub async fn start(stack: &Stack) -> Res<ApiService> {
        Self::start_with_streams(stack, Default::default()).await
    }

    /// As [`ApiService::start`], with these event-stream settings. The service's
    /// threads are named `svc`, so a bench can read their CPU apart from its own.
    pub async fn start_with_streams(
        stack: &Stack,
        streams: bookengine::generations::watch::StreamConfig,
    ) -> Res<ApiService> {
        let config = bookengine::http::ServeConfig {
            ops: bookengine::http::OpsConfig {
                streams,
                ..Default::default()
            },
            ..serve_config(stack)
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let until = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("svc")
                .enable_all()
                .build()
                .expect("service runtime");
            rt.block_on(async move {
                match bookengine::http::Application::build(&config).await {
                    Ok(app) => {
                        let _ = port_tx.send(Ok(app.port()));
                        let _ = app.run_until(async move { until.cancelled().await }).await;
                    }
                    Err(e) => {
                        let _ = port_tx.send(Err(e.to_string()));
                    }
                }
            });
        });
        let port = port_rx.recv()??;
        let url = format!("http://127.0.0.1:{port}");
        wait_http(&format!("{url}/healthz"), Duration::from_secs(10)).await?;
        Ok(ApiService {
            url,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ApiService {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
