//! Generation requests as the user sees them: request, list, show (with steps),
//! cancel. Every call carries the user's JWT: the database takes the engine
//! snapshot itself (`request_generation`), and shows each user only their jobs
//! (an admin every job) through `generation_list`/`generation_get`/
//! `generation_steps_of`, which test the caller explicitly (sql/V8 says why).

mod report;
pub mod watch;
pub use crate::jobs::{rows, JobStatus, Progress, StepRecord, StepStatus, STEP_COLUMNS};
pub use report::{run_report, RunReport, StepLine};

use crate::error::{codes, Error, Result};
use crate::rest::{Caller, Rest};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// The columns a user is shown (the engine snapshot and lease stay internal).
pub const JOB_COLUMNS: &str = "id,user_id,engine_id,engine_name,engine_version,input,status,progress,attempt,max_attempts,\
lease_losses,cancel_requested,error,errors,result,usage,scheduled_at,created_at,started_at,finished_at,updated_at";

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
    pub status: JobStatus,
    #[serde(default)]
    pub progress: Progress,
    pub attempt: i32,
    pub max_attempts: i32,
    /// Claims lost because a worker died (not counted in `attempt`).
    #[serde(default)]
    pub lease_losses: i32,
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
        self.status.is_finished()
    }

    /// One row of a reply: whole when it can be read, else its scalar columns.
    fn from_row(row: &serde_json::value::RawValue) -> Option<Job> {
        rows::decode(row, |h: JobHeader, e| {
            tracing::warn!(job_id = %h.id, error = %e, "a job's JSON columns could not be read");
            Job {
                id: h.id,
                user_id: h.user_id,
                engine_id: h.engine_id,
                engine_name: h.engine_name,
                engine_version: h.engine_version,
                input: Value::Null,
                status: h.status,
                progress: Progress::default(),
                attempt: h.attempt,
                max_attempts: h.max_attempts,
                lease_losses: h.lease_losses,
                cancel_requested: h.cancel_requested,
                error: Some(h.error.unwrap_or_else(|| UNREADABLE.to_owned())),
                errors: json!([]),
                result: None,
                usage: Value::Null,
                scheduled_at: h.scheduled_at,
                created_at: h.created_at,
                started_at: h.started_at,
                finished_at: h.finished_at,
                updated_at: h.updated_at,
            }
        })
    }
}

/// Shown in place of JSON columns the service could not decode.
const UNREADABLE: &str =
    "this job's data is nested too deeply (or holds a number too large) to be shown";

/// The columns of a job row that can always be decoded (no JSON values).
#[derive(Deserialize)]
struct JobHeader {
    id: Uuid,
    user_id: Uuid,
    engine_id: Option<Uuid>,
    engine_name: String,
    #[serde(default)]
    engine_version: Option<i32>,
    status: JobStatus,
    attempt: i32,
    max_attempts: i32,
    #[serde(default)]
    lease_losses: i32,
    cancel_requested: bool,
    error: Option<String>,
    scheduled_at: Option<String>,
    created_at: Option<String>,
    started_at: Option<String>,
    finished_at: Option<String>,
    updated_at: Option<String>,
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

/// Does any string or key hold U+0000? (The request body parser bounds the depth.)
fn holds_nul(v: &Value) -> bool {
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) if s.contains('\0') => return true,
            Value::Array(a) => stack.extend(a),
            Value::Object(m) => {
                if m.keys().any(|k| k.contains('\0')) {
                    return true;
                }
                stack.extend(m.values());
            }
            _ => {}
        }
    }
    false
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
    // Postgres's jsonb cannot store \u0000; say so instead of passing on its error.
    if holds_nul(&req.input) {
        return Err(Error::invalid(
            codes::INVALID_REQUEST,
            "input cannot contain the character \\u0000",
        )
        .with_details(json!({"path": "input"})));
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

/// The caller's jobs, newest first (every job for an admin). The database filters by
/// the caller explicitly, on the (user_id, created_at) index: one user's jobs never
/// cost another's scan. Rows are decoded one at a time: an unreadable job is shown
/// without its JSON columns instead of failing the whole list.
pub async fn list(
    rest: &Rest,
    caller: &Caller,
    limit: usize,
    status: Option<&str>,
) -> Result<Vec<Job>> {
    let params = json!({"max_rows": limit.clamp(1, 500), "only_status": status});
    let builder = rest
        .rpc(caller, "generation_list", &params)?
        .select(JOB_COLUMNS);
    let rows = rest.rows(builder).await?;
    Ok(rows.iter().filter_map(|r| Job::from_row(r)).collect())
}

pub async fn get_job(rest: &Rest, caller: &Caller, id: Uuid) -> Result<Job> {
    let builder = rest
        .rpc(caller, "generation_get", &json!({"job_id": id}))?
        .select(JOB_COLUMNS);
    let rows = rest.rows(builder).await?;
    rows.first()
        .and_then(|r| Job::from_row(r))
        .ok_or_else(|| not_found(id))
}

/// The steps of a job, in execution order. A person reads them through
/// `generation_steps_of` (their own job's, or any for an admin); the service role
/// (the worker resuming a job) reads the table.
pub async fn steps(rest: &Rest, caller: &Caller, id: Uuid) -> Result<Vec<StepRecord>> {
    let builder = match caller {
        Caller::Service => rest
            .table(caller, "generation_steps")?
            .select(STEP_COLUMNS)
            .eq("job_id", id.to_string())
            .order("started_at.asc,item_index.asc"),
        Caller::User(_) => rest
            .rpc(caller, "generation_steps_of", &json!({"job_id": id}))?
            .select(STEP_COLUMNS),
    };
    let rows = rest.rows(builder).await?;
    Ok(StepRecord::from_rows(&rows))
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
    let body = rest.send_raw(builder).await?;
    let row: Box<serde_json::value::RawValue> = serde_json::from_slice(&body)
        .map_err(|e| Error::internal(format!("unexpected PostgREST response: {e}")))?;
    Job::from_row(&row).ok_or_else(|| not_found(id))
}
