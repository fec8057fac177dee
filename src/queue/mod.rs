//! The job queue, as the service role sees it: claim, heartbeat, save a step,
//! complete, fail, acknowledge a cancel. Every write after the claim carries the
//! lease token; the database refuses a stale one with `lease_lost` (fencing).

use crate::error::Result;
use crate::generations::StepRecord;
use crate::rest::{Caller, Rest};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// A claimed job: everything the worker needs, including the engine snapshot.
#[derive(Debug, Clone, Deserialize)]
pub struct ClaimedJob {
    pub id: Uuid,
    pub user_id: Uuid,
    pub engine_id: Option<Uuid>,
    pub engine_name: String,
    pub engine_snapshot: Value,
    #[serde(default)]
    pub input: Value,
    pub attempt: i32,
    pub max_attempts: i32,
    pub lease_token: Uuid,
    pub cancel_requested: bool,
}

/// The job row fields a heartbeat needs.
#[derive(Debug, Clone, Deserialize)]
pub struct LeaseState {
    pub cancel_requested: bool,
}

/// What the worker records about one call (a step, or one fan-out item).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepWrite {
    pub step_id: String,
    pub item_index: i32,
    pub status: &'static str,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub fallback_used: bool,
    pub attempts: u32,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub usage: Value,
    pub latency_ms: Option<u64>,
    pub attempt_log: Value,
}

#[derive(Clone)]
pub struct Queue {
    rest: Rest,
}

impl Queue {
    pub fn new(rest: Rest) -> Self {
        Self { rest }
    }

    #[tracing::instrument(skip(self))]
    pub async fn claim(
        &self,
        worker: &str,
        max_jobs: usize,
        lease_seconds: u64,
    ) -> Result<Vec<ClaimedJob>> {
        let params =
            json!({"worker": worker, "max_jobs": max_jobs, "lease_seconds": lease_seconds});
        let builder = self.rest.rpc(&Caller::Service, "job_claim", &params)?;
        self.rest.send(builder).await
    }

    pub async fn heartbeat(
        &self,
        job: Uuid,
        lease: Uuid,
        lease_seconds: u64,
    ) -> Result<LeaseState> {
        let params = json!({"job_id": job, "lease_token": lease, "lease_seconds": lease_seconds});
        let builder = self
            .rest
            .rpc(&Caller::Service, "job_heartbeat", &params)?
            .select("cancel_requested");
        self.rest.send(builder).await
    }

    /// The steps already recorded for a job (to resume without repeating work).
    pub async fn steps(&self, job: Uuid) -> Result<Vec<StepRecord>> {
        crate::generations::steps(&self.rest, &Caller::Service, job).await
    }

    pub async fn save_step(
        &self,
        job: Uuid,
        lease: Uuid,
        step: &StepWrite,
        progress: Option<&Value>,
    ) -> Result<StepRecord> {
        let params =
            json!({"job_id": job, "lease_token": lease, "step": step, "progress": progress});
        let builder = self
            .rest
            .rpc(&Caller::Service, "step_save", &params)?
            .select(crate::generations::STEP_COLUMNS);
        self.rest.send(builder).await
    }

    /// Finish the job, saving `steps` (records the worker held back) in the same
    /// transaction: one round trip for the last step and the completion.
    pub async fn complete(
        &self,
        job: Uuid,
        lease: Uuid,
        result: &Value,
        progress: Option<&Value>,
        steps: &[StepWrite],
    ) -> Result<()> {
        let params = json!({
            "job_id": job, "lease_token": lease, "result": result,
            "progress": progress, "steps": steps,
        });
        let builder = self
            .rest
            .rpc(&Caller::Service, "job_complete", &params)?
            .select("id");
        self.rest.send_raw(builder).await.map(|_| ())
    }

    pub async fn fail(
        &self,
        job: Uuid,
        lease: Uuid,
        error: &str,
        retryable: bool,
        retry_in_seconds: u64,
    ) -> Result<()> {
        let params = json!({
            "job_id": job, "lease_token": lease, "error": error,
            "retryable": retryable, "retry_in_seconds": retry_in_seconds,
        });
        let builder = self
            .rest
            .rpc(&Caller::Service, "job_fail", &params)?
            .select("id");
        self.rest.send_raw(builder).await.map(|_| ())
    }

    pub async fn cancelled(&self, job: Uuid, lease: Uuid) -> Result<()> {
        let params = json!({"job_id": job, "lease_token": lease});
        let builder = self
            .rest
            .rpc(&Caller::Service, "job_cancelled", &params)?
            .select("id");
        self.rest.send_raw(builder).await.map(|_| ())
    }
}
