//! Engine resolution at scale: 100k users, 1,000 engines, 200k assignments.
//!
//! (a) GET /v1/me/engine through the service, (b) POST rpc/resolve_engine straight
//! to PostgREST, (c) the floor: the same function as plain SQL over tokio-postgres
//! (role + claims set in a one-round-trip transaction), all at concurrency 16 with
//! random users' tokens. Then EXPLAIN (ANALYZE, BUFFERS) as an authenticated user,
//! and a growth curve of (b) and (c) over the number of assignments.
//!
//! `cargo bench --bench resolution` (a few minutes) · `BENCH_QUICK=1 cargo bench --bench resolution`

#[path = "../common/mod.rs"]
mod common;
mod plans;
mod seed;

use plans::*;
use seed::*;

use common::kit::{flows::book_flow, seed::mark_checked, stack::Stack};
use common::*;
use futures::StreamExt;
use rand::Rng;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

const USERS: i64 = 100_000;
const ENGINES: i64 = 1_000;
const MAIN_ASSIGNMENTS: i64 = 200_000;
const CONCURRENCY: usize = 16;
/// Engines with tier assignments: 1..=60 get one tier, 1..=30 a second one.
const TIER_ASSIGNMENTS: i64 = 90;

/// A JWT's payload (its claims) as JSON text, SQL-quoted for a literal.
fn claims_of(token: &str) -> String {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).replace('\'', "''")
}

/// The first few failed calls' answers, to say what the errors were.
static ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn note_error(e: String) {
    if let Ok(mut v) = ERRORS.lock() {
        if v.len() < 5 {
            v.push(e.chars().take(300).collect());
        }
    }
}

fn user_uuid(i: i64) -> Uuid {
    Uuid::parse_str(&format!("00000000-0000-4000-8000-{i:012x}")).expect("uuid")
}

struct Plan {
    quick: bool,
    /// Assignments at the main comparison point (a, b, c at concurrency 16, EXPLAIN).
    main_size: i64,
    /// Requests (at most) and time limit per target at concurrency 16.
    main_n: usize,
    main_limit: Duration,
    /// Requests (at most, at least `serial_min`) and time limit per target at concurrency 1.
    serial_n: usize,
    serial_min: usize,
    serial_limit: Duration,
    /// Assignment counts of the growth curve.
    growth: Vec<i64>,
}

/// A small table where the database's share is small: the service's own overhead.
const OVERHEAD_SIZE: i64 = 1_000;

fn plan() -> Plan {
    if quick() {
        Plan {
            quick: true,
            main_size: 10_000,
            main_n: 1_000,
            main_limit: Duration::from_secs(2),
            serial_n: 300,
            serial_min: 3,
            serial_limit: Duration::from_secs(1),
            growth: vec![10_000, 100_000],
        }
    } else {
        Plan {
            quick: false,
            main_size: MAIN_ASSIGNMENTS,
            main_n: 20_000,
            main_limit: Duration::from_secs(15),
            serial_n: 2_000,
            serial_min: 5,
            serial_limit: Duration::from_secs(8),
            growth: vec![10_000, 100_000, 1_000_000],
        }
    }
}

fn main() {
    bench_main("resolution", run);
}

async fn run() -> Res<()> {
    let p = plan();
    let load_before = loadavg();
    let mut stack = bench_stack("resolution", 10).await?;
    println!(
        "mode: {}; concurrency {CONCURRENCY}; PostgREST db-pool {}",
        if p.quick { "QUICK" } else { "full" },
        stack.postgrest.pool
    );
    let flow = book_flow("openai", "parallel", "Bench engine");
    seed_base(&stack.pg, &flow).await?;
    seed_candidates(&stack.pg).await?;
    stack.restart_postgrest().await;

    // The service, in this process on its own runtime (as a separate process would be).
    let api = ApiService::start(&stack).await?;
    let service = api.url.clone();

    // Random users' tokens, minted with the stack's secret.
    let mut rng = rand::thread_rng();
    let tokens: Vec<(Uuid, String, String)> = (0..4_000)
        .map(|_| {
            let u = user_uuid(rng.gen_range(1..=USERS));
            let token = stack.token_for(u);
            let claims = claims_of(&token);
            (u, token, claims)
        })
        .collect();
    let mut floor = Vec::new();
    for _ in 0..CONCURRENCY {
        floor.push(bookengine::migrate::connect(&stack.db).await?);
    }
    let t = Targets {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?,
        service,
        rest: stack.rest_url.clone(),
        tokens: Arc::new(tokens),
        floor: Arc::new(floor),
    };

    let mut sizes: Vec<i64> = p.growth.clone();
    sizes.extend([OVERHEAD_SIZE, p.main_size]);
    sizes.sort();
    sizes.dedup();
    // (size, b at c=1, c at c=1)
    let mut growth_rows: Vec<(i64, Stats, Stats)> = Vec::new();
    let mut overhead = None;
    let mut main_figures = None;
    // Same, with a rollout running: (size, b at c=1, c at c=1, share on a candidate).
    let mut rollout_rows: Vec<(i64, Stats, Stats, f64)> = Vec::new();
    let mut rollout_main = None;
    let mut explain_report = String::new();
    let mut generation_report = String::new();
    for &size in &sizes {
        seed_assignments(&stack.pg, size).await?;
        let busy = cpu_busy(Duration::from_millis(500)).await;
        println!(
            "machine CPU busy just before: {busy:.0}% (loadavg {})",
            loadavg()
        );
        // Warm caches and connection pools (at least one call each, about a second).
        let warm = Duration::from_secs(1);
        t.service(1, 1, 200, warm).await;
        t.postgrest(1, 1, 200, warm).await;
        t.floor(1, 1, 200, warm).await;
        let concurrent = size == OVERHEAD_SIZE || size == p.main_size;
        let mut c16 = None;
        if concurrent {
            let a = Stats::of(&t.service(CONCURRENCY, 0, p.main_n, p.main_limit).await);
            println!("{}", a.line("(a) GET /v1/me/engine (service), c=16"));
            let b = Stats::of(&t.postgrest(CONCURRENCY, 0, p.main_n, p.main_limit).await);
            println!(
                "{}",
                b.line("(b) POST rpc/resolve_engine (PostgREST), c=16")
            );
            let c = Stats::of(&t.floor(CONCURRENCY, 0, p.main_n, p.main_limit).await);
            println!("{}", c.line("(c) floor: SQL resolve_engine(), c=16"));
            c16 = Some((a, b, c));
        }
        let a1 = if concurrent {
            let a1 = Stats::of(&t.service(1, p.serial_min, p.serial_n, p.serial_limit).await);
            println!("{}", a1.line("(a) service, c=1"));
            Some(a1)
        } else {
            None
        };
        let b1 = Stats::of(
            &t.postgrest(1, p.serial_min, p.serial_n, p.serial_limit)
                .await,
        );
        println!("{}", b1.line("(b) PostgREST, c=1"));
        let c1 = Stats::of(&t.floor(1, p.serial_min, p.serial_n, p.serial_limit).await);
        println!("{}", c1.line("(c) floor, c=1"));
        growth_rows.push((size, b1, c1));

        // The same targets with a rollout running on every engine, measured right after.
        set_rollout(&stack.pg, true).await?;
        let share = candidate_share(&stack.pg).await?;
        println!(
            "rollout of version 2 to {ROLLOUT_PERCENT} % on all {ENGINES} engines: {:.1} % of 1,000 sampled users resolve to a candidate",
            share * 100.0
        );
        t.service(1, 1, 200, warm).await;
        t.postgrest(1, 1, 200, warm).await;
        t.floor(1, 1, 200, warm).await;
        let mut r16 = None;
        if concurrent {
            let a = Stats::of(&t.service(CONCURRENCY, 0, p.main_n, p.main_limit).await);
            println!("{}", a.line("rollout (a) service, c=16"));
            let b = Stats::of(&t.postgrest(CONCURRENCY, 0, p.main_n, p.main_limit).await);
            println!("{}", b.line("rollout (b) PostgREST, c=16"));
            let c = Stats::of(&t.floor(CONCURRENCY, 0, p.main_n, p.main_limit).await);
            println!("{}", c.line("rollout (c) floor, c=16"));
            r16 = Some((a, b, c));
        }
        let ra1 = if concurrent {
            let a1 = Stats::of(&t.service(1, p.serial_min, p.serial_n, p.serial_limit).await);
            println!("{}", a1.line("rollout (a) service, c=1"));
            Some(a1)
        } else {
            None
        };
        let rb1 = Stats::of(
            &t.postgrest(1, p.serial_min, p.serial_n, p.serial_limit)
                .await,
        );
        println!("{}", rb1.line("rollout (b) PostgREST, c=1"));
        let rc1 = Stats::of(&t.floor(1, p.serial_min, p.serial_n, p.serial_limit).await);
        println!("{}", rc1.line("rollout (c) floor, c=1"));
        if size == p.main_size {
            interleaved(&t, &p, "with the rollout").await;
        }
        set_rollout(&stack.pg, false).await?;
        if size == p.main_size {
            interleaved(&t, &p, "without a rollout").await;
        }
        rollout_rows.push((size, rb1, rc1, share));
        if let (Some(r), Some(ra1)) = (r16, ra1) {
            if size == p.main_size {
                rollout_main = Some((r.0, r.1, r.2, ra1, rb1, rc1));
            }
        }

        if let (Some((a, b, c)), Some(a1)) = (c16, a1) {
            if size == OVERHEAD_SIZE {
                overhead = Some((a, b, c, a1, b1, c1));
            }
            if size == p.main_size {
                main_figures = Some((a, b, c, a1, b1, c1));
                explain_report = explain(&stack).await?;
                generation_report = generation_timing(&stack).await?;
            }
        }
    }

    println!("\n================ resolution: summary ================");
    let show = |title: String, f: (Stats, Stats, Stats, Stats, Stats, Stats)| {
        let (a, b, c, a1, b1, c1) = f;
        println!("{title}");
        for (label, s) in [
            ("(a) service GET /v1/me/engine", a),
            ("(b) PostgREST rpc/resolve_engine", b),
            ("(c) floor SQL", c),
        ] {
            println!(
                "  c=16 {label:<34} p50 {:>8.2} ms  p99 {:>8.2} ms  {:>7.1} req/s   p50 {:.2}x floor, req/s {:.2}x floor",
                s.p50,
                s.p99,
                s.rps,
                s.p50 / c.p50,
                s.rps / c.rps
            );
        }
        let over = a.p50 - b.p50;
        println!(
            "  service p50 overhead over PostgREST-direct, c=16: {over:.2} ms -> {}",
            verdict_max(over, 1.0, " ms")
        );
        let over1 = a1.p50 - b1.p50;
        println!(
            "  c=1: service p50 {:.2} ms, PostgREST p50 {:.2} ms, floor p50 {:.2} ms -> overhead {over1:.2} ms ({})",
            a1.p50,
            b1.p50,
            c1.p50,
            verdict_max(over1, 1.0, " ms")
        );
    };
    if let Some(f) = main_figures {
        show(
            format!(
                "at {} assignments (the benchmark's main point):",
                p.main_size
            ),
            f,
        );
    }
    if let Some(f) = overhead {
        show(
            format!("at {OVERHEAD_SIZE} assignments (database share small: the service's own overhead):"),
            f,
        );
    }
    if let Some(f) = rollout_main {
        show(
            format!(
                "at {} assignments WITH A ROLLOUT ({ROLLOUT_PERCENT} % on every engine), same run:",
                p.main_size
            ),
            f,
        );
    }
    println!("growth with and without a rollout, concurrency 1 (p50):");
    println!(
        "  {:>11}  {:>14}  {:>14}  {:>12}  {:>12}  {:>9}",
        "assignments", "(b) no rollout", "(b) rollout", "(c) none", "(c) rollout", "candidate"
    );
    for ((n, b, c), (_, rb, rc, share)) in growth_rows.iter().zip(&rollout_rows) {
        println!(
            "  {n:>11}  {:>11.2} ms  {:>11.2} ms  {:>9.2} ms  {:>9.2} ms  {:>8.1}%",
            b.p50,
            rb.p50,
            c.p50,
            rc.p50,
            share * 100.0
        );
    }
    println!(
        "growth, concurrency 1 (p50; flat when resolution uses the indexes, linear if it scans):"
    );
    println!(
        "  {:>11}  {:>12}  {:>12}  {:>6}",
        "assignments", "(b) PostgREST", "(c) floor", "b/c"
    );
    for (n, b, c) in &growth_rows {
        println!(
            "  {n:>11}  {:>10.2} ms  {:>9.2} ms  {:>5.2}x",
            b.p50,
            c.p50,
            b.p50 / c.p50
        );
    }
    if let Ok(errors) = ERRORS.lock() {
        for e in errors.iter() {
            println!("a failed call answered: {e}");
        }
    }
    println!("{explain_report}");
    println!("{generation_report}");
    println!(
        "loadavg before {load_before}, after {} (other processes may share the 2 cores)",
        loadavg()
    );

    drop(api);
    drop(t);
    drop(stack);
    Ok(())
}

struct Targets {
    http: reqwest::Client,
    service: String,
    rest: String,
    /// (user, token, the token's claims as JSON)
    tokens: Arc<Vec<(Uuid, String, String)>>,
    floor: Arc<Vec<tokio_postgres::Client>>,
}

impl Targets {
    async fn service(&self, conc: usize, min: usize, n: usize, limit: Duration) -> Sample {
        let (http, url, tokens) = (
            self.http.clone(),
            format!("{}/v1/me/engine", self.service),
            self.tokens.clone(),
        );
        run_load_min(conc, min, n, limit, move |_, i| {
            let (http, url, tokens) = (http.clone(), url.clone(), tokens.clone());
            async move {
                let token = &tokens[i % tokens.len()].1;
                let req = http.get(&url).bearer_auth(token);
                call_ok(req).await.map_err(note_error).is_ok()
            }
        })
        .await
    }

    async fn postgrest(&self, conc: usize, min: usize, n: usize, limit: Duration) -> Sample {
        let (http, url, tokens) = (
            self.http.clone(),
            format!("{}/rpc/resolve_engine", self.rest),
            self.tokens.clone(),
        );
        run_load_min(conc, min, n, limit, move |_, i| {
            let (http, url, tokens) = (http.clone(), url.clone(), tokens.clone());
            async move {
                let token = &tokens[i % tokens.len()].1;
                let req = http
                    .post(&url)
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body("{}");
                call_ok(req).await.map_err(note_error).is_ok()
            }
        })
        .await
    }

    /// One round trip per call: role, claims and the query in one simple-protocol
    /// transaction, each concurrent caller on its own connection.
    async fn floor(&self, conc: usize, min: usize, n: usize, limit: Duration) -> Sample {
        let (floor, tokens) = (self.floor.clone(), self.tokens.clone());
        run_load_min(conc, min, n, limit, move |caller, i| {
            let (floor, tokens) = (floor.clone(), tokens.clone());
            async move {
                // The very claims PostgREST sets for this token (auth.uid() parses them).
                let claims = &tokens[i % tokens.len()].2;
                let sql = format!(
                    "BEGIN; SET LOCAL ROLE authenticated; \
                     SELECT set_config('request.jwt.claims', '{claims}', true); \
                     SELECT * FROM public.resolve_engine(); COMMIT;"
                );
                floor[caller % floor.len()].simple_query(&sql).await.is_ok()
            }
        })
        .await
    }
}
