//! Engine deployment: a flow document becomes an `ai_engines` row. Every call is
//! made with the caller's JWT; the specified admin policy decides who may write.
//! Each engine carries the service's check (`check.rs`), whoever wrote it, and a
//! history of versions (`versions.rs`) that a rollout (`rollout.rs`) draws on.

pub mod check;
pub mod rollout;
pub mod versions;

use crate::error::{codes, Error, Kind, Result};
use crate::flow::{parse_flow, ExecutionMode, Note, Tier};
use crate::rest::{Caller, Rest};
use check::EngineCheck;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// An `ai_engines` row as PostgREST returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Engine {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub flow_config: Value,
    pub models: Value,
    pub execution_mode: Option<ExecutionMode>,
    pub tier: Option<Tier>,
    pub active: Option<bool>,
    pub created_by: Option<Uuid>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    /// The service's check of this engine (`engine_checks`), when the caller can see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<EngineCheck>,
    /// Deploy and update only: how the React app's spellings in the document sent
    /// were read (the engine is stored in the canonical form).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<Note>,
}

/// The columns every engine read returns: the row and its check.
fn columns() -> String {
    format!("*,{}", check::EMBED)
}

/// What may change on a deployed engine. `flow` redeploys: a new flow document
/// replaces flow_config, models and execution_mode (running generations keep the
/// snapshot they started with).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnginePatch {
    pub name: Option<String>,
    #[serde(default, with = "double_option")]
    pub description: Option<Option<String>>,
    pub active: Option<bool>,
    #[serde(default, with = "double_option")]
    pub tier: Option<Option<Tier>>,
    pub flow: Option<Value>,
}

/// Distinguishes "absent" (no change) from `null` (clear the column).
mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
    where
        T: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// List filters.
#[derive(Debug, Default, Deserialize)]
pub struct EngineFilter {
    pub active: Option<bool>,
    pub tier: Option<Tier>,
}

fn not_found(id: Uuid) -> Error {
    Error::not_found(codes::ENGINE_NOT_FOUND, format!("engine {id} not found"))
}

fn admin_only(what: &str) -> impl FnOnce(Error) -> Error + '_ {
    move |e| {
        if matches!(e.kind, Kind::Forbidden) {
            Error::forbidden(format!("only admins can {what}"))
        } else {
            e
        }
    }
}

/// Deploy a flow document as a new engine owned by `created_by`.
#[tracing::instrument(skip_all, fields(created_by = %created_by))]
pub async fn deploy(rest: &Rest, caller: &Caller, created_by: Uuid, doc: &Value) -> Result<Engine> {
    let flow = parse_flow(doc)?;
    let row = flow.to_engine_row();
    let mut body = serde_json::to_value(&row)
        .map_err(|e| Error::internal(format!("serialising engine row: {e}")))?;
    body["created_by"] = json!(created_by);
    body["active"] = json!(true);
    let builder = rest
        .table(caller, "ai_engines")?
        .insert(body.to_string())
        .single();
    let engine: Engine = rest
        .send(builder)
        .await
        .map_err(admin_only("deploy engines"))?;
    let mut engine = checked(rest, caller, engine).await;
    engine.notes = flow.notes;
    Ok(engine)
}

/// The engine as the caller sees it after the service checked it. The flow has just
/// passed the same rules, so the check is quick; without the service key it is left
/// to the checker (`pending` until then).
async fn checked(rest: &Rest, caller: &Caller, engine: Engine) -> Engine {
    if let Err(e) = check::run_pending(rest, Some(engine.id)).await {
        tracing::debug!(code = %e.code, "engine left for the checker");
    }
    if let Err(e) = versions::run_pending(rest, Some(engine.id)).await {
        tracing::debug!(code = %e.code, "version left for the checker");
    }
    get(rest, caller, engine.id).await.unwrap_or(engine)
}

/// The engines the caller can see (admins: all), newest first.
pub async fn list(rest: &Rest, caller: &Caller, filter: &EngineFilter) -> Result<Vec<Engine>> {
    let mut builder = rest
        .table(caller, "ai_engines")?
        .select(columns())
        .order("created_at.desc");
    if let Some(active) = filter.active {
        builder = builder.eq("active", active.to_string());
    }
    if let Some(tier) = filter.tier {
        builder = builder.eq("tier", tier.as_str());
    }
    rest.send(builder).await
}

/// One engine; 404 whether it does not exist or the caller may not see it.
pub async fn get(rest: &Rest, caller: &Caller, id: Uuid) -> Result<Engine> {
    let builder = rest
        .table(caller, "ai_engines")?
        .select(columns())
        .eq("id", id.to_string());
    let rows: Vec<Engine> = rest.send(builder).await?;
    rows.into_iter().next().ok_or_else(|| not_found(id))
}

/// RLS turns a forbidden UPDATE or DELETE into "no rows": tell 403 from 404.
async fn explain_no_rows(rest: &Rest, caller: &Caller, id: Uuid, what: &str) -> Error {
    match get(rest, caller, id).await {
        Ok(_) => Error::forbidden(format!("only admins can {what}")),
        Err(e) => e,
    }
}

#[tracing::instrument(skip_all, fields(engine_id = %id))]
pub async fn update(rest: &Rest, caller: &Caller, id: Uuid, patch: EnginePatch) -> Result<Engine> {
    let mut body = Map::new();
    if let Some(name) = patch.name {
        let name = name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(
                Error::invalid(codes::INVALID_REQUEST, "name must be 1 to 200 characters")
                    .with_details(json!({"path": "name"})),
            );
        }
        body.insert("name".into(), json!(name));
    }
    if let Some(description) = patch.description {
        body.insert("description".into(), json!(description));
    }
    if let Some(active) = patch.active {
        body.insert("active".into(), json!(active));
    }
    if let Some(tier) = patch.tier {
        body.insert("tier".into(), json!(tier.map(|t| t.as_str())));
    }
    let mut notes = Vec::new();
    if let Some(doc) = patch.flow {
        let flow = parse_flow(&doc)?;
        let row = flow.to_engine_row();
        notes = flow.notes;
        body.insert("flow_config".into(), row.flow_config);
        body.insert("models".into(), row.models);
        body.insert("execution_mode".into(), json!(row.execution_mode));
        if let Some(tier) = row.tier {
            body.entry("tier").or_insert(json!(tier));
        }
    }
    if body.is_empty() {
        return Err(Error::invalid(
            codes::INVALID_REQUEST,
            "nothing to update: give name, description, active, tier or flow",
        ));
    }
    // Only these columns change what the service checks (sql/V7 engine_flow_hash).
    let rechecks = ["flow_config", "name", "tier", "execution_mode"]
        .iter()
        .any(|k| body.contains_key(*k));
    let builder = rest
        .table(caller, "ai_engines")?
        .eq("id", id.to_string())
        .update(Value::Object(body).to_string())
        .select(columns());
    let rows: Vec<Engine> = rest
        .send(builder)
        .await
        .map_err(admin_only("update engines"))?;
    match rows.into_iter().next() {
        Some(engine) if rechecks => {
            let mut engine = checked(rest, caller, engine).await;
            engine.notes = notes;
            Ok(engine)
        }
        Some(engine) => Ok(engine),
        None => Err(explain_no_rows(rest, caller, id, "update engines").await),
    }
}

/// Delete an engine; its assignments go with it (ON DELETE CASCADE), generations
/// keep their snapshot and lose only the link (ON DELETE SET NULL).
#[tracing::instrument(skip_all, fields(engine_id = %id))]
pub async fn delete(rest: &Rest, caller: &Caller, id: Uuid) -> Result<()> {
    let builder = rest
        .table(caller, "ai_engines")?
        .eq("id", id.to_string())
        .delete();
    let rows: Vec<Value> = rest
        .send(builder)
        .await
        .map_err(admin_only("delete engines"))?;
    if rows.is_empty() {
        return Err(explain_no_rows(rest, caller, id, "delete engines").await);
    }
    Ok(())
}
