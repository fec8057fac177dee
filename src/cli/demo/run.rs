//! The demo's job: requested as the pro user, run by an in-process worker, its text
//! printed as it is written (read back through PostgREST under RLS).

use super::setup::Prepared;
use super::{step, DemoArgs};
use crate::cli::live_text::LiveText;
use crate::error::{codes, Error, Result};
use crate::generations::{self, watch, GenerationRequest, JobDetail};
use crate::rest::{Caller, Rest};
use crate::secret::Secret;
use crate::worker::WorkerConfig;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The lines the job's text rows written since the last call complete.
async fn new_text(rest: &Rest, token: &Secret, job: Uuid, live: &mut LiveText) -> Vec<String> {
    match watch::deltas::read(rest, token, job, live.last, None, "demo").await {
        Ok(rows) => rows
            .iter()
            .filter_map(|r| serde_json::from_str::<Value>(&r.data).ok())
            .flat_map(|row| live.absorb(&row))
            .collect(),
        // The text is a view: the book and the report do not depend on it.
        Err(e) => {
            tracing::debug!(code = %e.code, "reading the job's text failed");
            Vec::new()
        }
    }
}

/// Request the book and run the worker until the job ends; its final detail.
pub async fn book(demo: &Prepared, args: &DemoArgs) -> Result<JobDetail> {
    let (rest, pro) = (&demo.rest, &demo.pro);
    let as_pro = Caller::User(pro.token.clone());
    step(&format!(
        "requesting a book about \"{}\" as the pro user",
        args.topic
    ));
    let input = json!({"topic": args.topic, "chapters": args.chapters});
    let job = generations::request(
        rest,
        &as_pro,
        &GenerationRequest {
            input,
            engine_id: None,
        },
    )
    .await?;
    eprintln!("    job {} queued", job.id);

    step("running the worker");
    let shutdown = CancellationToken::new();
    let wake = Arc::new(Notify::new());
    let worker_config = WorkerConfig {
        concurrency: 2,
        fanout_concurrency: 4,
        poll_interval_ms: 200,
        backoff_ms: 300,
        ..Default::default()
    };
    let (_, worker) = crate::worker::spawn(
        &demo.supabase,
        &worker_config,
        &demo.providers,
        wake.clone(),
        shutdown.clone(),
    )
    .await?;
    wake.notify_one();

    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template(
            "    {spinner} [{elapsed_precise}] {bar:30} {pos}/{len} calls  {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    // The chapters as they are written: the job's text rows, read as the pro user
    // (RLS), printed as whole lines above the bar on a terminal, as plain lines otherwise.
    eprintln!("    the text as it is written:");
    let mut live = LiveText::default();
    let on_tty = std::io::stderr().is_terminal();
    let show = |bar: &ProgressBar, lines: Vec<String>| {
        for line in lines {
            if on_tty {
                bar.println(format!("    {line}"));
            } else {
                eprintln!("    {line}");
            }
        }
    };
    let detail = loop {
        show(&bar, new_text(rest, &pro.token, job.id, &mut live).await);
        let d = generations::get(rest, &as_pro, job.id).await?;
        let p = &d.job.progress;
        bar.set_length(p.total.max(1));
        bar.set_position(p.done);
        bar.set_message(format!(
            "{} {}",
            d.job.status,
            p.current.as_deref().unwrap_or("")
        ));
        if d.job.is_finished() {
            // The worker stores all of a job's text before it completes the job.
            show(&bar, new_text(rest, &pro.token, job.id, &mut live).await);
            show(&bar, live.finish());
            break d;
        }
        if Instant::now() > deadline {
            bar.abandon();
            shutdown.cancel();
            return Err(Error::new(
                crate::error::Kind::Unavailable,
                codes::BACKEND_UNAVAILABLE,
                format!("the book was not done after {}s", args.timeout),
            ));
        }
        bar.tick();
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    bar.finish_and_clear();
    shutdown.cancel();
    let _ = worker.await;
    Ok(detail)
}
