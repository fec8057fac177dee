//! The shared reader of one (job, user): what it reads, when, and what it publishes.

use super::deltas::{self, DeltaEvent};
use super::{lock, not_found, Body, HubInner, Reader};
use crate::error::{Error, Kind, Result};
use crate::generations::JobDetail;
use crate::metrics::Metrics;
use crate::rest::{Caller, Rest};
use crate::secret::Secret;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use uuid::Uuid;

/// The light read: `None` when the job is not (or no longer) visible; otherwise the
/// job's state and each step's status (no outputs), whose bytes are the fingerprint of
/// what a viewer can see change. Through `generation_watch` (sql/V10), which shows an
/// admin any job, as the rest of the API does under V8's owner-only policies.
async fn read_light(rest: &Rest, token: &Secret, job: Uuid) -> Result<Option<bytes::Bytes>> {
    Metrics::global()
        .stream_reads
        .with_label_values(&["light"])
        .inc();
    let builder = rest.rpc(
        &Caller::User(token.clone()),
        "generation_watch",
        &json!({ "job_id": job }),
    )?;
    let body = rest.send_raw(builder).await?;
    // `null` when the caller cannot see the job. Only the top level is looked at, so
    // a deeply nested body cannot make this read fail (serde_json's recursion limit).
    let visible = !matches!(body.as_ref(), b"null" | b"" | b"[]");
    Ok(visible.then_some(body))
}

/// The full read, when the light one moved: the job and its steps with their outputs.
async fn read_full(rest: &Rest, token: &Secret, job: Uuid) -> Result<Option<JobDetail>> {
    Metrics::global()
        .stream_reads
        .with_label_values(&["full"])
        .inc();
    match crate::generations::get(rest, &Caller::User(token.clone()), job).await {
        Ok(detail) => Ok(Some(detail)),
        Err(e) if e.kind == Kind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Is this failure the end of the stream (the token or the job is gone) rather
/// than a dependency's hiccup worth waiting out?
fn is_final(e: &Error) -> bool {
    matches!(
        e.kind,
        Kind::Unauthenticated | Kind::Forbidden | Kind::NotFound
    )
}

/// A snapshot to publish after this round's text.
struct Snapshot {
    data: String,
    finished: bool,
}

/// The reader's loop: light read each interval (full read when it moved); while the
/// job runs, its new text each `stream_delta_poll_ms` or when woken; until the job
/// ends, disappears, or nobody watches.
pub(super) async fn run_reader(hub: Arc<HubInner>, key: (Uuid, Uuid), reader: Arc<Reader>) {
    let rest = hub.rest.clone();
    let poll = Duration::from_millis(hub.config.stream_poll_ms);
    let delta_poll = Duration::from_millis(hub.config.stream_delta_poll_ms);
    let mut next_light = Instant::now();
    let mut next_delta = Instant::now();
    let mut seen: Option<bytes::Bytes> = None;
    let mut failing: Option<crate::error::Code> = None;
    let mut running = false;
    // The last text row published (the first read starts at the beginning, so the
    // reader holds the job's text for the viewers who join later).
    let mut cursor: i64 = 0;
    loop {
        let polling = running && !hub.listening.load(Ordering::Relaxed);
        let until = if polling {
            next_light.min(next_delta)
        } else {
            next_light
        };
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = reader.wake.notified(), if running => {}
        }
        if retire_if_idle(&hub, key, &reader) {
            return;
        }
        let now = Instant::now();
        // Every viewer's token has expired: they are ending; read nothing meanwhile.
        let Some(token) = reader.token() else {
            next_light = now + poll;
            continue;
        };
        let mut snapshot = None;
        let mut outcome: Result<()> = Ok(());
        if now >= next_light {
            next_light = now + poll;
            let light = read_light(&rest, &token, reader.job).await;
            lock(&reader.shared).visible_at = matches!(light, Ok(Some(_))).then(Instant::now);
            outcome = match light {
                Ok(Some(fp)) if seen.as_ref() == Some(&fp) => Ok(()),
                Ok(Some(fp)) => match read_full(&rest, &token, reader.job).await {
                    Ok(Some(detail)) => {
                        seen = Some(fp);
                        running = detail.job.status == crate::jobs::JobStatus::Running;
                        match serde_json::to_string(&detail) {
                            Ok(data) => {
                                snapshot = Some(Snapshot {
                                    data,
                                    finished: detail.job.is_finished(),
                                });
                                Ok(())
                            }
                            Err(e) => Err(Error::internal(format!("serialising a job: {e}"))),
                        }
                    }
                    Ok(None) => Err(not_found(reader.job)),
                    Err(e) => Err(e),
                },
                Ok(None) => Err(not_found(reader.job)),
                Err(e) => Err(e),
            };
        }
        // Text: while the job runs, and once after it ended (the writer stores every
        // row before it completes the job), so `done` follows the last row.
        let finished = snapshot.as_ref().is_some_and(|s| s.finished);
        if outcome.is_ok() && (running || finished) {
            next_delta = now + delta_poll;
            let first = !lock(&reader.shared).history.ready;
            match read_deltas(&rest, &token, reader.job, &mut cursor).await {
                // The first read is published even when empty: it makes the history.
                Ok(batch) if !batch.events.is_empty() || first || finished => {
                    reader.send(Body::Deltas {
                        after: batch.after,
                        upto: batch.upto,
                        events: batch.events,
                    })
                }
                Ok(_) => {}
                Err(e) => outcome = Err(e),
            }
        }
        reader.rounds.send_modify(|n| *n += 1);
        match outcome {
            Ok(()) => {
                failing = None;
                if let Some(s) = snapshot {
                    let event = if s.finished { "done" } else { "progress" };
                    reader.publish(event, s.data, s.finished);
                    if s.finished {
                        break;
                    }
                }
            }
            Err(e) if is_final(&e) => {
                reader.publish_error(&e, true);
                break;
            }
            Err(e) => {
                // After an outage, publish the job again even if it did not change.
                seen = None;
                // Said once per outage, not every interval; the stream stays open.
                if failing != Some(e.code) {
                    tracing::warn!(job_id = %reader.job, code = %e.code,
                        detail = e.internal.as_deref().unwrap_or(""), "event stream read failed");
                    reader.publish_error(&e, false);
                    failing = Some(e.code);
                }
            }
        }
    }
    reader.rounds.send_modify(|n| *n += 1);
    let mut state = lock(&hub.state);
    if state
        .readers
        .get(&key)
        .is_some_and(|r| Arc::ptr_eq(r, &reader))
    {
        state.readers.remove(&key);
    }
}

struct Batch {
    after: i64,
    upto: i64,
    events: Vec<Arc<DeltaEvent>>,
}

/// The reader's read of new text: rows after `cursor`, which moves past them.
async fn read_deltas(rest: &Rest, token: &Secret, job: Uuid, cursor: &mut i64) -> Result<Batch> {
    let after = *cursor;
    let events = deltas::read(rest, token, job, after, None, "deltas").await?;
    let upto = events.last().map(|e| e.seq).unwrap_or(after);
    *cursor = upto;
    Ok(Batch {
        after,
        upto,
        events,
    })
}

/// Remove the reader when no viewer is left, atomically with joins (both under the hub lock).
fn retire_if_idle(hub: &HubInner, key: (Uuid, Uuid), reader: &Arc<Reader>) -> bool {
    let mut state = lock(&hub.state);
    if !lock(&reader.shared).tokens.is_empty() {
        return false;
    }
    if state
        .readers
        .get(&key)
        .is_some_and(|r| Arc::ptr_eq(r, reader))
    {
        state.readers.remove(&key);
    }
    true
}
