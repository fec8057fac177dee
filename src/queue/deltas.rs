//! The durable text streams' queue calls (sql/V11): append a batch of deltas of
//! many jobs, learn where a resumed run continues, and delete the deltas of jobs
//! finished longer ago than the retention.

use super::Queue;
use crate::error::Result;
use crate::rest::Caller;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// One row of `generation_deltas`, as `delta_append` takes it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeltaRow {
    pub job_id: Uuid,
    pub lease: Uuid,
    pub seq: i64,
    pub step_id: String,
    pub item_index: i32,
    pub kind: &'static str,
    pub attempt: u32,
    pub run: i32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Value>,
}

/// A row as `job_complete` takes it (sql/V15): the job and lease are the call's own,
/// so each row leaves them out.
#[derive(Debug, Serialize)]
pub(super) struct CompletionRow<'a> {
    seq: i64,
    step_id: &'a str,
    item_index: i32,
    kind: &'static str,
    attempt: u32,
    run: i32,
    #[serde(skip_serializing_if = "str::is_empty")]
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a Value>,
}

impl<'a> From<&'a DeltaRow> for CompletionRow<'a> {
    fn from(r: &'a DeltaRow) -> Self {
        Self {
            seq: r.seq,
            step_id: &r.step_id,
            item_index: r.item_index,
            kind: r.kind,
            attempt: r.attempt,
            run: r.run,
            text: &r.text,
            meta: r.meta.as_ref(),
        }
    }
}

/// What `delta_append` answers: the jobs whose lease no longer holds (their rows
/// were refused) and the jobs whose user asked to cancel.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AppendOutcome {
    #[serde(default)]
    pub inserted: u64,
    #[serde(default)]
    pub refused: Vec<Uuid>,
    #[serde(default)]
    pub cancel: Vec<Uuid>,
}

/// Where a run continues: the highest stored seq and the calls (step, item) that
/// already streamed something in an earlier run.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DeltaHead {
    pub seq: i64,
    #[serde(default)]
    pub calls: Vec<(String, i32)>,
}

/// What one retention pass did.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Compaction {
    #[serde(default)]
    pub jobs: u64,
    #[serde(default)]
    pub deleted: u64,
    #[serde(default)]
    pub busy: bool,
}

impl Queue {
    /// Append rows of any number of jobs in one call (a worker's whole flush).
    pub async fn append_deltas(&self, rows: &[DeltaRow]) -> Result<AppendOutcome> {
        let params = json!({ "p_rows": rows });
        let builder = self.rest.rpc(&Caller::Service, "delta_append", &params)?;
        self.rest.send(builder).await
    }

    /// Where this run of `job` continues its stream.
    pub async fn delta_head(&self, job: Uuid, lease: Uuid) -> Result<DeltaHead> {
        let params = json!({ "p_job_id": job, "p_lease": lease });
        let builder = self.rest.rpc(&Caller::Service, "delta_head", &params)?;
        self.rest.send(builder).await
    }

    /// Delete the deltas of up to `max_jobs` jobs that finished more than
    /// `retention_seconds` ago.
    pub async fn compact_deltas(
        &self,
        retention_seconds: u64,
        max_jobs: u32,
    ) -> Result<Compaction> {
        let params = json!({
            "p_retention_seconds": retention_seconds.min(i32::MAX as u64),
            "p_max_jobs": max_jobs,
        });
        let builder = self.rest.rpc(&Caller::Service, "delta_compact", &params)?;
        self.rest.send(builder).await
    }
}
