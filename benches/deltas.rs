//! The durable text streams' write side (sql/V11): what `delta_append` costs when
//! simulated workers flush every 100 ms, each call carrying one row per streaming
//! job of that worker (as src/worker/deltas.rs does), through a real PostgREST with
//! the service role. Prints, per scenario: calls/s and rows/s achieved against the
//! offered rate, call latency, WAL bytes per second and per row; then bytes stored
//! per 1,000 tokens and the cost of the retention pass (delta_compact).
//!
//! `cargo bench --bench deltas` · `BENCH_QUICK=1 cargo bench --bench deltas`

#[path = "common/mod.rs"]
mod common;

use bookengine::queue::{DeltaRow, Queue};
use bookengine::rest::Rest;
use common::kit::stack::Stack;
use common::*;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A flush interval's text of one streaming call: ~5 tokens (a model at 50 tokens/s).
const TEXT: &str = "the lighthouse keeper ";
const TOKENS_PER_ROW: f64 = 5.0;
const FLUSH: Duration = Duration::from_millis(100);

fn main() {
    bench_main("deltas", run);
}

/// Running jobs with leases, straight into the table (no engine, no trigger).
async fn seed_jobs(stack: &Stack, user: Uuid, n: usize) -> Res<Vec<(Uuid, Uuid)>> {
    stack
        .pg
        .batch_execute("SET session_replication_role = replica")
        .await?;
    let rows = stack
        .pg
        .query(
            "INSERT INTO public.generation_jobs (user_id, engine_name, engine_snapshot, status, lease_token, attempt, started_at)
             SELECT $1, 'bench', '{}'::jsonb, 'running', gen_random_uuid(), 1, now()
               FROM generate_series(1, $2::int) RETURNING id, lease_token",
            &[&user, &(n as i32)],
        )
        .await?;
    stack
        .pg
        .batch_execute("SET session_replication_role = origin")
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

async fn wal_lsn(stack: &Stack) -> Res<f64> {
    let r = stack
        .pg
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8",
            &[],
        )
        .await?;
    Ok(r.get(0))
}

struct Scenario {
    workers: usize,
    jobs: usize,
    calls: usize,
    rows: u64,
    failed: usize,
    secs: f64,
    lat: Stats,
    wal: f64,
}

/// `workers` simulated workers, each flushing every 100 ms one call with a row for
/// each of its `per_worker` jobs, for `dur`.
async fn scenario(
    stack: &Stack,
    queue: &Queue,
    user: Uuid,
    workers: usize,
    per_worker: usize,
    dur: Duration,
) -> Res<Scenario> {
    let jobs = seed_jobs(stack, user, workers * per_worker).await?;
    let wal0 = wal_lsn(stack).await?;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mine: Vec<(Uuid, Uuid)> = jobs[w * per_worker..(w + 1) * per_worker].to_vec();
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let (mut rows, mut failed) = (0u64, 0usize);
            let mut seq = 1i64;
            let mut tick = tokio::time::interval(FLUSH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Spread the workers' flushes over the interval, as independent workers are.
            tokio::time::sleep(FLUSH.mul_f64(w as f64 / workers.max(1) as f64)).await;
            while t0.elapsed() < dur {
                tick.tick().await;
                let batch: Vec<DeltaRow> = mine
                    .iter()
                    .map(|(job, lease)| DeltaRow {
                        job_id: *job,
                        lease: *lease,
                        seq,
                        step_id: "chapters".into(),
                        item_index: 0,
                        kind: "delta",
                        attempt: 1,
                        run: 1,
                        text: TEXT.into(),
                        meta: None,
                    })
                    .collect();
                seq += 1;
                let s = Instant::now();
                match queue.append_deltas(&batch).await {
                    Ok(o) => rows += o.inserted,
                    Err(_) => failed += 1,
                }
                lat.push(ms(s.elapsed()));
            }
            (lat, rows, failed)
        }));
    }
    let mut lat = Vec::new();
    let (mut rows, mut failed) = (0u64, 0usize);
    for t in tasks {
        let (l, r, f) = t.await?;
        lat.extend(l);
        rows += r;
        failed += f;
    }
    let secs = t0.elapsed().as_secs_f64();
    let wal = wal_lsn(stack).await? - wal0;
    Ok(Scenario {
        workers,
        jobs: workers * per_worker,
        calls: lat.len(),
        rows,
        failed,
        secs,
        lat: Stats::of_ms(&lat),
        wal,
    })
}

async fn run() -> Res<()> {
    let q = quick();
    let dur = Duration::from_secs(if q { 3 } else { 10 });
    let load_before = loadavg();
    let stack = bench_stack("deltas", 10).await?;
    let user = stack.user(Some("pro"), false).await.id;
    let queue = Queue::new(Rest::new(&stack.supabase_config())?);
    let plan: &[(usize, usize)] = if q {
        &[(4, 4), (10, 25)]
    } else {
        &[(4, 4), (10, 25), (20, 25), (20, 100), (40, 50)]
    };
    let busy = cpu_busy(Duration::from_millis(500)).await;
    println!(
        "machine CPU busy before measuring: {busy:.0}% (loadavg {})",
        loadavg()
    );
    println!(
        "\nflush every {} ms per simulated worker; one row of {} bytes (~{TOKENS_PER_ROW} tokens) per job per flush; {} s per scenario",
        FLUSH.as_millis(),
        TEXT.len(),
        dur.as_secs()
    );
    let mut results = Vec::new();
    for &(w, j) in plan {
        let r = scenario(&stack, &queue, user, w, j, dur).await?;
        let offered = w as f64 * (1000.0 / FLUSH.as_millis() as f64);
        println!(
            "  {:>3} workers x {:>3} jobs = {:>5} streaming jobs: {:>6.0} calls/s of {offered:.0} offered ({:.0}%), {:>7.0} rows/s, call p50 {:.1} ms p99 {:.1} ms, WAL {:.2} MB/s = {:.0} B/row, failed {}",
            r.workers,
            j,
            r.jobs,
            r.calls as f64 / r.secs,
            100.0 * r.calls as f64 / r.secs / offered,
            r.rows as f64 / r.secs,
            r.lat.p50,
            r.lat.p99,
            r.wal / r.secs / 1e6,
            r.wal / r.rows.max(1) as f64,
            r.failed
        );
        results.push((r, offered));
    }

    // Storage: bytes per row (heap + primary key) -> per 1,000 tokens.
    let row = stack
        .pg
        .query_one(
            "SELECT pg_total_relation_size('public.generation_deltas')::float8, count(*)::float8,
                    avg(octet_length(text))::float8
               FROM public.generation_deltas",
            &[],
        )
        .await?;
    let (bytes, rows, text): (f64, f64, f64) = (row.get(0), row.get(1), row.get(2));
    let per_row = bytes / rows.max(1.0);
    println!(
        "\nstorage: {rows:.0} rows, {:.1} MB (table + primary key) = {per_row:.0} B/row for {text:.0} B of text",
        bytes / 1e6
    );
    for tokens_per_row in [TOKENS_PER_ROW, 20.0] {
        let per_k = per_row - text + 4.0 * tokens_per_row;
        println!(
            "  ~{tokens_per_row} tokens per row (a model at {:.0} tokens/s, 100 ms flush): {:.1} KB per 1,000 tokens ({:.0} rows), vs ~4 KB of text",
            tokens_per_row * 10.0,
            per_k * 1000.0 / tokens_per_row / 1e3,
            1000.0 / tokens_per_row
        );
    }

    // Retention: every job finished an hour ago; passes of 500 jobs until none is left.
    stack
        .pg
        .batch_execute(
            "UPDATE public.generation_jobs SET status = 'succeeded', finished_at = now() - interval '1 hour'",
        )
        .await?;
    let wal0 = wal_lsn(&stack).await?;
    let t0 = Instant::now();
    let (mut passes, mut deleted, mut pass_ms) = (0, 0u64, Vec::new());
    loop {
        let s = Instant::now();
        let c = queue.compact_deltas(600, 500).await?;
        pass_ms.push(ms(s.elapsed()));
        passes += 1;
        deleted += c.deleted;
        if c.jobs == 0 {
            break;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let wal = wal_lsn(&stack).await? - wal0;
    let p = Stats::of_ms(&pass_ms);
    println!(
        "compaction: {deleted} rows in {passes} passes (500 jobs each) in {secs:.2} s = {:.0} rows/s; pass p50 {:.1} ms, max {:.1} ms; WAL {:.0} B per deleted row; an empty pass {:.1} ms",
        deleted as f64 / secs,
        p.p50,
        p.max,
        wal / deleted.max(1) as f64,
        pass_ms.last().copied().unwrap_or(0.0)
    );

    println!("\n================ deltas: summary ================");
    for (r, offered) in &results {
        let ratio = r.calls as f64 / r.secs / offered;
        println!(
            "{:>5} streaming jobs on {:>3} workers: {:.0} rows/s, {:.0} calls/s = {ratio:.2} of offered -> {}; p99 {:.1} ms -> {}",
            r.jobs,
            r.workers,
            r.rows as f64 / r.secs,
            r.calls as f64 / r.secs,
            verdict_min(ratio, 0.95, "x of offered"),
            r.lat.p99,
            verdict_max(r.lat.p99, ms(FLUSH), " ms (one flush interval)")
        );
    }
    println!(
        "loadavg before {load_before}, after {} (other processes may share the 2 cores)",
        loadavg()
    );
    Ok(())
}
