//! The worker's durable text streams: one background task per worker gathers the
//! stream events of all its running jobs and writes them to `generation_deltas`
//! (sql/V11) in batches, one `delta_append` call at a time (so commit order is seq
//! order), every `flush` or sooner once `flush_bytes` are waiting.
//!
//! Off the critical path: pushing an event never waits. The only waits are
//! [`Deltas::barrier`]s: the step writer waits for a call's deltas before saving that
//! call's record (a barrier asks for a flush at once: one round trip, not an
//! interval). At the end of a job the flow takes the rows not yet flushed
//! ([`Deltas::finish`]) and `job_complete` stores them in its own transaction
//! (sql/V13), so finishing a streamed job costs no extra round trip.
//!
//! Seq numbers are given when a batch is cut, so consecutive deltas of one call can be
//! merged into one row while they wait; a failed flush is retried with the same rows and
//! seqs (the insert is idempotent). A job whose lease no longer holds has its rows
//! refused: it is stopped. A job whose user asked to cancel is stopped at the next flush.
//!
//! Here: the handle the flow pushes to, and each job's waiting rows (`JobState`);
//! `writer.rs`: the task that cuts batches, sends them one at a time and retries.

mod writer;

use crate::providers::StreamEvent;
use crate::queue::{DeltaRow, Queue};
use serde_json::{json, Value};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Rows per `delta_append` call (the SQL refuses more than 5,000).
const MAX_ROWS_PER_CALL: usize = 2_000;
/// Text per call (the SQL refuses more than 4 MiB of JSON).
const MAX_BYTES_PER_CALL: usize = 1 << 20;
/// Merged deltas stop growing a row past this (and longer deltas are split).
const MAX_ROW_TEXT: usize = 64 * 1024;
/// Flushes failed in a row before the jobs waiting on a barrier are told.
const FAILURES_BEFORE_GIVING_UP: u32 = 5;

/// How the writer batches.
#[derive(Debug, Clone, Copy)]
pub(super) struct DeltaSettings {
    pub flush: Duration,
    pub flush_bytes: usize,
}

/// Why a barrier was not met.
#[derive(Debug, Clone)]
pub(super) struct DeltaFailure {
    pub lease_lost: bool,
    pub message: String,
}

/// How the writer stops a job: the same signals the heartbeat uses.
#[derive(Clone)]
pub(super) struct JobSignals {
    pub cancel: CancellationToken,
    pub cancelled: Arc<AtomicBool>,
    pub lease_lost: Arc<AtomicBool>,
}

/// One call of a job: whose events these are.
#[derive(Debug, Clone)]
pub(super) struct CallKey {
    pub job: Uuid,
    pub step_id: Arc<str>,
    pub item_index: i32,
}

enum Msg {
    Open {
        job: Uuid,
        lease: Uuid,
        run: i32,
        next_seq: i64,
        signals: JobSignals,
    },
    Row(CallKey, Kind),
    Barrier {
        job: Uuid,
        done: oneshot::Sender<Result<(), DeltaFailure>>,
    },
    Finish {
        job: Uuid,
        done: oneshot::Sender<Result<Vec<DeltaRow>, DeltaFailure>>,
    },
    Close(Uuid),
}

#[derive(Debug)]
enum Kind {
    Attempt { attempt: u32, meta: Value },
    Delta { attempt: u32, text: String },
    Discard { attempt: u32, reason: String },
    Restart,
}

/// A handle on the worker's delta writer.
#[derive(Clone)]
pub(super) struct Deltas {
    tx: mpsc::UnboundedSender<Msg>,
}

/// Resolves when the deltas pushed before it are stored.
pub(super) type Barrier = oneshot::Receiver<Result<(), DeltaFailure>>;

impl Deltas {
    pub fn start(queue: Queue, settings: DeltaSettings) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(writer::Writer::new(queue, settings).run(rx));
        Self { tx }
    }

    /// Start streaming `job` (this run of it), continuing after `next_seq - 1`.
    pub fn open(&self, job: Uuid, lease: Uuid, run: i32, next_seq: i64, signals: JobSignals) {
        let _ = self.tx.send(Msg::Open {
            job,
            lease,
            run,
            next_seq,
            signals,
        });
    }

    /// Forget `job` (its run ended); rows not yet stored are dropped.
    pub fn close(&self, job: Uuid) {
        let _ = self.tx.send(Msg::Close(job));
    }

    /// A provider's stream event for `call`.
    pub fn event(&self, call: &CallKey, event: StreamEvent) {
        let kind = match event {
            StreamEvent::Attempt {
                attempt,
                provider,
                model,
            } => Kind::Attempt {
                attempt,
                meta: json!({"provider": provider, "model": model, "attempt": attempt}),
            },
            StreamEvent::Delta { attempt, text } => Kind::Delta { attempt, text },
            StreamEvent::Discard { attempt, reason } => Kind::Discard { attempt, reason },
        };
        let _ = self.tx.send(Msg::Row(call.clone(), kind));
    }

    /// This run runs `call` again after an earlier run streamed text for it.
    pub fn restart(&self, call: &CallKey) {
        let _ = self.tx.send(Msg::Row(call.clone(), Kind::Restart));
    }

    /// The job's run is over: resolves with its rows not stored yet (seqs given), for
    /// `job_complete` to store, once any flush carrying earlier rows of the job has
    /// landed (so no row can commit before one with a lower seq). The job is then
    /// forgotten. Too many rows to carry are flushed the usual way first.
    pub fn finish(&self, job: Uuid) -> Finishing {
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Msg::Finish { done, .. })) =
            self.tx.send(Msg::Finish { job, done })
        {
            let _ = done.send(Err(writer_stopped()));
        }
        rx
    }

    /// Resolves once everything pushed for `job` so far is stored.
    pub fn barrier(&self, job: Uuid) -> Barrier {
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Msg::Barrier { done, .. })) =
            self.tx.send(Msg::Barrier { job, done })
        {
            let _ = done.send(Err(writer_stopped()));
        }
        rx
    }
}

/// What a caller gets when the writer task is gone.
fn writer_stopped() -> DeltaFailure {
    DeltaFailure {
        lease_lost: false,
        message: "the delta writer stopped".into(),
    }
}

/// Resolves with the rows `job_complete` is to store.
pub(super) type Finishing = oneshot::Receiver<Result<Vec<DeltaRow>, DeltaFailure>>;

/// Wait for a job's last rows; a writer that went away counts as a failure.
pub(super) async fn last_rows(finishing: Finishing) -> Result<Vec<DeltaRow>, DeltaFailure> {
    finishing.await.unwrap_or_else(|_| Err(writer_stopped()))
}

/// Wait for a barrier; a writer that went away counts as a failure.
pub(super) async fn wait(barrier: Barrier) -> Result<(), DeltaFailure> {
    barrier.await.unwrap_or_else(|_| Err(writer_stopped()))
}

/// A row waiting for a flush (its seq is given when the batch is cut).
struct Pending {
    step_id: Arc<str>,
    item_index: i32,
    kind: &'static str,
    attempt: u32,
    text: String,
    meta: Option<Value>,
    /// The job's push count once this row holds everything merged into it.
    upto: u64,
}

struct JobState {
    lease: Uuid,
    run: i32,
    next_seq: i64,
    signals: JobSignals,
    pending: Vec<Pending>,
    /// Events pushed, and how many of them are stored.
    pushed: u64,
    durable: u64,
    waiters: Vec<(u64, oneshot::Sender<Result<(), DeltaFailure>>)>,
    /// The run is over and waits for its last rows (see [`Deltas::finish`]).
    finishing: Option<oneshot::Sender<Result<Vec<DeltaRow>, DeltaFailure>>>,
}

impl JobState {
    fn push(&mut self, call: CallKey, kind: Kind) {
        self.pushed += 1;
        let upto = self.pushed;
        let (kind, attempt, text, meta) = match kind {
            Kind::Delta { attempt, text } => {
                if text.is_empty() {
                    self.durable_if_idle();
                    return;
                }
                // The latest row of the same call, if it is text of the same attempt or
                // that attempt's start: an `attempt` row carries the attempt's first text
                // (sql/V15), so a call answered within one flush is one row, not two.
                let last = self
                    .pending
                    .iter_mut()
                    .rev()
                    .take(16)
                    .find(|p| p.step_id == call.step_id && p.item_index == call.item_index);
                if let Some(p) = last {
                    if (p.kind == "delta" || p.kind == "attempt")
                        && p.attempt == attempt
                        && p.text.len() + text.len() <= MAX_ROW_TEXT
                    {
                        p.text.push_str(&text);
                        p.upto = upto;
                        return;
                    }
                }
                for piece in split(&text, MAX_ROW_TEXT) {
                    self.pending.push(Pending {
                        step_id: call.step_id.clone(),
                        item_index: call.item_index,
                        kind: "delta",
                        attempt,
                        text: piece.to_owned(),
                        meta: None,
                        upto,
                    });
                }
                return;
            }
            Kind::Attempt { attempt, meta } => ("attempt", attempt, String::new(), Some(meta)),
            Kind::Discard { attempt, reason } => (
                "discard",
                attempt,
                String::new(),
                Some(json!({ "reason": reason })),
            ),
            Kind::Restart => ("restart", 0, String::new(), None),
        };
        self.pending.push(Pending {
            step_id: call.step_id,
            item_index: call.item_index,
            kind,
            attempt,
            text,
            meta,
            upto,
        });
    }

    /// A push that adds no row is stored as soon as everything before it is.
    fn durable_if_idle(&mut self) {
        if self.pending.is_empty() && self.durable + 1 == self.pushed {
            self.durable = self.pushed;
        }
    }

    fn resolve(&mut self) {
        let durable = self.durable;
        let (met, waiting): (Vec<_>, Vec<_>) =
            self.waiters.drain(..).partition(|(at, _)| *at <= durable);
        self.waiters = waiting;
        for (_, done) in met {
            let _ = done.send(Ok(()));
        }
    }

    fn fail_waiters(&mut self, failure: &DeltaFailure) {
        for (_, done) in self.waiters.drain(..) {
            let _ = done.send(Err(failure.clone()));
        }
        if let Some(done) = self.finishing.take() {
            let _ = done.send(Err(failure.clone()));
        }
    }

    /// A waiting row of `job` as stored, with the job's next seq.
    fn row(&mut self, job: Uuid, p: Pending) -> DeltaRow {
        let row = DeltaRow {
            job_id: job,
            lease: self.lease,
            seq: self.next_seq,
            step_id: p.step_id.to_string(),
            item_index: p.item_index,
            kind: p.kind,
            attempt: p.attempt,
            run: self.run,
            text: p.text,
            meta: p.meta,
        };
        self.next_seq += 1;
        row
    }
}

/// `text` in pieces of at most `max` bytes, cut at character boundaries.
fn split(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        out.push(head);
        rest = tail;
    }
    out.push(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> JobState {
        JobState {
            lease: Uuid::nil(),
            run: 1,
            next_seq: 1,
            signals: JobSignals {
                cancel: CancellationToken::new(),
                cancelled: Arc::default(),
                lease_lost: Arc::default(),
            },
            pending: Vec::new(),
            pushed: 0,
            durable: 0,
            waiters: Vec::new(),
            finishing: None,
        }
    }

    fn call(step: &str, item: i32) -> CallKey {
        CallKey {
            job: Uuid::nil(),
            step_id: step.into(),
            item_index: item,
        }
    }

    #[test]
    fn deltas_of_one_attempt_merge_and_other_kinds_do_not() {
        let mut s = state();
        let a = call("chapters", 0);
        let b = call("chapters", 1);
        let delta = |attempt, t: &str| Kind::Delta {
            attempt,
            text: t.into(),
        };
        s.push(
            a.clone(),
            Kind::Attempt {
                attempt: 1,
                meta: json!({}),
            },
        );
        s.push(a.clone(), delta(1, "Once "));
        s.push(b.clone(), delta(1, "Elsewhere"));
        s.push(a.clone(), delta(1, "upon"));
        s.push(
            a.clone(),
            Kind::Discard {
                attempt: 1,
                reason: "cut".into(),
            },
        );
        s.push(
            a.clone(),
            Kind::Attempt {
                attempt: 2,
                meta: json!({}),
            },
        );
        s.push(a.clone(), delta(2, "Again"));
        s.push(b.clone(), delta(2, "Not b's attempt 1"));
        let rows: Vec<(&str, i32, &str)> = s
            .pending
            .iter()
            .map(|p| (p.kind, p.item_index, p.text.as_str()))
            .collect();
        // The text that comes before the attempt row is flushed rides on it (sql/V15).
        assert_eq!(
            rows,
            vec![
                ("attempt", 0, "Once upon"),
                ("delta", 1, "Elsewhere"),
                ("discard", 0, ""),
                ("attempt", 0, "Again"),
                ("delta", 1, "Not b's attempt 1"),
            ]
        );
        assert_eq!(s.pending[0].upto, 4, "the merged row covers the later push");
    }

    #[test]
    fn long_text_is_split_at_character_boundaries() {
        let text = "é".repeat(10);
        let pieces = split(&text, 5);
        assert!(pieces.iter().all(|p| p.len() <= 5));
        assert_eq!(pieces.concat(), text);
    }
}
