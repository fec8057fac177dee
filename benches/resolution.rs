//! Engine resolution at scale: 100k users, 1,000 engines, 200k assignments.
//!
//! (a) GET /v1/me/engine through the service, (b) POST rpc/resolve_engine straight
//! to PostgREST, (c) the floor: the same function as plain SQL over tokio-postgres
//! (role + claims set in a one-round-trip transaction), all at concurrency 16 with
//! random users' tokens. Then EXPLAIN (ANALYZE, BUFFERS) as an authenticated user,
//! and a growth curve of (b) and (c) over the number of assignments.
//!
//! `cargo bench --bench resolution` (a few minutes) · `BENCH_QUICK=1 cargo bench --bench resolution`

#[path = "common/mod.rs"]
mod common;

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

async fn seed_base(pg: &tokio_postgres::Client, flow: &serde_json::Value) -> Res<()> {
    let t = Instant::now();
    let row = bookengine::flow::parse_flow(flow)
        .map_err(|e| format!("flow: {}", e.message))?
        .to_engine_row();
    pg.batch_execute(&format!(
        "INSERT INTO auth.users (id, email)
           SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'u' || g || '@bench.test'
           FROM generate_series(1, {USERS}) g;
         INSERT INTO public.profiles (id, email, role) SELECT id, email, 'user' FROM auth.users;
         -- tiers spread: 50% hobby, 35% pro, 15% enterprise
         INSERT INTO public.user_credits (user_id, tier, credits_remaining)
           SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid,
                  CASE WHEN g % 20 < 10 THEN 'hobby' WHEN g % 20 < 17 THEN 'pro' ELSE 'enterprise' END,
                  100
           FROM generate_series(1, {USERS}) g;"
    ))
    .await?;
    pg.execute(
        &format!(
            "INSERT INTO public.ai_engines (id, name, description, flow_config, models, execution_mode, tier, active)
               SELECT ('00000000-0000-4000-9000-' || lpad(to_hex(g), 12, '0'))::uuid, 'Engine ' || g, $1,
                      $2, $3, 'parallel', (ARRAY['hobby','pro','enterprise'])[g % 3 + 1], g % 50 <> 0
               FROM generate_series(1, {ENGINES}) g"
        ),
        &[&row.description, &row.flow_config, &row.models],
    )
    .await?;
    mark_checked(pg, None).await?;
    println!(
        "seeded {USERS} users (profiles, user_credits: 50% hobby / 35% pro / 15% enterprise) and {ENGINES} engines (2% inactive, flow_config = the example book flow) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Share of each engine's users on its candidate while the rollout case runs.
const ROLLOUT_PERCENT: i32 = 50;

/// Gives every engine a checked version 2 (another model in the first step): a
/// rollout candidate. Written as the service role would see it after its check.
async fn seed_candidates(pg: &tokio_postgres::Client) -> Res<()> {
    pg.batch_execute(
        "INSERT INTO public.engine_versions (engine_id, version, flow_config, models, execution_mode,
                                             origin, note, check_state, checked_at)
           SELECT e.id, 2, jsonb_set(e.flow_config, '{steps,0,configuration,model}', '\"gpt-4.1-mini\"'),
                  e.models, e.execution_mode, 'proposal', 'bench candidate', 'runnable', now()
             FROM public.ai_engines e;
         UPDATE public.engine_releases SET last_version = 2;
         ANALYZE public.engine_versions, public.engine_releases;",
    )
    .await?;
    Ok(())
}

/// Starts (or ends) a rollout of version 2 on every engine.
async fn set_rollout(pg: &tokio_postgres::Client, on: bool) -> Res<()> {
    let sql = if on {
        format!(
            "UPDATE public.engine_releases SET rollout_version = 2, rollout_percent = {ROLLOUT_PERCENT},
                    rollout_started_at = now(), rollout_updated_at = now()"
        )
    } else {
        "UPDATE public.engine_releases SET rollout_version = NULL, rollout_percent = NULL,
                rollout_started_at = NULL, rollout_updated_at = now()"
            .to_owned()
    };
    pg.batch_execute(&sql).await?;
    Ok(())
}

/// Share of 1,000 users whose resolved engine is a candidate (proves the case is live).
async fn candidate_share(pg: &tokio_postgres::Client) -> Res<f64> {
    pg.batch_execute(&format!(
        "DROP TABLE IF EXISTS pg_temp.probe;
         CREATE TEMP TABLE probe (rollout boolean);
         DO $$
         DECLARE g integer; c public.engine_choice;
         BEGIN
           FOR g IN 1..1000 LOOP
             PERFORM set_config('request.jwt.claims', json_build_object('sub',
               ('00000000-0000-4000-8000-' || lpad(to_hex(g * 97 % {USERS} + 1), 12, '0')),
               'role', 'authenticated')::text, true);
             SELECT * INTO c FROM public.my_engines() x WHERE x.check_state <> 'not_runnable' ORDER BY x.rank LIMIT 1;
             IF c.id IS NOT NULL THEN INSERT INTO probe VALUES (c.rollout); END IF;
           END LOOP;
         END $$;"
    ))
    .await?;
    let row = pg
        .query_one(
            "SELECT coalesce(avg(CASE WHEN rollout THEN 1.0 ELSE 0.0 END), 0)::float8 FROM probe",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Replace all assignments with `total`: 90 tier assignments (30 engines per tier)
/// and `total - 90` user assignments spread evenly over the users, random priorities,
/// 5% inactive.
async fn seed_assignments(pg: &tokio_postgres::Client, total: i64) -> Res<()> {
    let t = Instant::now();
    let user_rows = total - TIER_ASSIGNMENTS;
    let per_user = (user_rows + USERS - 1) / USERS;
    let step = ENGINES / per_user.max(1);
    pg.batch_execute(&format!(
        "TRUNCATE public.engine_assignments;
         INSERT INTO public.engine_assignments (engine_id, assignment_type, tier, priority, active)
           SELECT ('00000000-0000-4000-9000-' || lpad(to_hex(g), 12, '0'))::uuid, 'tier',
                  (ARRAY['hobby','pro','enterprise'])[g % 3 + 1], (random() * 100)::int, true
           FROM generate_series(1, 60) g
           UNION ALL
           SELECT ('00000000-0000-4000-9000-' || lpad(to_hex(g), 12, '0'))::uuid, 'tier',
                  (ARRAY['hobby','pro','enterprise'])[(g + 1) % 3 + 1], (random() * 100)::int, true
           FROM generate_series(1, 30) g;
         INSERT INTO public.engine_assignments (engine_id, assignment_type, user_id, priority, active)
           SELECT ('00000000-0000-4000-9000-' || lpad(to_hex(((u * 7919 + s * {step}) % {ENGINES}) + 1), 12, '0'))::uuid,
                  'user', ('00000000-0000-4000-8000-' || lpad(to_hex(u), 12, '0'))::uuid,
                  (random() * 100)::int, k % 20 <> 0
           FROM generate_series(0, {user_rows} - 1) k,
                LATERAL (SELECT (k % {USERS}) + 1 AS u, k / {USERS} AS s) x;"
    ))
    .await?;
    pg.batch_execute("VACUUM ANALYZE public.engine_assignments")
        .await?;
    pg.batch_execute("VACUUM ANALYZE public.ai_engines").await?;
    pg.batch_execute("VACUUM ANALYZE public.user_credits")
        .await?;
    pg.batch_execute("VACUUM ANALYZE public.profiles").await?;
    let n: i64 = pg
        .query_one("SELECT count(*) FROM public.engine_assignments", &[])
        .await?
        .get(0);
    println!(
        "\n== {n} assignments ({TIER_ASSIGNMENTS} tier, {} user, up to {per_user} per user), seeded in {:.1} s",
        n - TIER_ASSIGNMENTS,
        t.elapsed().as_secs_f64()
    );
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

/// A connection whose server notices (auto_explain's LOG lines) are kept.
async fn connect_with_notices(
    config: &tokio_postgres::Config,
) -> Res<(tokio_postgres::Client, Arc<Mutex<Vec<String>>>)> {
    let (client, mut conn) = config.connect(tokio_postgres::NoTls).await?;
    let notices = Arc::new(Mutex::new(Vec::new()));
    let sink = notices.clone();
    tokio::spawn(async move {
        let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(tokio_postgres::AsyncMessage::Notice(n)) => {
                    if let Ok(mut v) = sink.lock() {
                        v.push(n.message().to_owned());
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    Ok((client, notices))
}

fn seq_scans(plan: &str, table: &str) -> Vec<String> {
    let lines: Vec<&str> = plan.lines().collect();
    let mut found = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains(&format!("Seq Scan on {table}")) {
            let mut s = l.trim().to_owned();
            if let Some(f) = lines[i + 1..]
                .iter()
                .take(3)
                .find(|x| x.trim_start().starts_with("Filter:"))
            {
                s.push_str(&format!("\n        {}", f.trim()));
            }
            found.push(s);
        }
    }
    found
}

/// Rounds of (a) then (b), one after the other, for the service-over-PostgREST
/// difference: a single c=16 sample of each swings by several ms on two shared cores,
/// so the median of the per-round differences is the figure to compare with 1 ms.
/// `BENCH_ROUNDS` (default 5; 0 skips).
async fn interleaved(t: &Targets, p: &Plan, label: &str) {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    if rounds == 0 {
        return;
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    for (conc, n, limit) in [
        (CONCURRENCY, p.main_n / rounds.max(1), p.main_limit / 3),
        (1, p.serial_n / rounds.max(1), p.serial_limit / 3),
    ] {
        let mut diffs = Vec::new();
        for _ in 0..rounds {
            let a = Stats::of(&t.service(conc, 1, n.max(50), limit).await);
            let b = Stats::of(&t.postgrest(conc, 1, n.max(50), limit).await);
            diffs.push(a.p50 - b.p50);
        }
        let shown: Vec<String> = diffs.iter().map(|d| format!("{d:+.2}")).collect();
        let m = median(diffs);
        println!(
            "interleaved, {label}, c={conc}: service − PostgREST p50 per round [{}] ms; median {m:+.2} ms -> {}",
            shown.join(", "),
            if m <= 1.0 { "MET (≤ 1 ms)" } else { "MISSED (> 1 ms)" }
        );
    }
}

/// The query of my_engines(): its whole body while it was `LANGUAGE sql` (V1-V11),
/// the statement after `RETURN QUERY` since V12 made it plpgsql (plans cached).
fn query_of(body: &str) -> String {
    match body.split_once("RETURN QUERY") {
        Some((_, rest)) => rest
            .trim()
            .trim_end_matches("END")
            .trim()
            .trim_end_matches(';')
            .to_owned(),
        None => body.trim().to_owned(),
    }
}

/// EXPLAIN (ANALYZE, BUFFERS) as an authenticated pro user with user and tier
/// assignments: the two tables, my_engines()'s body (resolve_engine's inner query)
/// and, through auto_explain, the plans resolve_engine() really runs.
async fn explain(stack: &Stack) -> Res<String> {
    let (client, notices) = connect_with_notices(&stack.db).await?;
    // user 10 is pro (10 % 20) with two user assignments.
    let uid = user_uuid(10);
    let claims = claims_of(&stack.token_for(uid));
    let body: String = client
        .query_one(
            "SELECT prosrc FROM pg_proc WHERE oid = 'public.my_engines()'::regprocedure",
            &[],
        )
        .await?
        .get(0);
    let as_user = format!(
        "SET LOCAL ROLE authenticated; SELECT set_config('request.jwt.claims', '{claims}', true); SET LOCAL search_path = pg_catalog, public;"
    );
    let mut out = String::from("\n================ EXPLAIN (ANALYZE, BUFFERS) as an authenticated pro user ================\n");
    let mut seq_found = Vec::new();
    for (label, q) in [
        (
            "SELECT * FROM ai_engines",
            "SELECT * FROM public.ai_engines".to_owned(),
        ),
        (
            "SELECT * FROM engine_assignments",
            "SELECT * FROM public.engine_assignments".to_owned(),
        ),
        (
            "my_engines() body = resolve_engine()'s inner query",
            query_of(&body),
        ),
        (
            "SELECT * FROM resolve_engine()",
            "SELECT * FROM public.resolve_engine()".to_owned(),
        ),
    ] {
        client.batch_execute("BEGIN").await?;
        client.batch_execute(&as_user).await?;
        let rows = client
            .query(&format!("EXPLAIN (ANALYZE, BUFFERS) {q}"), &[])
            .await?;
        client.batch_execute("ROLLBACK").await?;
        let plan: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
        let plan = plan.join("\n");
        out.push_str(&format!("\n--- {label}\n{plan}\n"));
        for s in seq_scans(&plan, "engine_assignments") {
            seq_found.push(format!("{label}: {s}"));
        }
    }
    // The plans executed inside resolve_engine() (plpgsql -> my_engines()).
    client
        .batch_execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; SET auto_explain.log_analyze = on; \
             SET auto_explain.log_buffers = on; SET auto_explain.log_nested_statements = on; SET client_min_messages = log;",
        )
        .await?;
    client.batch_execute("BEGIN").await?;
    client.batch_execute(&as_user).await?;
    if let Ok(mut n) = notices.lock() {
        n.clear();
    }
    client
        .simple_query("SELECT * FROM public.resolve_engine()")
        .await?;
    client.batch_execute("ROLLBACK").await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let nested = notices.lock().map(|n| n.clone()).unwrap_or_default();
    out.push_str(
        "\n--- auto_explain: statements executed by SELECT * FROM resolve_engine() (nested)\n",
    );
    for n in &nested {
        out.push_str(n);
        out.push('\n');
        for s in seq_scans(n, "engine_assignments") {
            seq_found.push(format!("auto_explain (nested in resolve_engine): {s}"));
        }
    }
    out.push_str("\nSeq Scan on engine_assignments: ");
    if seq_found.is_empty() {
        out.push_str("none in any plan (target: none) -> MET\n");
    } else {
        out.push_str(&format!(
            "{} plan node(s) (target: none) -> MISSED\n",
            seq_found.len()
        ));
        for s in seq_found {
            out.push_str(&format!("  * {s}\n"));
        }
    }
    out.push_str(&definer_experiment(&client, &as_user, &query_of(&body)).await?);
    Ok(out)
}

/// The fix this benchmark suggests, tried in the bench database only (sql/ is not
/// touched): the same body as a SECURITY DEFINER function. Its WHERE clause already
/// states exactly who may see what, so without RLS the planner can use the indexes.
async fn definer_experiment(
    client: &tokio_postgres::Client,
    as_user: &str,
    body: &str,
) -> Res<String> {
    client
        .batch_execute("SET auto_explain.log_min_duration = -1; SET client_min_messages = notice;")
        .await?;
    client
        .batch_execute(&format!(
            "CREATE FUNCTION public.bench_my_engines_definer() RETURNS SETOF public.engine_choice \
             LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $bench${body}$bench$; \
             GRANT EXECUTE ON FUNCTION public.bench_my_engines_definer() TO authenticated;"
        ))
        .await?;
    let listing = |f: &str| {
        format!("SELECT coalesce(string_agg(id::text || ':' || rank, ',' ORDER BY rank), '') FROM public.{f}()")
    };
    let mut out = String::from(
        "\n--- experiment (bench database only): my_engines() body as SECURITY DEFINER, called as the same user\n",
    );
    let mut times = Vec::new();
    let mut lists = Vec::new();
    for f in ["my_engines", "bench_my_engines_definer"] {
        let mut best = f64::INFINITY;
        let mut list = String::new();
        for _ in 0..3 {
            client.batch_execute("BEGIN").await?;
            client.batch_execute(as_user).await?;
            let t = Instant::now();
            let row = client.query_one(&listing(f), &[]).await?;
            best = best.min(ms(t.elapsed()));
            client.batch_execute("ROLLBACK").await?;
            list = row.get(0);
        }
        times.push(best);
        lists.push(list);
    }
    out.push_str(&format!(
        "my_engines() (INVOKER, RLS): best of 3 {:.2} ms; as SECURITY DEFINER: best of 3 {:.2} ms; same engines in the same order: {}\n",
        times[0],
        times[1],
        lists[0] == lists[1]
    ));
    // Its plan: the body without RLS (what the definer runs).
    client.batch_execute("BEGIN").await?;
    client
        .batch_execute(&as_user.replace("SET LOCAL ROLE authenticated;", ""))
        .await?;
    let rows = client
        .query(
            &format!("EXPLAIN (ANALYZE, COSTS OFF) {}", body.trim()),
            &[],
        )
        .await?;
    client.batch_execute("ROLLBACK").await?;
    for r in rows {
        let line: String = r.get(0);
        if !line.trim_start().starts_with("Filter:")
            && !line.trim_start().starts_with("Index Cond:")
            && !line.trim_start().starts_with("Recheck Cond:")
        {
            out.push_str(&line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// Requesting a generation resolves the engine again (my_engines) and reads the
/// engine as the caller (the ai_engines policy): a few timed calls, straight to
/// PostgREST, for the record.
async fn generation_timing(stack: &Stack) -> Res<String> {
    let http = reqwest::Client::new();
    let mut times = Vec::new();
    for i in [10i64, 30, 50] {
        let token = stack.token_for(user_uuid(i));
        let t0 = Instant::now();
        let r = http
            .post(format!("{}/rpc/request_generation", stack.rest_url))
            .bearer_auth(&token)
            .json(&json!({"input": {"topic": "resolution benchmark"}}))
            .send()
            .await?;
        let status = r.status();
        let _ = r.bytes().await;
        times.push(format!("{:.1} ms ({status})", ms(t0.elapsed())));
    }
    stack
        .pg
        .batch_execute("TRUNCATE public.generation_jobs CASCADE")
        .await?;
    Ok(format!(
        "info: POST rpc/request_generation as three users, one at a time: {}",
        times.join(", ")
    ))
}
