//! Deltas past their retention: every worker runs a pass now and then, one at a
//! time, off the claim loop's path.

use super::Worker;
use std::sync::Arc;
use std::time::Duration;

/// How often each worker deletes the deltas of jobs past their retention.
pub(super) const COMPACTION_EVERY: Duration = Duration::from_secs(30);

impl Worker {
    /// One retention pass (sql/V11 delta_compact): the deltas of jobs that finished
    /// longer ago than the retention. Idle when another worker's pass is running.
    pub(super) async fn compact_deltas(self: Arc<Self>) {
        match self
            .queue
            .compact_deltas(self.config.delta_retention_seconds, 500)
            .await
        {
            Ok(c) if c.jobs > 0 => {
                tracing::info!(
                    jobs = c.jobs,
                    rows = c.deleted,
                    "deltas past retention deleted"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(code = %e.code, "delta retention pass failed"),
        }
    }
}
