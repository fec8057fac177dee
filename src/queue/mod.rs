//! The job queue, as the service role sees it: claim, heartbeat, save a step,
//! complete, fail, acknowledge a cancel. Every write after the claim carries the
//! lease token; the database refuses a stale one with `lease_lost` (fencing).

mod deltas;

pub use deltas::{AppendOutcome, Compaction, DeltaHead, DeltaRow};

use crate::error::Result;
use crate::jobs::{EngineSnapshot, Progress, StepRecord, STEP_COLUMNS};
use crate::rest::{Caller, Rest};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use uuid::Uuid;

/// A claimed job: everything the worker needs, including the engine snapshot.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: Uuid,
    pub user_id: Uuid,
    pub engine_id: Option<Uuid>,
    pub engine_name: String,
    pub engine_snapshot: EngineSnapshot,
    pub input: Value,
    pub attempt: i32,
    pub max_attempts: i32,
    /// Earlier claims lost with their worker (not counted in `attempt`).
    pub lease_losses: i32,
    pub lease_token: Uuid,
    pub cancel_requested: bool,
}

/// One job of a claim: ready to run, or held by this worker but unreadable, to be
/// failed on its own (its lease makes the failure this worker's to record).
#[derive(Debug, Clone)]
pub enum Claim {
    Ready(ClaimedJob),
    Unreadable {
        id: Uuid,
        lease_token: Uuid,
        reason: String,
    },
}

/// The claim's columns. The two JSON documents come as text and are decoded one job
/// at a time: a job whose input cannot be read (nested past serde_json's 128 levels,
/// a number beyond a float) fails alone instead of failing the whole batch.
const CLAIM_COLUMNS: &str = "id,user_id,engine_id,engine_name,engine_snapshot::text,input::text,\
attempt,max_attempts,lease_losses,lease_token,cancel_requested";

#[derive(Deserialize)]
struct ClaimRow {
    id: Uuid,
    user_id: Uuid,
    engine_id: Option<Uuid>,
    engine_name: String,
    engine_snapshot: String,
    input: Option<String>,
    attempt: i32,
    max_attempts: i32,
    #[serde(default)]
    lease_losses: i32,
    lease_token: Uuid,
    cancel_requested: bool,
}

/// What a claim row holds whatever else is wrong with it.
#[derive(Deserialize)]
struct ClaimHeader {
    id: Uuid,
    lease_token: Uuid,
}

impl Claim {
    fn from_row(row: &RawValue) -> Option<Claim> {
        let parsed = serde_json::from_str::<ClaimRow>(row.get())
            .map_err(|e| e.to_string())
            .and_then(|r| {
                let snapshot = serde_json::from_str(&r.engine_snapshot)
                    .map_err(|e| format!("its engine snapshot cannot be read ({e})"))?;
                let input = match r.input.as_deref() {
                    Some(text) => serde_json::from_str(text)
                        .map_err(|e| format!("its input cannot be read ({e})"))?,
                    None => json!({}),
                };
                Ok(ClaimedJob {
                    id: r.id,
                    user_id: r.user_id,
                    engine_id: r.engine_id,
                    engine_name: r.engine_name,
                    engine_snapshot: snapshot,
                    input,
                    attempt: r.attempt,
                    max_attempts: r.max_attempts,
                    lease_losses: r.lease_losses,
                    lease_token: r.lease_token,
                    cancel_requested: r.cancel_requested,
                })
            });
        match parsed {
            Ok(job) => Some(Claim::Ready(job)),
            Err(reason) => match serde_json::from_str::<ClaimHeader>(row.get()) {
                Ok(h) => Some(Claim::Unreadable {
                    id: h.id,
                    lease_token: h.lease_token,
                    reason,
                }),
                Err(e) => {
                    // Not even the id: the lease expires and the release's poison guard
                    // ends it after a bounded number of claims.
                    tracing::error!(error = %e, %reason, "a claimed job could not be identified");
                    None
                }
            },
        }
    }
}

/// The step columns the worker resumes from; `output` as text for the same reason
/// as the claim's input (a model may answer up to serde_json's limit, and the row
/// around it would add levels).
const RESUME_COLUMNS: &str = "step_id,item_index,status,provider,model,fallback_used,attempts,\
output::text,error,usage,latency_ms,attempt_log,started_at,finished_at";

/// A recorded step as the worker reads it: the output apart, as text.
#[derive(Deserialize)]
struct ResumeRow {
    output: Option<String>,
    #[serde(flatten)]
    step: StepRecord,
}

impl From<ResumeRow> for StepRecord {
    fn from(row: ResumeRow) -> StepRecord {
        let (output, unreadable) = match row.output.as_deref().map(serde_json::from_str::<Value>) {
            None => (None, false),
            Some(Ok(v)) => (Some(v), false),
            Some(Err(_)) => (None, true),
        };
        StepRecord {
            output,
            unreadable,
            ..row.step
        }
    }
}

/// The job row fields a heartbeat needs.
#[derive(Debug, Clone, Deserialize)]
pub struct LeaseState {
    pub cancel_requested: bool,
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
    ) -> Result<Vec<Claim>> {
        let params =
            json!({"worker": worker, "max_jobs": max_jobs, "lease_seconds": lease_seconds});
        let builder = self
            .rest
            .rpc(&Caller::Service, "job_claim", &params)?
            .select(CLAIM_COLUMNS);
        let rows = self.rest.rows(builder).await?;
        Ok(rows.iter().filter_map(|r| Claim::from_row(r)).collect())
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

    /// The steps already recorded for a job (to resume without repeating work),
    /// decoded one at a time; a step whose output cannot be read is marked `unreadable`.
    pub async fn steps(&self, job: Uuid) -> Result<Vec<StepRecord>> {
        let builder = self
            .rest
            .table(&Caller::Service, "generation_steps")?
            .select(RESUME_COLUMNS)
            .eq("job_id", job.to_string())
            .order("started_at.asc,item_index.asc");
        let rows = self.rest.rows(builder).await?;
        Ok(rows
            .iter()
            .filter_map(|r| match serde_json::from_str::<ResumeRow>(r.get()) {
                Ok(s) => Some(StepRecord::from(s)),
                Err(e) => {
                    tracing::warn!(job_id = %job, error = %e, "a recorded step could not be read; left out");
                    None
                }
            })
            .collect())
    }

    pub async fn save_step(
        &self,
        job: Uuid,
        lease: Uuid,
        step: &StepRecord,
        progress: Option<&Progress>,
    ) -> Result<StepRecord> {
        let params =
            json!({"job_id": job, "lease_token": lease, "step": step, "progress": progress});
        let builder = self
            .rest
            .rpc(&Caller::Service, "step_save", &params)?
            .select(STEP_COLUMNS);
        let body = self.rest.send_raw(builder).await?;
        // The stored row (a finished step is never overwritten), read on its own terms.
        let row: Box<RawValue> = serde_json::from_slice(&body).map_err(|e| {
            crate::error::Error::internal(format!("unexpected PostgREST response: {e}"))
        })?;
        StepRecord::from_row(&row).ok_or_else(|| {
            crate::error::Error::internal("the saved step could not be read".to_owned())
        })
    }

    /// Finish the job, saving `steps` (records the worker held back) and `deltas` (its
    /// last streamed rows) in the same transaction: one round trip for the last step,
    /// the last text and the completion.
    pub async fn complete(
        &self,
        job: Uuid,
        lease: Uuid,
        result: &Value,
        progress: Option<&Progress>,
        steps: &[StepRecord],
        deltas: &[DeltaRow],
    ) -> Result<()> {
        let mut params = json!({
            "job_id": job, "lease_token": lease, "result": result,
            "progress": progress, "steps": steps,
        });
        // Named only when there are some, so a job that did not stream calls the same
        // function the schema before V13 had.
        if !deltas.is_empty() {
            // The rows go without their job and lease (sql/V15): they are this call's.
            if deltas.iter().any(|r| r.job_id != job || r.lease != lease) {
                return Err(crate::error::Error::invalid(
                    crate::error::codes::INVALID_REQUEST,
                    "every row must belong to the job being completed",
                ));
            }
            let rows: Vec<deltas::CompletionRow> = deltas.iter().map(Into::into).collect();
            params["deltas"] = json!(rows);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::StepStatus;

    fn resume_row(output: Value) -> StepRecord {
        let row = json!({
            "step_id": "outline", "item_index": -1, "status": "succeeded", "provider": "openai",
            "model": "m", "fallback_used": false, "attempts": 1, "output": output, "error": null,
            "usage": {"input_tokens": 3, "output_tokens": 4}, "latency_ms": 12,
            "attempt_log": [], "started_at": "2026-11-30T00:00:00+00:00", "finished_at": null
        });
        serde_json::from_value::<ResumeRow>(row)
            .expect("a resume row")
            .into()
    }

    #[test]
    fn a_resumed_steps_output_is_decoded_apart_from_its_row() {
        let s = resume_row(json!("{\"title\": \"A\"}"));
        assert_eq!(s.output, Some(json!({"title": "A"})));
        assert!(!s.unreadable);
        assert_eq!(s.status, StepStatus::Succeeded);
        assert_eq!(s.usage["output_tokens"], 4);
        assert_eq!(s.latency_ms, Some(12));
    }

    #[test]
    fn an_output_that_cannot_be_read_marks_the_step_unreadable() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let s = resume_row(json!(deep));
        assert_eq!(s.output, None);
        assert!(s.unreadable);
        assert_eq!(resume_row(Value::Null).output, None);
        assert!(!resume_row(Value::Null).unreadable);
    }

    #[test]
    fn a_write_sends_the_worker_clock_only_when_set() {
        let write = StepRecord {
            step_id: "outline".into(),
            item_index: crate::jobs::WHOLE_STEP,
            ..Default::default()
        };
        let sent = serde_json::to_value(&write).expect("json");
        assert!(sent.get("ended_at").is_none());
        assert!(sent.get("unreadable").is_none());
        let when = chrono::Utc::now();
        let sent = serde_json::to_value(StepRecord {
            ended_at: Some(when),
            ..write
        })
        .expect("json");
        assert_eq!(sent["ended_at"], json!(when));
    }
}
