//! The claim loop: claim as many jobs as there are free slots, run each in its own
//! task, and sleep until woken (the webhook), the poll interval passes, or a job
//! ends. A claimed job that cannot be read fails alone.

use super::Worker;
use crate::jobs::JobStatus;
use crate::queue::Claim;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

impl Worker {
    /// Claim and run jobs until `shutdown`; then stop claiming and give running
    /// jobs `grace` to finish (the rest are resumed by another worker after their lease).
    pub async fn run(
        self: Arc<Self>,
        wake: Arc<Notify>,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        let mut running: JoinSet<()> = JoinSet::new();
        let poll = Duration::from_millis(self.config.poll_interval_ms.max(10));
        let mut failures = 0u32;
        let mut compaction: Option<tokio::task::JoinHandle<()>> = None;
        let mut next_compaction = tokio::time::Instant::now() + super::retention::COMPACTION_EVERY;
        tracing::info!(worker = %self.id, "worker started");
        loop {
            while running.try_join_next().is_some() {}
            // Housekeeping rides on the claim loop, one pass at a time, off its path.
            if tokio::time::Instant::now() >= next_compaction
                && compaction.as_ref().is_none_or(|h| h.is_finished())
            {
                next_compaction = tokio::time::Instant::now() + super::retention::COMPACTION_EVERY;
                compaction = Some(tokio::spawn(self.clone().compact_deltas()));
            }
            let free = self.config.concurrency.saturating_sub(running.len());
            let mut claimed_all = false;
            if free > 0 {
                match self
                    .queue
                    .claim(&self.id, free, self.config.lease_seconds)
                    .await
                {
                    Ok(jobs) => {
                        failures = 0;
                        claimed_all = jobs.len() == free;
                        for claim in jobs {
                            self.metrics
                                .jobs_claimed
                                .with_label_values(&[self.id.as_str()])
                                .inc();
                            match claim {
                                Claim::Ready(job) => {
                                    running.spawn(self.clone().execute(job));
                                }
                                Claim::Unreadable {
                                    id,
                                    lease_token,
                                    reason,
                                } => {
                                    running.spawn(self.clone().reject(id, lease_token, reason));
                                }
                            }
                        }
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(
                            code = %e.code,
                            detail = e.internal.as_deref().unwrap_or(""),
                            "claim failed"
                        );
                    }
                }
            }
            // Back off while PostgREST is down; otherwise claim again at once when
            // the batch was full (more may be waiting).
            let pause = if failures > 0 {
                poll.saturating_mul(failures.min(5))
            } else if claimed_all {
                Duration::ZERO
            } else {
                poll
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(pause) => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
        tracing::info!(worker = %self.id, jobs = running.len(), "worker stopping");
        let _ = tokio::time::timeout(grace, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        running.abort_all();
    }

    /// A claimed job this worker cannot read fails on its own, at once and for good
    /// (a retry would read the same row); the rest of its batch runs as usual.
    async fn reject(self: Arc<Self>, id: uuid::Uuid, lease: uuid::Uuid, reason: String) {
        let message = format!("the job cannot be run: {reason}");
        tracing::warn!(job_id = %id, %reason, "unreadable job failed");
        match self.queue.fail(id, lease, &message, false, 0).await {
            Ok(()) => self
                .metrics
                .jobs_finished
                .with_label_values(&[JobStatus::Failed.as_str()])
                .inc(),
            // Its lease expires; the release's poison guard bounds how often this repeats.
            Err(e) => {
                tracing::warn!(job_id = %id, code = %e.code, "could not fail the unreadable job")
            }
        }
    }
}
