//! What the database does with a resolution: query plans (EXPLAIN and auto_explain),
//! the SECURITY DEFINER experiment and the generation request's timing.

use super::*;

/// A connection whose server notices (auto_explain's LOG lines) are kept.
pub(super) async fn connect_with_notices(
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

pub(super) fn seq_scans(plan: &str, table: &str) -> Vec<String> {
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
pub(super) async fn interleaved(t: &Targets, p: &Plan, label: &str) {
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
pub(super) fn query_of(body: &str) -> String {
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
pub(super) async fn explain(stack: &Stack) -> Res<String> {
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
pub(super) async fn definer_experiment(
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
pub(super) async fn generation_timing(stack: &Stack) -> Res<String> {
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
