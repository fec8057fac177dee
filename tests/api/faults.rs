//! Faults: providers failing at random or always, and PostgREST and Postgres
//! going away mid-run. No job may be lost, duplicated or left `running`.

use crate::kit::app::{book_setup, spawn_app_with, TestApp, WorkerSetup};
use crate::kit::flows::example_flow;
use crate::kit::http::JsonCalls;
use crate::kit::jobs::{assert_all_succeed, assert_failed_with, finished, start_book, wait_until};
use crate::kit::mock_llm::Mocks;
use crate::kit::seed::TestUser;
use crate::kit::stack::Stack;
use bookengine::worker::WorkerConfig;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The example flow with more retries per model, as an operator facing a flaky provider would set.
fn sturdy_flow(retries: u32) -> Value {
    let mut flow = example_flow();
    for s in flow["steps"].as_array_mut().unwrap() {
        s["configuration"]["retries"] = json!(retries);
    }
    flow
}

async fn request_many(app: &TestApp, users: &[TestUser], per_user: usize) -> Vec<(String, String)> {
    let mut ids = Vec::new();
    for u in users {
        for i in 0..per_user {
            let id = start_book(app, u, &format!("t{i}")).await;
            ids.push((u.token.clone(), id));
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_provider_faults_still_finish_every_job() {
    let (app, mocks) = app_with_failing_mocks(0.3, 7).await;
    let admin = app.stack.admin().await;
    let (s, e) = app.post("/v1/engines", &admin.token, sturdy_flow(6)).await;
    assert_eq!(s, 201, "{e}");
    app.post(
        "/v1/assignments",
        &admin.token,
        json!({"engine_id": e["id"], "tier": "pro"}),
    )
    .await;
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(app.stack.user(Some("pro"), false).await);
    }
    let jobs = request_many(&app, &users, 3).await;
    assert_all_succeed(&app, &jobs, Duration::from_secs(60)).await;
    let calls = mocks.call_count();
    // 12 jobs x 5 calls, plus the retries the faults caused.
    assert!(calls > 60, "faults were injected: {calls} calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_call_fails_every_job_fails_and_none_is_left_running() {
    let (app, _mocks) = app_with_failing_mocks(1.0, 3).await;
    let (_admin, pro, _) = book_setup(&app).await;
    let other = app.stack.user(Some("pro"), false).await;
    let started = Instant::now();
    let jobs = request_many(&app, &[pro, other], 3).await;
    for (token, id) in &jobs {
        let job = wait_until(&app, token, id, Duration::from_secs(30), finished).await;
        assert_failed_with(&job, "every model failed");
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    let running: i64 = app
        .stack
        .count(
            "SELECT count(*) FROM generation_jobs WHERE status IN ('running', 'queued')",
            &[],
        )
        .await;
    assert_eq!(running, 0);
}

async fn all_succeed_once(app: &TestApp, jobs: &[(String, String)], limit: Duration) {
    for (token, id) in jobs {
        let job = wait_until(app, token, id, limit, finished).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        // No duplicated work: one row per step and per item, each succeeded once.
        let steps = job["steps"].as_array().unwrap();
        let mut keys: Vec<String> = steps
            .iter()
            .map(|s| format!("{}#{}", s["step_id"], s["item_index"]))
            .collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "duplicate step rows: {job}");
        assert_eq!(
            n,
            1 + 3 + 1 + 1,
            "outline, 3 chapters, the fan-out summary, edit: {job}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgrest_outage_mid_run_loses_nothing_and_readyz_reports_it() {
    let (_mocks, worker) = cut_short_run().await;
    let mut app = spawn_app_with(Some(worker)).await;
    let (_admin, pro, _) = book_setup(&app).await;
    let other = app.stack.user(Some("pro"), false).await;
    let jobs = request_many(&app, &[pro, other], 3).await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    app.stack.kill_postgrest();
    let (s, b) = app.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["status"], "unavailable");
    tokio::time::sleep(Duration::from_secs(2)).await;
    app.stack.restart_postgrest().await;
    let (s, _) = app.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(s, 200);

    all_succeed_once(&app, &jobs, Duration::from_secs(60)).await;
    let total: i64 = app
        .stack
        .count("SELECT count(*) FROM generation_jobs", &[])
        .await;
    assert_eq!(total, jobs.len() as i64, "a job was lost or duplicated");
}

/// A private Postgres cluster this test may restart without touching anyone else's.
struct PrivateCluster {
    dir: std::path::PathBuf,
    port: u16,
}

impl PrivateCluster {
    fn pg_bin() -> std::path::PathBuf {
        let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .collect();
        versions.sort();
        versions
            .pop()
            .expect("a PostgreSQL server install")
            .join("bin")
    }

    fn run(args: &[&str]) {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let mut cmd = if root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]);
            c
        } else {
            std::process::Command::new(args[0])
        };
        let args = if root { args } else { &args[1..] };
        let out = cmd.args(args).output().expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start() -> PrivateCluster {
        let dir =
            std::env::temp_dir().join(format!("bookengine-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::process::Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status();
        let port = bookengine::devstack::free_port().unwrap();
        let bin = Self::pg_bin();
        let data = dir.join("data");
        Self::run(&[
            bin.join("initdb").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "-N",
        ]);
        let c = PrivateCluster { dir, port };
        c.ctl("start");
        c
    }

    fn ctl(&self, action: &str) {
        let bin = Self::pg_bin();
        let data = self.dir.join("data");
        let log = self.dir.join("log");
        let opts = format!(
            "-p {} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port
        );
        Self::run(&[
            bin.join("pg_ctl").to_str().unwrap(),
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-o",
            &opts,
            "-w",
            "-m",
            "fast",
            action,
        ]);
    }

    fn config(&self) -> tokio_postgres::Config {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
            .parse()
            .unwrap()
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let bin = Self::pg_bin();
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin.join("pg_ctl"))
            .args([
                "-D",
                self.dir.join("data").to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_run_loses_nothing() {
    let cluster = PrivateCluster::start();
    let stack = Stack::start_on(cluster.config(), false).await;
    let (_mocks, worker) = cut_short_run().await;
    let app = crate::kit::app::spawn_app_on(stack, Some(worker)).await;
    let (_admin, pro, _) = book_setup(&app).await;
    let jobs = request_many(&app, &[pro], 3).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    cluster.ctl("restart");
    // The harness's own connection died with the server: use the API only from here.
    all_succeed_once(&app, &jobs, Duration::from_secs(60)).await;
    assert_eq!(
        app.stack.count_jobs_fresh().await,
        jobs.len() as i64,
        "a job was lost or duplicated"
    );
}

/// The service, with a worker running 6 jobs at once and retrying after 5 ms, in front
/// of mocks failing `rate` of the calls (seeded `seed`, `seed + 1`, `seed + 2`).
async fn app_with_failing_mocks(rate: f64, seed: u64) -> (TestApp, Mocks) {
    let mocks = Mocks::start().await;
    for (i, m) in [&mocks.openai, &mocks.anthropic, &mocks.gemini]
        .into_iter()
        .enumerate()
    {
        m.fail_rate(rate, seed + i as u64);
    }
    let worker = WorkerConfig {
        poll_interval_ms: 100,
        backoff_ms: 5,
        concurrency: 6,
        ..Default::default()
    };
    let app = spawn_app_with(Some((worker, mocks.providers()))).await;
    (app, mocks)
}

/// Mocks whose chapters take 400 ms and a worker whose leases last 3 s: a run long
/// enough to be cut short, with leases that expire during the outage.
async fn cut_short_run() -> (Mocks, WorkerSetup) {
    let mocks = Mocks::start().await;
    mocks.anthropic.latency(Duration::from_millis(400));
    let worker = WorkerConfig {
        poll_interval_ms: 100,
        backoff_ms: 20,
        lease_seconds: 3,
        concurrency: 6,
        ..Default::default()
    };
    let providers = mocks.providers();
    (mocks, (worker, providers))
}
