//! Running one claimed job: resume from the persisted steps, run the flow
//! (in order, or as a dependency graph with fan-out), record every call, and
//! finish the job. A heartbeat keeps the lease and notices cancellation.
//!
//! `graph.rs`: the order steps run in; `fan_out.rs`: a `for_each` step's items;
//! `call.rs`: one model call, from its rendered prompt to its record; `state.rs`:
//! what a run keeps while it goes.

use super::deltas::{self, DeltaFailure, JobSignals};
use super::output::assemble;
use super::writer::{WriteBehind, WriteFailure};
use super::Worker;
use crate::error::{codes, Error};
use crate::flow::{ExecutionMode, Flow};
use crate::jobs::{JobStatus, Progress, StepRecord, StepStatus};
use crate::queue::{ClaimedJob, DeltaRow};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod call;
mod fan_out;
mod graph;
mod state;

/// Fan-out items one step may produce.
const MAX_ITEMS: usize = 200;

/// Why a run stopped early.
#[derive(Debug)]
enum Stop {
    /// The flow cannot succeed (template error, every model failed): fail the job.
    Fatal(String),
    /// Infrastructure trouble (PostgREST down): retry the job later.
    Transient(String),
    /// Another worker holds the job now: touch nothing.
    LeaseLost,
    /// The user cancelled.
    Cancelled,
}

impl From<WriteFailure> for Stop {
    fn from(f: WriteFailure) -> Self {
        if f.lease_lost {
            Stop::LeaseLost
        } else {
            Stop::Transient(f.message)
        }
    }
}

impl From<DeltaFailure> for Stop {
    fn from(f: DeltaFailure) -> Self {
        if f.lease_lost {
            Stop::LeaseLost
        } else {
            Stop::Transient(f.message)
        }
    }
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        if e.code == codes::LEASE_LOST {
            Stop::LeaseLost
        } else {
            // The job's error is shown to its user: the public message only; detail goes to the log.
            tracing::warn!(
                code = %e.code,
                detail = e.internal.as_deref().unwrap_or(""),
                "infrastructure error"
            );
            Stop::Transient(format!("temporary failure ({}): {}", e.code, e.message))
        }
    }
}

/// What the running flow shares between its concurrent steps.
struct Run<'a> {
    worker: &'a Worker,
    job: &'a ClaimedJob,
    flow: &'a Flow,
    existing: HashMap<(String, i32), StepRecord>,
    outputs: Mutex<Map<String, Value>>,
    calls_total: AtomicU64,
    calls_done: AtomicU64,
    /// Records of the flow's last step, saved by `job_complete` in the same round trip.
    held: Mutex<Vec<StepRecord>>,
    /// Every other record, saved in order while the flow goes on.
    writes: WriteBehind,
    /// Provider calls are streamed into generation_deltas.
    streaming: bool,
    /// Calls an earlier run of this job streamed text for: each gets a `restart` row.
    restarts: HashSet<(String, i32)>,
}

/// A finished run: the book, the final progress, the records held for completion and
/// the streamed rows not flushed yet (both stored by `job_complete`).
type Finished = (Value, Progress, Vec<StepRecord>, Vec<DeltaRow>);

impl Worker {
    pub(super) async fn execute(self: Arc<Self>, job: ClaimedJob) {
        let span = tracing::info_span!("job", job_id = %job.id, attempt = job.attempt, engine = %job.engine_name);
        async move {
            let cancel = CancellationToken::new();
            let cancelled = Arc::new(AtomicBool::new(job.cancel_requested));
            let lease_lost = Arc::new(AtomicBool::new(false));
            let heartbeat = tokio::spawn(self.clone().heartbeat(
                job.id,
                job.lease_token,
                cancel.clone(),
                cancelled.clone(),
                lease_lost.clone(),
            ));
            if job.cancel_requested {
                cancel.cancel();
            }
            let signals = JobSignals {
                cancel: cancel.clone(),
                cancelled: cancelled.clone(),
                lease_lost: lease_lost.clone(),
            };
            let outcome = tokio::select! {
                r = self.run_flow(&job, signals) => r,
                _ = cancel.cancelled() => Err(if lease_lost.load(Ordering::SeqCst) { Stop::LeaseLost } else { Stop::Cancelled }),
            };
            heartbeat.abort();
            self.finish(&job, outcome).await;
            self.deltas.close(job.id);
        }
        .instrument(span)
        .await
    }

    async fn heartbeat(
        self: Arc<Self>,
        job: uuid::Uuid,
        lease: uuid::Uuid,
        cancel: CancellationToken,
        cancelled: Arc<AtomicBool>,
        lease_lost: Arc<AtomicBool>,
    ) {
        // Often enough to notice a cancel within seconds, and well inside the lease.
        let every =
            Duration::from_secs_f64((self.config.lease_seconds as f64 / 3.0).clamp(0.2, 2.0));
        loop {
            tokio::time::sleep(every).await;
            match self
                .queue
                .heartbeat(job, lease, self.config.lease_seconds)
                .await
            {
                Ok(state) if state.cancel_requested => {
                    cancelled.store(true, Ordering::SeqCst);
                    cancel.cancel();
                    return;
                }
                Ok(_) => {}
                Err(e) if e.code == codes::LEASE_LOST => {
                    lease_lost.store(true, Ordering::SeqCst);
                    cancel.cancel();
                    return;
                }
                Err(e) => tracing::warn!(code = %e.code, "heartbeat failed; will retry"),
            }
        }
    }

    async fn finish(&self, job: &ClaimedJob, outcome: Result<Finished, Stop>) {
        let m = &self.metrics;
        let result = match outcome {
            Ok((result, progress, held, deltas)) => {
                let r = self
                    .queue
                    .complete(
                        job.id,
                        job.lease_token,
                        &result,
                        Some(&progress),
                        &held,
                        &deltas,
                    )
                    .await;
                if r.is_ok() {
                    m.jobs_finished
                        .with_label_values(&[JobStatus::Succeeded.as_str()])
                        .inc();
                    tracing::info!("job succeeded");
                }
                r
            }
            Err(Stop::Cancelled) => {
                let r = self.queue.cancelled(job.id, job.lease_token).await;
                if r.is_ok() {
                    m.jobs_finished
                        .with_label_values(&[JobStatus::Cancelled.as_str()])
                        .inc();
                    tracing::info!("job cancelled");
                }
                r
            }
            Err(Stop::LeaseLost) => {
                tracing::warn!("lease lost: another worker owns this job now");
                Ok(())
            }
            Err(Stop::Fatal(reason)) => {
                tracing::warn!(%reason, "job failed");
                m.jobs_finished
                    .with_label_values(&[JobStatus::Failed.as_str()])
                    .inc();
                self.queue
                    .fail(job.id, job.lease_token, &reason, false, 0)
                    .await
            }
            Err(Stop::Transient(reason)) => {
                tracing::warn!(%reason, "job interrupted; will retry");
                let wait = 2u64.saturating_pow(job.attempt.clamp(0, 6) as u32);
                self.queue
                    .fail(job.id, job.lease_token, &reason, true, wait)
                    .await
            }
        };
        if let Err(e) = result {
            // The lease will expire and the job will be claimed again.
            tracing::warn!(code = %e.code, "could not record the job's outcome");
        }
    }

    async fn run_flow(&self, job: &ClaimedJob, signals: JobSignals) -> Result<Finished, Stop> {
        let snapshot = &job.engine_snapshot;
        let flow = Flow::from_engine(
            &job.engine_name,
            &snapshot.flow_config,
            snapshot.execution_mode.map(|m| m.as_str()),
            snapshot.tier.map(|t| t.as_str()),
        )
        .map_err(|e| Stop::Fatal(format!("the engine's flow is invalid: {}", e.message)))?;
        // A first claim has nothing recorded yet: skip the read. A job taken over from
        // a lost worker keeps its attempt number but has lease_losses.
        let streaming = self.config.stream_deltas;
        let (existing, head) = if job.attempt <= 1 && job.lease_losses == 0 {
            (HashMap::new(), Default::default())
        } else {
            let head = async {
                if streaming {
                    self.queue.delta_head(job.id, job.lease_token).await
                } else {
                    Ok(Default::default())
                }
            };
            let (steps, head) = tokio::join!(self.queue.steps(job.id), head);
            let steps = steps?
                .into_iter()
                .map(|s| ((s.step_id.clone(), s.item_index), s))
                .collect::<HashMap<_, _>>();
            (steps, head?)
        };
        let crate::queue::DeltaHead { seq, calls } = head;
        if streaming {
            // The claim number: V8 gives the attempt back on a lost lease, so the
            // attempt alone would repeat after a crash.
            let run = job.attempt.saturating_add(job.lease_losses);
            self.deltas
                .open(job.id, job.lease_token, run, seq.saturating_add(1), signals);
        }
        // A finished step whose record cannot be read back: running it again would bill
        // it twice and resume would never see it. Only rows written outside the worker.
        if let Some(s) = existing
            .values()
            .find(|s| s.unreadable && s.status == StepStatus::Succeeded)
        {
            return Err(Stop::Fatal(format!(
                "step {}: its recorded output cannot be read back",
                s.step_id
            )));
        }
        let run = Run {
            worker: self,
            job,
            flow: &flow,
            existing,
            outputs: Mutex::new(Map::new()),
            calls_total: AtomicU64::new(flow.steps.len() as u64),
            calls_done: AtomicU64::new(0),
            held: Mutex::new(Vec::new()),
            writes: WriteBehind::start(self.queue.clone(), job.id, job.lease_token),
            streaming,
            restarts: calls.into_iter().collect(),
        };
        let ran = match flow.execution_mode {
            ExecutionMode::Sequential => run.in_order().await,
            ExecutionMode::Parallel => run.graph().await,
        };
        if let Err(stop) = ran {
            // Let the records already made land first: job_fail sums the steps' tokens,
            // and a retry resumes from them.
            if let Err(f) = run.writes.finish().await {
                tracing::warn!(reason = %f.message, "step records not saved before stopping");
            }
            return Err(stop);
        }
        let order: Vec<String> = flow.steps.iter().map(|s| s.id.clone()).collect();
        let outputs = run.outputs.lock().map(|o| o.clone()).unwrap_or_default();
        let progress = run.progress(None);
        let held = run
            .held
            .lock()
            .map(|h| h.clone())
            .map_err(|_| Stop::Transient("the held step records were poisoned".into()))?;
        // Records the writer could not save go first, then the last step's.
        let mut records = run.writes.finish().await?;
        records.extend(held);
        // The streamed rows not stored yet go with them: job_complete stores the job's
        // last text, its last records and its success in one transaction.
        let last = deltas::last_rows(self.deltas.finish(job.id)).await?;
        Ok((
            assemble(&job.input, &order, &outputs),
            progress,
            records,
            last,
        ))
    }
}
