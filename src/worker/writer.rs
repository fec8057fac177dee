//! Step records written behind the flow, in the order they were made.
//!
//! A finished call's record goes to one background task that saves records one at a
//! time, in order, while the flow moves on to its next calls: a step's persistence is
//! off the critical path. Order is what keeps resume sound: a step's record is sent
//! after the records of the steps it read from, so it can never be saved without them
//! (a crash leaves a prefix, and resume never reuses an output built on an upstream
//! output it will make again).
//!
//! After a failed save nothing more is attempted (that would break the order): the
//! rest are handed back to be saved with the job's completion, under its lease, and
//! the flow stops starting new calls ([`WriteBehind::check`]).

use super::deltas::{self, Barrier};
use crate::error::codes;
use crate::jobs::{Progress, StepRecord};
use crate::queue::Queue;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Why the writer stopped saving.
#[derive(Debug, Clone)]
pub(super) struct WriteFailure {
    /// Another worker holds the job now.
    pub lease_lost: bool,
    pub message: String,
}

pub(super) struct WriteBehind {
    tx: mpsc::UnboundedSender<(StepRecord, Progress, Option<Barrier>)>,
    failed: Arc<Mutex<Option<WriteFailure>>>,
    task: JoinHandle<Vec<StepRecord>>,
}

impl WriteBehind {
    pub fn start(queue: Queue, job: Uuid, lease: Uuid) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(StepRecord, Progress, Option<Barrier>)>();
        let failed: Arc<Mutex<Option<WriteFailure>>> = Arc::default();
        let failure = failed.clone();
        let task = tokio::spawn(async move {
            let mut unsaved = Vec::new();
            while let Some((write, progress, barrier)) = rx.recv().await {
                if !unsaved.is_empty() {
                    unsaved.push(write);
                    continue;
                }
                // The call's streamed text is stored before its record (sql/V11's rule).
                if let Some(barrier) = barrier {
                    if let Err(f) = deltas::wait(barrier).await {
                        tracing::warn!(step = %write.step_id, item = write.item_index, reason = %f.message, "deltas not stored; the rest wait for the completion");
                        if let Ok(mut slot) = failure.lock() {
                            slot.get_or_insert(WriteFailure {
                                lease_lost: f.lease_lost,
                                message: f.message,
                            });
                        }
                        unsaved.push(write);
                        continue;
                    }
                }
                if let Err(e) = queue.save_step(job, lease, &write, Some(&progress)).await {
                    tracing::warn!(code = %e.code, step = %write.step_id, item = write.item_index, "step write failed; the rest wait for the completion");
                    let f = WriteFailure {
                        lease_lost: e.code == codes::LEASE_LOST,
                        message: format!("temporary failure ({}): {}", e.code, e.message),
                    };
                    if let Ok(mut slot) = failure.lock() {
                        slot.get_or_insert(f);
                    }
                    unsaved.push(write);
                }
            }
            unsaved
        });
        Self { tx, failed, task }
    }

    /// Queue a record (and the job's progress at that point) for saving, once
    /// `barrier` (the call's streamed text stored) is met.
    pub fn send(&self, write: StepRecord, progress: Progress, barrier: Option<Barrier>) {
        if let Err(mpsc::error::SendError((write, _, _))) = self.tx.send((write, progress, barrier))
        {
            // The writer task is gone (it panicked); `finish` reports that.
            tracing::warn!(step = %write.step_id, "step write after the writer stopped");
        }
    }

    /// `Err` once a save has failed: callers stop starting new provider calls.
    pub fn check(&self) -> Result<(), WriteFailure> {
        match self.failed.lock().map(|f| f.clone()) {
            Ok(None) => Ok(()),
            Ok(Some(f)) => Err(f),
            Err(_) => Err(WriteFailure {
                lease_lost: false,
                message: "the step writer's state was poisoned".into(),
            }),
        }
    }

    /// Wait for every queued record; returns the ones not saved (to be saved with the
    /// completion) or the failure that makes completing pointless (lease lost).
    pub async fn finish(self) -> Result<Vec<StepRecord>, WriteFailure> {
        let Self { tx, failed, task } = self;
        drop(tx);
        let unsaved = task.await.map_err(|e| WriteFailure {
            lease_lost: false,
            message: format!("the step writer stopped: {e}"),
        })?;
        let failure = failed.lock().ok().and_then(|f| f.clone());
        match failure {
            Some(f) if f.lease_lost => Err(f),
            _ => Ok(unsaved),
        }
    }
}
