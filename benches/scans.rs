//! Scans of generation_jobs at 1,000,000 jobs (issue #13, item 4): what one user's
//! list costs, through the service (`GET /v1/generations`) and straight through
//! PostgREST without a filter (`GET /generation_jobs?select=id&order=created_at.desc
//! &limit=50`, the React app's natural query), with the plans Postgres chose. The same
//! query's plan and time are also shown under V3's policies and under the OR-ed
//! `(select …)` form, inside a rolled-back transaction, for comparison.
//!
//! `cargo bench --bench scans` · `BENCH_QUICK=1 cargo bench --bench scans` (100,000 jobs)

#[path = "common/mod.rs"]
mod common;

use common::kit::{flows::one_step_flow, seed::engine_row, stack::Stack};
use common::*;
use std::time::{Duration, Instant};
use uuid::Uuid;

const USERS: i64 = 10_000;
/// The measured user's own jobs (the issue's reproduction had 20).
const MINE: i64 = 20;

fn main() {
    bench_main("scans", run);
}

fn user_uuid(g: i64) -> Uuid {
    Uuid::parse_str(&format!("00000000-0000-4000-8000-{g:012x}")).expect("uuid")
}

/// 1M jobs (one step each) spread over USERS users and a year, in raw SQL with the
/// triggers off (session_replication_role = replica): the admission and snapshot
/// triggers are not what is measured here.
async fn seed(stack: &Stack, jobs: i64) -> Res<(Uuid, Uuid)> {
    let t = Instant::now();
    let pg = &stack.pg;
    let engine = engine_row(pg, &one_step_flow("openai", "scans")).await?;
    pg.batch_execute(&format!(
        "INSERT INTO auth.users (id, email)
           SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'u' || g || '@bench.test'
           FROM generate_series(1, {USERS}) g;
         INSERT INTO public.profiles (id, email, role) SELECT id, email, 'user' FROM auth.users;
         INSERT INTO public.user_credits (user_id, tier) SELECT id, 'pro' FROM auth.users;
         UPDATE public.profiles SET role = 'admin'
          WHERE id = '00000000-0000-4000-8000-000000000002';
         SET session_replication_role = replica;
         -- Users 3.. share the jobs; user 1 (measured) gets {MINE}, user 2 (admin) none.
         INSERT INTO public.generation_jobs (user_id, engine_id, engine_name, engine_snapshot, input,
                                            status, attempt, created_at, scheduled_at, finished_at, result)
           SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(3 + g % ({USERS} - 2)), 12, '0'))::uuid,
                  '{engine}', 'scans', '{{\"flow_config\": {{}}}}', jsonb_build_object('topic', 'job ' || g),
                  'succeeded', 1, t, t, t + interval '20 seconds', '{{\"book\": \"# A book\"}}'
             FROM generate_series(1, {jobs} - {MINE}) g,
                  LATERAL (SELECT now() - (g::double precision / {jobs}) * interval '365 days' AS t) c;
         INSERT INTO public.generation_jobs (user_id, engine_id, engine_name, engine_snapshot, input,
                                            status, attempt, created_at, scheduled_at)
           SELECT '00000000-0000-4000-8000-000000000001', '{engine}', 'scans', '{{}}',
                  jsonb_build_object('topic', 'mine ' || g), 'queued', 0,
                  now() - g * interval '17 days', now()
             FROM generate_series(1, {MINE}) g;
         INSERT INTO public.generation_steps (job_id, step_id, status, output, finished_at)
           SELECT id, 'write', 'succeeded', '\"text\"', created_at FROM public.generation_jobs;
         SET session_replication_role = DEFAULT;"
    ))
    .await?;
    // One statement each: VACUUM cannot run in the implicit transaction of a batch.
    for t in [
        "auth.users",
        "public.generation_jobs",
        "public.generation_steps",
    ] {
        pg.batch_execute(&format!("VACUUM ANALYZE {t}")).await?;
    }
    println!(
        "seeded {jobs} jobs and {jobs} steps for {USERS} users in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok((user_uuid(1), user_uuid(2)))
}

/// EXPLAIN (ANALYZE, BUFFERS) of `sql` as `user` under the policies in place, after
/// running `setup` in the same transaction (rolled back). `as_role`: run as the role
/// `authenticated` (as PostgREST does), or as the owner (what a definer function does).
async fn explain(stack: &Stack, user: Uuid, as_role: bool, setup: &str, sql: &str) -> Res<String> {
    let pg = bookengine::migrate::connect(&stack.db).await?;
    let claims = format!(r#"{{"sub":"{user}","role":"authenticated"}}"#);
    pg.batch_execute(&format!("BEGIN; {setup}")).await?;
    pg.execute(
        "SELECT set_config('request.jwt.claims', $1, true)",
        &[&claims],
    )
    .await?;
    if as_role {
        pg.batch_execute("SET LOCAL ROLE authenticated").await?;
    }
    let rows = pg
        .query(&format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}"), &[])
        .await?;
    pg.batch_execute("ROLLBACK").await?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n"))
}

const V3_POLICIES: &str = r#"
  DROP POLICY "Users can view their generation jobs" ON public.generation_jobs;
  CREATE POLICY "v3 user" ON public.generation_jobs FOR SELECT USING (user_id = auth.uid());
  CREATE POLICY "v3 admin" ON public.generation_jobs FOR SELECT USING (public.is_engine_admin());"#;

const OR_SELECT_POLICIES: &str = r#"
  DROP POLICY "Users can view their generation jobs" ON public.generation_jobs;
  CREATE POLICY "or user" ON public.generation_jobs FOR SELECT USING (user_id = (select auth.uid()));
  CREATE POLICY "or admin" ON public.generation_jobs FOR SELECT USING ((select public.is_engine_admin()));"#;

async fn load(
    http: &reqwest::Client,
    url: String,
    token: String,
    n: usize,
    check: fn(&serde_json::Value) -> bool,
) -> Stats {
    let http = http.clone();
    let sample = run_load_min(1, n, n, Duration::from_secs(120), move |_, _| {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        async move {
            match http.get(&url).bearer_auth(&token).send().await {
                Ok(r) if r.status().is_success() => {
                    r.json::<serde_json::Value>().await.is_ok_and(|v| check(&v))
                }
                _ => false,
            }
        }
    })
    .await;
    Stats::of(&sample)
}

async fn run() -> Res<()> {
    let jobs: i64 = if quick() { 100_000 } else { 1_000_000 };
    let n = if quick() { 100 } else { 400 };
    let mut stack = Stack::bench("scans", 10, log_dir()).await?;
    let (me, admin) = seed(&stack, jobs).await?;
    stack.restart_postgrest().await;
    println!("{}", machine_report(&stack).await);

    let api = ApiService::start(&stack).await?;
    let service = api.url.clone();

    let http = reqwest::Client::new();
    let my_token = stack.token_for(me);
    let admin_token = stack.token_for(admin);
    let all_mine = |v: &serde_json::Value| v.as_array().is_some_and(|a| a.len() == MINE as usize);
    let fifty = |v: &serde_json::Value| v.as_array().is_some_and(|a| a.len() == 50);
    let direct = format!(
        "{}/generation_jobs?select=id&order=created_at.desc&limit=50",
        stack.rest_url
    );
    let steps = format!("{}/generation_steps?select=job_id&limit=50", stack.rest_url);
    // Warm caches and pools.
    for url in [format!("{service}/v1/generations"), direct.clone()] {
        load(&http, url, my_token.clone(), 20, |_| true).await;
    }
    let busy = cpu_busy(Duration::from_millis(500)).await;
    println!(
        "machine CPU busy just before: {busy:.0}% (loadavg {})",
        loadavg()
    );
    let rows = [
        (
            "user: GET /v1/generations",
            load(
                &http,
                format!("{service}/v1/generations"),
                my_token.clone(),
                n,
                all_mine,
            )
            .await,
        ),
        (
            "user: PostgREST generation_jobs, no filter",
            load(&http, direct.clone(), my_token.clone(), n, all_mine).await,
        ),
        (
            "user: PostgREST generation_jobs, user_id=eq.",
            load(
                &http,
                format!("{direct}&user_id=eq.{me}"),
                my_token.clone(),
                n,
                all_mine,
            )
            .await,
        ),
        (
            "user: PostgREST generation_steps, no filter",
            load(&http, steps.clone(), my_token.clone(), n, all_mine).await,
        ),
        (
            "admin: GET /v1/generations (every job)",
            load(
                &http,
                format!("{service}/v1/generations"),
                admin_token.clone(),
                n,
                fifty,
            )
            .await,
        ),
    ];
    println!("\n{jobs} jobs, {USERS} users, the measured user has {MINE}; c=1, n={n}");
    for (label, s) in &rows {
        println!("{}", s.line(label));
    }
    for (label, s) in rows.iter().take(2) {
        println!("{label}: p50 {}", verdict_max(s.p50, 10.0, " ms"));
    }

    let q = "SELECT id FROM public.generation_jobs ORDER BY created_at DESC LIMIT 50";
    let plans = [
        ("V8 (owner-only policy), as the user", me, true, "", q),
        (
            "V8, steps without a filter, as the user",
            me,
            true,
            "",
            "SELECT job_id FROM public.generation_steps LIMIT 50",
        ),
        (
            "V8, generation_list()'s admin branch (run as its definer)",
            admin,
            false,
            "",
            q,
        ),
        (
            "V3's policies (per-row auth.uid() OR is_engine_admin()), as the user",
            me,
            true,
            V3_POLICIES,
            q,
        ),
        (
            "(select …) form, still two OR-ed policies, as the user",
            me,
            true,
            OR_SELECT_POLICIES,
            q,
        ),
    ];
    for (label, user, as_role, setup, sql) in plans {
        let plan = explain(&stack, user, as_role, setup, sql).await?;
        let seq = if plan.contains("Seq Scan") {
            "SEQ SCAN"
        } else {
            "no seq scan"
        };
        println!("\n--- {label}: {seq}\n{sql}\n{plan}");
    }
    drop(api);
    Ok(())
}
