//! Durable text streams (issue #14, the writing side): the worker streams every
//! provider call into `generation_deltas` as the text arrives; the owner (and
//! admins) read it under RLS while the job runs; the reassembled text of every call
//! equals its step's output; cut attempts, crashes and cancels leave the rows the
//! reassembly rule needs (sql/V11).

use crate::kit::app::{app_with_mocks, book_setup, spawn_app, TestApp};
use crate::kit::http::JsonCalls;
use crate::kit::jobs::{finished, start_book, wait_until};
use crate::kit::mock_llm::{Fault, Mocks};
use bookengine::queue::{DeltaRow, Queue};
use bookengine::rest::Rest;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Every delta row of a job the caller can see, in seq order (PostgREST, caller's JWT).
async fn deltas(app: &TestApp, token: &str, job: &str) -> Vec<Value> {
    let (s, rows) = app
        .stack
        .get(
            &format!("generation_deltas?job_id=eq.{job}&order=seq.asc"),
            token,
        )
        .await;
    assert_eq!(s, 200, "{rows}");
    rows.as_array().cloned().unwrap_or_default()
}

/// The reassembly rule (sql/V11, V15): per (step, item), in seq order, an attempt
/// row starts the text again from its own text, a delta adds to it, a discard or a
/// restart voids it.
fn reassemble(rows: &[Value]) -> BTreeMap<(String, i64), String> {
    let mut texts: BTreeMap<(String, i64), String> = BTreeMap::new();
    for r in rows {
        let key = (
            r["step_id"].as_str().unwrap_or_default().to_owned(),
            r["item_index"].as_i64().unwrap_or(-2),
        );
        let text = texts.entry(key).or_default();
        match r["kind"].as_str() {
            Some("delta") => text.push_str(r["text"].as_str().unwrap_or_default()),
            Some("attempt") => *text = r["text"].as_str().unwrap_or_default().to_owned(),
            _ => text.clear(),
        }
    }
    texts
}

/// Seqs are 1, 2, 3, … with no gap.
fn assert_contiguous(rows: &[Value]) {
    let seqs: Vec<i64> = rows.iter().filter_map(|r| r["seq"].as_i64()).collect();
    let expected: Vec<i64> = (1..=rows.len() as i64).collect();
    assert_eq!(seqs, expected, "seqs");
}

/// Each finished call's reassembled text is its output (JSON steps: parsed equal).
fn assert_reassembles_to_outputs(job: &Value, rows: &[Value]) {
    let texts = reassemble(rows);
    let steps = job["steps"].as_array().cloned().unwrap_or_default();
    let mut checked = 0;
    for s in &steps {
        let key = (
            s["step_id"].as_str().unwrap_or_default().to_owned(),
            s["item_index"].as_i64().unwrap_or(-2),
        );
        // A fan-out's summary row has no call of its own.
        if s["output"].is_array() && key.1 == -1 {
            continue;
        }
        let text = texts
            .get(&key)
            .unwrap_or_else(|| panic!("no deltas for {key:?}: {job}"));
        match &s["output"] {
            Value::String(out) => assert_eq!(text, out, "{key:?}"),
            other => {
                let parsed: Value = serde_json::from_str(text.trim())
                    .ok()
                    .or_else(|| {
                        // The mock marks streamed text with its call number before the JSON.
                        text.find('{')
                            .and_then(|i| serde_json::from_str(&text[i..]).ok())
                    })
                    .unwrap_or(Value::Null);
                assert_eq!(&parsed, other, "{key:?}: {text}");
            }
        }
        checked += 1;
    }
    assert!(checked >= 5, "outline, 3 chapters and the edit: {checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_is_readable_before_its_step_ends_and_reassembles_to_every_output() {
    let (app, mocks) = app_with_mocks().await;
    let (admin, pro, _) = book_setup(&app).await;
    // Chapters stream a word every 150 ms: seconds per chapter.
    mocks.anthropic.chunk_interval(Duration::from_millis(150));
    let id = start_book(&app, &pro, "lighthouses").await;

    // Poll as the owner: text of a chapter shows while that chapter is still running.
    let start = Instant::now();
    let early = loop {
        assert!(start.elapsed() < Duration::from_secs(30), "no early text");
        let rows = deltas(&app, &pro.token, &id).await;
        let texts = reassemble(&rows);
        let partial: Vec<(String, i64)> = texts
            .iter()
            .filter(|((step, _), t)| step == "chapters" && !t.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        if !partial.is_empty() {
            // Read after the deltas: a step still unfinished now was unfinished then.
            let (_, job) = app.get(&format!("/v1/generations/{id}"), &pro.token).await;
            let unfinished = partial.iter().find(|(step, item)| {
                !job["steps"].as_array().into_iter().flatten().any(|s| {
                    s["step_id"] == step.as_str()
                        && s["item_index"] == *item
                        && s["status"] == "succeeded"
                })
            });
            if let Some(k) = unfinished {
                break k.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let job = wait_until(&app, &pro.token, &id, Duration::from_secs(60), finished).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let rows = deltas(&app, &pro.token, &id).await;
    assert_contiguous(&rows);
    assert_reassembles_to_outputs(&job, &rows);
    assert!(
        rows.iter().any(|r| r["step_id"] == early.0.as_str()
            && r["item_index"] == early.1
            && r["text"].as_str().is_some_and(|t| !t.is_empty())),
        "the early text's call has text rows"
    );
    // Each call starts with an attempt row naming its provider and model.
    let first = rows
        .iter()
        .find(|r| r["step_id"] == "edit")
        .cloned()
        .unwrap_or_default();
    assert_eq!(first["kind"], "attempt", "{first}");
    assert_eq!(first["meta"]["provider"], "gemini", "{first}");
    assert_eq!(
        (first["attempt"].clone(), first["run"].clone()),
        (json!(1), json!(1))
    );
    // Batched: far fewer rows than the words streamed.
    let words: usize = reassemble(&rows)
        .values()
        .map(|t| t.split_whitespace().count())
        .sum();
    assert!(
        rows.len() < words + 20,
        "{} rows for {words} words",
        rows.len()
    );

    // RLS: another user sees nothing; an admin sees every row.
    let other = app.stack.user(Some("pro"), false).await;
    assert!(deltas(&app, &other.token, &id).await.is_empty());
    assert_eq!(deltas(&app, &admin.token, &id).await.len(), rows.len());
    // Nobody but the worker writes: not through the table, not through the function.
    let (s, body) = app
        .stack
        .post(
            "generation_deltas",
            &pro.token,
            json!({"job_id": id, "seq": 10_000, "step_id": "edit", "item_index": -1,
                        "kind": "delta", "attempt": 1, "run": 1, "text": "forged"}),
        )
        .await;
    assert!(s == 401 || s == 403, "{s} {body}");
    let (s, body) = app
        .stack
        .post("rpc/delta_append", &pro.token, json!({"p_rows": []}))
        .await;
    assert!(s == 401 || s == 403 || s == 404, "{s} {body}");
    assert_eq!(deltas(&app, &pro.token, &id).await.len(), rows.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_attempt_leaves_a_discard_row_and_none_of_its_text_in_the_book() {
    let (app, mocks) = app_with_mocks().await;
    let (_admin, pro, _) = book_setup(&app).await;
    // The first chapter call breaks after two words; its retry succeeds.
    mocks.anthropic.script(vec![Fault::BreakAfter(2)]);
    let id = start_book(&app, &pro, "retries").await;
    let job = wait_until(&app, &pro.token, &id, Duration::from_secs(60), finished).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let rows = deltas(&app, &pro.token, &id).await;
    assert_contiguous(&rows);
    assert_reassembles_to_outputs(&job, &rows);
    let discard = rows
        .iter()
        .find(|r| r["kind"] == "discard")
        .cloned()
        .unwrap_or_else(|| panic!("no discard row: {rows:?}"));
    assert_eq!(discard["step_id"], "chapters");
    assert!(discard["meta"]["reason"].is_string(), "{discard}");
    // The cut attempt's text (the mock marks it "[call 1]") streamed, then was voided.
    let voided: String = rows
        .iter()
        .filter(|r| {
            (r["kind"] == "delta" || r["kind"] == "attempt")
                && r["step_id"] == "chapters"
                && r["item_index"] == discard["item_index"]
                && r["attempt"] == discard["attempt"]
        })
        .filter_map(|r| r["text"].as_str())
        .collect();
    assert!(voided.starts_with("[call 1]"), "{voided}");
    // None of the chapters (the Anthropic mock's calls) is the cut call's text.
    let chapters: Vec<&str> = job["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["step_id"] == "chapters" && s["item_index"].as_i64() >= Some(0))
        .filter_map(|s| s["output"].as_str())
        .collect();
    assert_eq!(chapters.len(), 3, "{job}");
    assert!(
        chapters.iter().all(|c| !c.starts_with("[call 1]")),
        "{chapters:?}"
    );
    // The retry is attempt 2 of the same call.
    assert!(rows.iter().any(|r| r["kind"] == "attempt"
        && r["item_index"] == discard["item_index"]
        && r["step_id"] == "chapters"
        && r["attempt"] == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_stream_closes_the_provider_stream_within_two_seconds() {
    let (app, mocks) = app_with_mocks().await;
    let (_admin, pro, _) = book_setup(&app).await;
    mocks.anthropic.chunk_interval(Duration::from_millis(400));
    let id = start_book(&app, &pro, "cancelling").await;
    let start = Instant::now();
    while mocks.anthropic.open_streams() == 0 || deltas(&app, &pro.token, &id).await.len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no stream started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, body) = app
        .post(
            &format!("/v1/generations/{id}/cancel"),
            &pro.token,
            json!({}),
        )
        .await;
    assert!(s == 200 || s == 202, "{s} {body}");
    let cancelled_at = Instant::now();
    while mocks.anthropic.open_streams() > 0 {
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(2),
            "a provider stream still open {:?} after the cancel",
            cancelled_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let job = wait_until(&app, &pro.token, &id, Duration::from_secs(10), finished).await;
    assert_eq!(job["status"], "cancelled", "{job}");
}

/// The queue calls themselves, with no worker: lease fencing, idempotence, many jobs
/// per call, the head a resumed run continues from, and retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_append_fences_leases_is_idempotent_and_retention_deletes_finished_jobs() {
    let app = spawn_app().await;
    let (_admin, pro, _) = book_setup(&app).await;
    let a = start_book(&app, &pro, "one").await;
    let b = start_book(&app, &pro, "two").await;
    let queue = Queue::new(Rest::new(&app.stack.supabase_config()).expect("rest"));
    let jobs = crate::resilience::ready(queue.claim("test-worker", 2, 30).await.expect("claim"));
    assert_eq!(jobs.len(), 2);
    let row =
        |job: &bookengine::queue::ClaimedJob, seq: i64, kind: &'static str, text: &str| DeltaRow {
            job_id: job.id,
            lease: job.lease_token,
            seq,
            step_id: "outline".into(),
            item_index: -1,
            kind,
            attempt: 1,
            run: 1,
            text: text.into(),
            meta: None,
        };
    let (j1, j2) = (&jobs[0], &jobs[1]);
    let batch = vec![
        row(j1, 1, "attempt", ""),
        row(j1, 2, "delta", "Hello, "),
        row(j2, 1, "attempt", ""),
        row(j1, 3, "delta", "world"),
    ];
    let first = queue.append_deltas(&batch).await.expect("append");
    assert_eq!((first.inserted, first.refused.len()), (4, 0));
    // A retried flush (same rows, same seqs) changes nothing.
    let again = queue.append_deltas(&batch).await.expect("append again");
    assert_eq!((again.inserted, again.refused.len()), (0, 0));
    // A stale lease: that job's rows are refused, the other job's land.
    let mut stale = row(j2, 2, "delta", "not mine");
    stale.lease = Uuid::new_v4();
    let mixed = queue
        .append_deltas(&[stale, row(j1, 4, "delta", "!")])
        .await
        .expect("append mixed");
    assert_eq!(mixed.inserted, 1);
    assert_eq!(mixed.refused, vec![j2.id]);
    let head = queue.delta_head(j1.id, j1.lease_token).await.expect("head");
    assert_eq!(head.seq, 4);
    assert_eq!(head.calls, vec![("outline".to_owned(), -1)]);
    let text = reassemble(&deltas(&app, &pro.token, &j1.id.to_string()).await);
    assert_eq!(
        text.get(&("outline".into(), -1)).map(String::as_str),
        Some("Hello, world!")
    );
    // Bounded even for the service.
    let too_many: Vec<DeltaRow> = (1..=5001)
        .map(|s| row(j1, 1000 + s, "delta", "x"))
        .collect();
    let e = queue
        .append_deltas(&too_many)
        .await
        .expect_err("too many rows");
    assert_eq!(e.code, "invalid_request");

    // A cancel is reported by the next flush.
    let (s, _) = app
        .post(
            &format!("/v1/generations/{}/cancel", j1.id),
            &pro.token,
            json!({}),
        )
        .await;
    assert!(s == 200 || s == 202);
    let flushed = queue
        .append_deltas(&[row(j1, 5, "delta", "?")])
        .await
        .expect("append after cancel");
    assert_eq!(flushed.cancel, vec![j1.id]);

    // job_complete stores a job's last rows with its success (sql/V13), and only its own.
    let e = queue
        .complete(
            j2.id,
            j2.lease_token,
            &json!({}),
            None,
            &[],
            &[row(j1, 6, "delta", "x")],
        )
        .await
        .expect_err("another job's rows");
    assert_eq!(e.code, "invalid_request");
    // The same refused by the function itself (a worker of V13 names each row's job).
    let service = app.stack.service_key.expose().to_owned();
    let (s, body) = app
        .stack
        .post(
            "rpc/job_complete",
            &service,
            json!({"job_id": j2.id, "lease_token": j2.lease_token, "result": {},
                   "deltas": [{"job_id": j1.id, "lease": j1.lease_token, "seq": 9, "step_id": "s",
                               "item_index": -1, "kind": "delta", "attempt": 1, "run": 1, "text": "x"}]}),
        )
        .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["details"], "invalid_request", "{body}");
    queue
        .complete(
            j2.id,
            j2.lease_token,
            &json!({"book": "two"}),
            None,
            &[],
            &[row(j2, 2, "delta", "last words")],
        )
        .await
        .expect("complete with deltas");
    let last = deltas(&app, &pro.token, &j2.id.to_string()).await;
    assert_eq!(last.len(), 2, "{last:?}");
    assert_eq!(last[1]["text"], "last words");

    // Retention: finished long enough ago -> deleted; recent or running -> kept.
    queue
        .cancelled(j1.id, j1.lease_token)
        .await
        .expect("cancelled");
    let kept = queue.compact_deltas(600, 500).await.expect("compact");
    assert_eq!(kept.deleted, 0, "{kept:?}");
    app.stack
        .pg
        .execute(
            "UPDATE generation_jobs SET finished_at = now() - interval '11 minutes' WHERE id = $1",
            &[&j1.id],
        )
        .await
        .expect("age the job");
    let pass = queue.compact_deltas(600, 500).await.expect("compact");
    assert_eq!((pass.jobs, pass.deleted), (1, 5), "{pass:?}");
    assert!(deltas(&app, &pro.token, &j1.id.to_string())
        .await
        .is_empty());
    assert_eq!(deltas(&app, &pro.token, &j2.id.to_string()).await.len(), 2);
    let _ = (a, b);
}

/// A worker killed mid-chapter: the next run writes a `restart` row for each call it
/// runs again, continues the seqs, and every call reassembles to its final output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_mid_chapter_leaves_a_restart_row_and_whole_text() {
    let mocks = Mocks::start().await;
    let app = spawn_app().await;
    let (_admin, pro, _) = book_setup(&app).await;
    mocks.anthropic.chunk_interval(Duration::from_millis(150));
    let mut first = crate::resilience::worker_process(&app, &mocks, "deltas-a");
    let id = start_book(&app, &pro, "crashes").await;
    // Kill once a chapter has streamed text and is not finished.
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(30), "no chapter text");
        let texts = reassemble(&deltas(&app, &pro.token, &id).await);
        if texts
            .iter()
            .any(|((s, _), t)| s == "chapters" && t.split_whitespace().count() >= 2)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.start_kill().expect("SIGKILL");
    let _ = first.wait().await;
    let before = deltas(&app, &pro.token, &id).await;
    let (_, job) = app.get(&format!("/v1/generations/{id}"), &pro.token).await;
    let done: Vec<(String, i64)> = job["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["status"] == "succeeded")
        .map(|s| {
            (
                s["step_id"].as_str().unwrap_or_default().to_owned(),
                s["item_index"].as_i64().unwrap_or(-2),
            )
        })
        .collect();
    let interrupted: Vec<(String, i64)> = reassemble(&before)
        .into_keys()
        .filter(|k| !done.contains(k))
        .collect();
    assert!(!interrupted.is_empty(), "a call was under way at the kill");

    let _second = crate::resilience::worker_process(&app, &mocks, "deltas-b");
    let job = wait_until(&app, &pro.token, &id, Duration::from_secs(60), finished).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let rows = deltas(&app, &pro.token, &id).await;
    assert_contiguous(&rows);
    assert_eq!(
        &rows[..before.len()],
        &before[..],
        "the first run's rows stay as they were"
    );
    for (step, item) in &interrupted {
        let restart = rows[before.len()..].iter().find(|r| {
            r["kind"] == "restart" && r["step_id"] == step.as_str() && r["item_index"] == *item
        });
        let restart = restart.unwrap_or_else(|| panic!("no restart row for {step}[{item}]"));
        assert_eq!(restart["run"], 2, "{restart}");
    }
    // Finished calls are not run, so not restarted.
    assert!(!rows
        .iter()
        .any(|r| r["kind"] == "restart" && r["step_id"] == "outline"));
    assert_reassembles_to_outputs(&job, &rows);
}

/// BOOKENGINE_STREAM_DELTAS=0: calls are made whole and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_streaming_off_books_are_written_whole_and_no_delta_is_stored() {
    let mocks = Mocks::start().await;
    let worker = bookengine::worker::WorkerConfig {
        stream_deltas: false,
        ..crate::kit::app::fast_worker()
    };
    let app = crate::kit::app::spawn_app_with(Some((worker, mocks.providers()))).await;
    let (_admin, pro, _) = book_setup(&app).await;
    let id = start_book(&app, &pro, "whole answers").await;
    let job = wait_until(&app, &pro.token, &id, Duration::from_secs(60), finished).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(deltas(&app, &pro.token, &id).await.is_empty());
    assert_eq!(
        mocks.gemini.calls()[0].path,
        "/v1beta/models/gemini-1.5-flash:generateContent"
    );
}

/// A record that waited in the worker (behind its text's flush) is dated from when its
/// call ended, by the worker's clock, not from when it was saved: steps stay in the
/// order they ran (sql/V13, V14). A time in the future is taken as now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_is_dated_from_when_its_call_ended_not_from_when_it_was_saved() {
    let app = spawn_app().await;
    let (_admin, pro, _) = book_setup(&app).await;
    let _ = start_book(&app, &pro, "dating").await;
    let queue = Queue::new(Rest::new(&app.stack.supabase_config()).expect("rest"));
    let job = crate::resilience::ready(queue.claim("test-worker", 1, 30).await.expect("claim"))
        .pop()
        .expect("a job");
    let ended = chrono::Utc::now() - chrono::Duration::seconds(5);
    let write = |step: &str, ended_at: Option<chrono::DateTime<chrono::Utc>>| {
        bookengine::jobs::StepRecord {
            step_id: step.into(),
            item_index: -1,
            status: bookengine::jobs::StepStatus::Succeeded,
            output: Some(json!("x")),
            usage: json!({}),
            latency_ms: Some(2000),
            attempt_log: json!([]),
            ended_at,
            ..Default::default()
        }
    };
    // The outline ended 5 s ago but is saved after the chapter that ended now.
    queue
        .save_step(
            job.id,
            job.lease_token,
            &write("chapters", Some(chrono::Utc::now())),
            None,
        )
        .await
        .expect("save chapters");
    let outline = queue
        .save_step(
            job.id,
            job.lease_token,
            &write("outline", Some(ended)),
            None,
        )
        .await
        .expect("save outline");
    let steps = queue.steps(job.id).await.expect("steps");
    let order: Vec<&str> = steps.iter().map(|s| s.step_id.as_str()).collect();
    assert_eq!(order, ["outline", "chapters"], "{steps:?}");
    // started = ended - latency: about 7 s before now, finished about 5 s before.
    let parse = |t: &Option<String>| {
        chrono::DateTime::parse_from_rfc3339(t.as_deref().expect("a time")).expect("rfc3339")
    };
    let span = parse(&outline.finished_at) - parse(&outline.started_at);
    assert_eq!(span.num_milliseconds(), 2000, "{outline:?}");
    let age = chrono::Utc::now().signed_duration_since(parse(&outline.finished_at));
    assert!(
        (4_000..30_000).contains(&age.num_milliseconds()),
        "finished {age:?} ago"
    );
    // A worker clock ahead of the database's: the end is taken as now, never later.
    let ahead = queue
        .save_step(
            job.id,
            job.lease_token,
            &write(
                "edit",
                Some(chrono::Utc::now() + chrono::Duration::seconds(60)),
            ),
            None,
        )
        .await
        .expect("save edit");
    let late = chrono::Utc::now().signed_duration_since(parse(&ahead.finished_at));
    assert!(
        late.num_milliseconds() >= 0,
        "finished in the future: {ahead:?}"
    );
}
