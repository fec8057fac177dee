//! The delta writer task: gathers every running job's rows, cuts a batch when the
//! oldest row is due (or enough bytes wait, or a barrier asks), sends one
//! `delta_append` at a time so commit order is seq order, and retries a failed batch
//! with the same rows and seqs.

use super::{
    DeltaFailure, DeltaSettings, JobState, Kind, Msg, Pending, FAILURES_BEFORE_GIVING_UP,
    MAX_BYTES_PER_CALL, MAX_ROWS_PER_CALL,
};
use crate::queue::{AppendOutcome, DeltaRow, Queue};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

/// A cut batch: its rows (seqs given) and, per job, how far it brings `durable`.
struct Batch {
    rows: Vec<DeltaRow>,
    marks: Vec<(Uuid, u64)>,
}

type Flight = Pin<Box<dyn Future<Output = crate::error::Result<AppendOutcome>> + Send>>;

pub(super) struct Writer {
    queue: Queue,
    settings: DeltaSettings,
    jobs: HashMap<Uuid, JobState>,
    /// When the oldest waiting row must be sent.
    due: Option<Instant>,
    pending_bytes: usize,
    /// The batch in flight (or waiting to be retried) and its call.
    batch: Option<Batch>,
    flight: Option<Flight>,
    retry_at: Option<Instant>,
    failures: u32,
}

impl Writer {
    pub(super) fn new(queue: Queue, settings: DeltaSettings) -> Self {
        Self {
            queue,
            settings,
            jobs: HashMap::new(),
            due: None,
            pending_bytes: 0,
            batch: None,
            flight: None,
            retry_at: None,
            failures: 0,
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let far = || Instant::now() + Duration::from_secs(3600);
        loop {
            let wake = match (&self.batch, self.retry_at, self.due) {
                (Some(_), Some(at), _) => at,
                (Some(_), None, _) => far(),
                (None, _, Some(due)) => due,
                (None, _, None) => far(),
            };
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                r = async {
                    match self.flight.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                }, if self.flight.is_some() => {
                    self.flight = None;
                    self.landed(r);
                }
                _ = tokio::time::sleep_until(wake), if self.flight.is_none() => {
                    self.retry_at = None;
                }
            }
            self.maybe_send();
        }
        // The worker is gone: one last try for what is waiting.
        self.due = Some(Instant::now());
        for _ in 0..2 {
            self.maybe_send();
            match self.flight.take() {
                Some(f) => {
                    let r = f.await;
                    self.landed(r);
                }
                None => break,
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Open {
                job,
                lease,
                run,
                next_seq,
                signals,
            } => {
                self.jobs.insert(
                    job,
                    JobState {
                        lease,
                        run,
                        next_seq: next_seq.max(1),
                        signals,
                        pending: Vec::new(),
                        pushed: 0,
                        durable: 0,
                        waiters: Vec::new(),
                        finishing: None,
                    },
                );
            }
            Msg::Row(call, kind) => {
                let Some(state) = self.jobs.get_mut(&call.job) else {
                    return;
                };
                let added = match &kind {
                    Kind::Delta { text, .. } => text.len(),
                    _ => 64,
                };
                state.push(call, kind);
                state.resolve();
                self.pending_bytes += added;
                if self.due.is_none() {
                    self.due = Some(Instant::now() + self.settings.flush);
                }
            }
            Msg::Barrier { job, done } => match self.jobs.get_mut(&job) {
                Some(state) => {
                    state.waiters.push((state.pushed, done));
                    state.resolve();
                    if !state.waiters.is_empty() {
                        self.due = Some(Instant::now());
                    }
                }
                // Not streamed (or already closed): nothing to wait for.
                None => {
                    let _ = done.send(Ok(()));
                }
            },
            Msg::Finish { job, done } => match self.jobs.get_mut(&job) {
                Some(state) => {
                    state.finishing = Some(done);
                    self.try_finish(job);
                }
                // Not streamed: nothing to carry.
                None => {
                    let _ = done.send(Ok(Vec::new()));
                }
            },
            Msg::Close(job) => {
                if let Some(mut state) = self.jobs.remove(&job) {
                    state.fail_waiters(&DeltaFailure {
                        lease_lost: false,
                        message: "the job's run ended".into(),
                    });
                }
            }
        }
    }

    /// Hand a finishing job's waiting rows over, unless a flush carrying earlier rows
    /// of it is in flight (it is called again when that lands) or there are too many
    /// rows to carry (they are flushed now, and the job finishes with none).
    fn try_finish(&mut self, job: Uuid) {
        let in_flight = self
            .batch
            .as_ref()
            .is_some_and(|b| b.marks.iter().any(|(j, _)| *j == job));
        let Some(state) = self.jobs.get_mut(&job) else {
            return;
        };
        if state.finishing.is_none() || in_flight {
            return;
        }
        let bytes: usize = state.pending.iter().map(|p| p.text.len() + 200).sum();
        if state.pending.len() > MAX_ROWS_PER_CALL || bytes > MAX_BYTES_PER_CALL {
            self.due = Some(Instant::now());
            return;
        }
        let Some(mut state) = self.jobs.remove(&job) else {
            return;
        };
        let pending = std::mem::take(&mut state.pending);
        let rows: Vec<DeltaRow> = pending.into_iter().map(|p| state.row(job, p)).collect();
        let done = state.finishing.take();
        state.fail_waiters(&DeltaFailure {
            lease_lost: false,
            message: "the job's run ended".into(),
        });
        if let Some(done) = done {
            let _ = done.send(Ok(rows));
        }
        self.recount_pending();
    }

    /// The text still waiting, over every job (after rows left the queue unflushed).
    fn recount_pending(&mut self) {
        self.pending_bytes = self
            .jobs
            .values()
            .flat_map(|s| s.pending.iter())
            .map(|p| p.text.len())
            .sum();
    }

    /// Start a flush when one is due (or enough bytes wait) and none is in flight.
    fn maybe_send(&mut self) {
        if self.flight.is_some() {
            return;
        }
        if self.batch.is_none() {
            let now = Instant::now();
            let due = self.due.is_some_and(|d| d <= now)
                || self.pending_bytes >= self.settings.flush_bytes;
            if !due {
                return;
            }
            let batch = self.cut();
            if batch.rows.is_empty() {
                self.due = None;
                self.pending_bytes = 0;
                // Nothing waits and nothing flies: every push is stored.
                for state in self.jobs.values_mut() {
                    state.durable = state.pushed;
                    state.resolve();
                }
                return;
            }
            self.batch = Some(batch);
        } else if self.retry_at.is_some() {
            return;
        }
        if let Some(batch) = &self.batch {
            let queue = self.queue.clone();
            let rows = batch.rows.clone();
            self.flight = Some(Box::pin(async move { queue.append_deltas(&rows).await }));
        }
    }

    /// Take the waiting rows of every job (a prefix of each, within the call's bounds)
    /// and give them their seqs.
    fn cut(&mut self) -> Batch {
        let mut rows = Vec::new();
        let mut marks = Vec::new();
        let mut bytes = 0usize;
        let mut left = false;
        for (job, state) in self.jobs.iter_mut() {
            if state.pending.is_empty() {
                continue;
            }
            let mut take = 0;
            for p in &state.pending {
                if rows.len() + take >= MAX_ROWS_PER_CALL
                    || (bytes > 0 && bytes + p.text.len() + 200 > MAX_BYTES_PER_CALL)
                {
                    break;
                }
                bytes += p.text.len() + 200;
                take += 1;
            }
            if take < state.pending.len() {
                left = true;
            }
            if take == 0 {
                continue;
            }
            let mut upto = state.durable;
            let taken: Vec<Pending> = state.pending.drain(..take).collect();
            for p in taken {
                upto = upto.max(p.upto);
                rows.push(state.row(*job, p));
            }
            marks.push((*job, upto));
        }
        if left {
            self.due = Some(Instant::now());
            self.recount_pending();
        } else {
            self.due = None;
            self.pending_bytes = 0;
        }
        Batch { rows, marks }
    }

    fn landed(&mut self, result: crate::error::Result<AppendOutcome>) {
        match result {
            Ok(outcome) => {
                self.failures = 0;
                self.retry_at = None;
                let Some(batch) = self.batch.take() else {
                    return;
                };
                for job in &outcome.refused {
                    if let Some(mut state) = self.jobs.remove(job) {
                        tracing::warn!(job_id = %job, "deltas refused: lease lost");
                        state.signals.lease_lost.store(true, Ordering::SeqCst);
                        state.signals.cancel.cancel();
                        state.fail_waiters(&DeltaFailure {
                            lease_lost: true,
                            message: "lease lost".into(),
                        });
                    }
                }
                for job in &outcome.cancel {
                    if let Some(state) = self.jobs.get(job) {
                        state.signals.cancelled.store(true, Ordering::SeqCst);
                        state.signals.cancel.cancel();
                    }
                }
                for (job, upto) in &batch.marks {
                    if let Some(state) = self.jobs.get_mut(job) {
                        state.durable = state.durable.max(*upto);
                        if state.pending.is_empty() {
                            // Pushes that added no row (empty deltas) are stored too.
                            state.durable = state.pushed;
                        }
                        state.resolve();
                    }
                }
                for (job, _) in &batch.marks {
                    self.try_finish(*job);
                }
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                let wait = Duration::from_millis(100u64 << self.failures.min(5));
                tracing::warn!(
                    code = %e.code,
                    failures = self.failures,
                    "delta flush failed; will retry"
                );
                self.retry_at = Some(Instant::now() + wait);
                if self.failures >= FAILURES_BEFORE_GIVING_UP {
                    let failure = DeltaFailure {
                        lease_lost: false,
                        message: format!("temporary failure ({}): {}", e.code, e.message),
                    };
                    for state in self.jobs.values_mut() {
                        state.fail_waiters(&failure);
                    }
                }
            }
        }
    }
}
