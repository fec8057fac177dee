//! One row of `generation_steps`: what a step (or one item of a fan-out) did. Read by
//! the user side (`generations`), the report and the worker resuming a job; written by
//! the worker (`queue::Queue::save_step`, `job_complete`), which builds it with the
//! constructors in `worker/record.rs`.

use super::{rows, StepStatus};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const STEP_COLUMNS: &str =
    "step_id,item_index,status,provider,model,fallback_used,attempts,output,error,\
usage,latency_ms,attempt_log,started_at,finished_at";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StepRecord {
    pub step_id: String,
    pub item_index: i32,
    pub status: StepStatus,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub fallback_used: bool,
    pub attempts: i32,
    pub output: Option<Value>,
    pub error: Option<String>,
    #[serde(default)]
    pub usage: Value,
    pub latency_ms: Option<i32>,
    #[serde(default)]
    pub attempt_log: Value,
    /// Set by the database (a write's are ignored).
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// When the call ended, by the worker's clock: sent with a write, never a column.
    /// Every call of a job is dated by the same clock, so the steps stay in the order
    /// they ran (sql/V14; V13 dated them from an age, and the time each write took
    /// shifted them by different amounts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Its JSON columns could not be decoded: `output` is missing, not empty.
    #[serde(skip)]
    pub unreadable: bool,
}

impl StepRecord {
    /// One row of a reply: whole when it can be read, else its scalar columns.
    pub fn from_row(row: &serde_json::value::RawValue) -> Option<StepRecord> {
        rows::decode(row, |h: StepHeader, e| {
            tracing::warn!(step = %h.step_id, error = %e, "a step's JSON columns could not be read");
            StepRecord {
                step_id: h.step_id,
                item_index: h.item_index,
                status: h.status,
                provider: h.provider,
                model: h.model,
                fallback_used: h.fallback_used,
                attempts: h.attempts,
                output: None,
                error: Some(h.error.unwrap_or_else(|| {
                    "this step's output is nested too deeply (or holds a number too large) to be shown"
                        .to_owned()
                })),
                usage: Value::Null,
                latency_ms: h.latency_ms,
                attempt_log: json!([]),
                started_at: h.started_at,
                finished_at: h.finished_at,
                ended_at: None,
                unreadable: true,
            }
        })
    }

    /// Decode a reply row by row (see [`rows`]).
    pub fn from_rows(rows: &[Box<serde_json::value::RawValue>]) -> Vec<StepRecord> {
        rows.iter()
            .filter_map(|r| StepRecord::from_row(r))
            .collect()
    }
}

/// The columns of a step row that can always be decoded (no JSON values).
#[derive(Deserialize)]
struct StepHeader {
    step_id: String,
    item_index: i32,
    status: StepStatus,
    provider: Option<String>,
    model: Option<String>,
    fallback_used: bool,
    attempts: i32,
    error: Option<String>,
    latency_ms: Option<i32>,
    started_at: Option<String>,
    finished_at: Option<String>,
}
