//! Generation requests as the user sees them: request, list, show (with steps),
//! cancel. Every call carries the user's JWT: the database takes the engine
//! snapshot itself (`request_generation`), and RLS shows each user only their jobs.

mod report;
pub use report::{run_report, RunReport, StepLine};

use crate::error::{codes, Error, Result};
use crate::rest::{Caller, Rest};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// The columns a user is shown (the engine snapshot and lease stay internal).
pub const JOB_COLUMNS: &str = "id,user_id,engine_id,engine_name,engine_version,input,status,progress,attempt,max_attempts,\
cancel_requested,error,errors,result,usage,scheduled_at,created_at,started_at,finished_at,updated_at";

pub const STEP_COLUMNS: &str =
    "step_id,item_index,status,provider,model,fallback_used,attempts,output,error,\
usage,latency_ms,attempt_log,started_at,finished_at";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: Uuid,
    pub user_id: Uuid,
    pub engine_id: Option<Uuid>,
    pub engine_name: String,
    /// The engine version the job runs (its snapshot's), sql/V9.
    #[serde(default)]
    pub engine_version: Option<i32>,
    #[serde(default)]
    pub input: Value,
    pub status: String,
    #[serde(default)]
    pub progress: Value,
    pub attempt: i32,
    pub max_attempts: i32,
    pub cancel_requested: bool,
    pub error: Option<String>,
    #[serde(default)]
    pub errors: Value,
    pub result: Option<Value>,
    #[serde(default)]
    pub usage: Value,
    pub scheduled_at: Option<String>,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub updated_at: Option<String>,
}

impl Job {
    pub fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed" | "cancelled")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub step_id: String,
    pub item_index: i32,
    pub status: String,
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
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// A job with its steps, in execution order.
#[derive(Debug, Clone, Serialize)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: Job,
    pub steps: Vec<StepRecord>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationRequest {
    /// What the flow's templates see as `input` (e.g. topic, chapters, audience).
    #[serde(default = "empty_object")]
    pub input: Value,
    /// A specific engine; by default the one `resolve_engine` picks.
    #[serde(default)]
    pub engine_id: Option<Uuid>,
}

fn empty_object() -> Value {
    json!({})
}

fn not_found(id: Uuid) -> Error {
    Error::not_found(
        codes::GENERATION_NOT_FOUND,
        format!("generation {id} not found"),
    )
}

/// Queue a generation for the caller. The database resolves and snapshots the engine.
#[tracing::instrument(skip_all)]
pub async fn request(rest: &Rest, caller: &Caller, req: &GenerationRequest) -> Result<Job> {
    if !req.input.is_object() {
        return Err(
            Error::invalid(codes::INVALID_REQUEST, "input must be a JSON object")
                .with_details(json!({"path": "input"})),
        );
    }
    let builder = rest
        .rpc(
            caller,
            "request_generation",
            &json!({"input": req.input, "engine_id": req.engine_id}),
        )?
        .select(JOB_COLUMNS);
    rest.send(builder).await
}

pub async fn list(
    rest: &Rest,
    caller: &Caller,
    limit: usize,
    status: Option<&str>,
) -> Result<Vec<Job>> {
    let mut builder = rest
        .table(caller, "generation_jobs")?
        .select(JOB_COLUMNS)
        .order("created_at.desc")
        .limit(limit.clamp(1, 500));
    if let Some(s) = status {
        builder = builder.eq("status", s);
    }
    rest.send(builder).await
}

pub async fn get_job(rest: &Rest, caller: &Caller, id: Uuid) -> Result<Job> {
    let builder = rest
        .table(caller, "generation_jobs")?
        .select(JOB_COLUMNS)
        .eq("id", id.to_string());
    let rows: Vec<Job> = rest.send(builder).await?;
    rows.into_iter().next().ok_or_else(|| not_found(id))
}

pub async fn steps(rest: &Rest, caller: &Caller, id: Uuid) -> Result<Vec<StepRecord>> {
    let builder = rest
        .table(caller, "generation_steps")?
        .select(STEP_COLUMNS)
        .eq("job_id", id.to_string())
        .order("started_at.asc,item_index.asc");
    rest.send(builder).await
}

pub async fn get(rest: &Rest, caller: &Caller, id: Uuid) -> Result<JobDetail> {
    let job = get_job(rest, caller, id).await?;
    let steps = steps(rest, caller, id).await?;
    Ok(JobDetail { job, steps })
}

/// Cancel: a queued job ends at once; a running one stops within seconds.
#[tracing::instrument(skip_all, fields(job_id = %id))]
pub async fn cancel(rest: &Rest, caller: &Caller, id: Uuid) -> Result<Job> {
    let builder = rest
        .rpc(caller, "cancel_generation", &json!({"job_id": id}))?
        .select(JOB_COLUMNS);
    rest.send(builder).await
}
