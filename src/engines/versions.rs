//! An engine's history: immutable versions, the step-level diff between two of them,
//! and rollback. The versions are written by a trigger on `ai_engines` (sql/V9), so a
//! change made through supabase-js is recorded like one made here; this module only
//! reads them and calls the SQL functions that act on them, with the caller's JWT
//! (the functions refuse anyone but an admin).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::check::{self, CheckState};
use super::rollout::{self, Release};
use crate::error::{codes, Error, Result};
use crate::flow::{parse_flow, Note};
use crate::rest::{Caller, Rest};

/// One version as `engine_versions` holds it (`flow_config` and `models` only when
/// one version is asked for).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineVersion {
    pub engine_id: Uuid,
    pub version: i32,
    pub origin: VersionOrigin,
    pub restored_from: Option<i32>,
    pub note: Option<String>,
    pub created_by: Option<Uuid>,
    pub created_at: Option<String>,
    pub execution_mode: Option<crate::flow::ExecutionMode>,
    /// The service's check of this version.
    pub check_state: CheckState,
    #[serde(default)]
    pub check_issues: Value,
    pub checked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_config: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Value>,
    /// How many steps the flow has (in the history, where the flow itself is left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// The version ai_engines holds.
    #[serde(default)]
    pub current: bool,
    /// The candidate of the running rollout.
    #[serde(default)]
    pub candidate: bool,
    /// Jobs that ran this version and how they went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<VersionStats>,
    /// Proposals only: how the React app's spellings in the document sent were read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<Note>,
}

/// How a version came to be (the `origin` column's CHECK values, sql/V9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionOrigin {
    Deploy,
    Update,
    Rollback,
    /// A rollout candidate.
    Proposal,
    /// Recorded for an engine that existed before versions (sql/V9).
    Migration,
}

impl VersionOrigin {
    pub const ALL: [VersionOrigin; 5] = [
        VersionOrigin::Deploy,
        VersionOrigin::Update,
        VersionOrigin::Rollback,
        VersionOrigin::Proposal,
        VersionOrigin::Migration,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VersionOrigin::Deploy => "deploy",
            VersionOrigin::Update => "update",
            VersionOrigin::Rollback => "rollback",
            VersionOrigin::Proposal => "proposal",
            VersionOrigin::Migration => "migration",
        }
    }
}

impl std::fmt::Display for VersionOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Numbers per version (`engine_version_stats`): shares are of finished jobs, wall
/// time of succeeded ones, tokens (input + output) per finished job.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VersionStats {
    pub version: i32,
    pub jobs: i64,
    pub finished: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub succeeded_share: Option<f64>,
    pub failed_share: Option<f64>,
    pub median_wall_ms: Option<f64>,
    pub p95_wall_ms: Option<f64>,
    pub tokens_per_job: Option<f64>,
}

/// `GET /v1/engines/{id}/versions`: newest first, with the release state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct History {
    pub engine_id: Uuid,
    pub current_version: i32,
    pub rollout: Option<rollout::Rollout>,
    pub versions: Vec<EngineVersion>,
}

/// Everything but the flow itself (and its step count, computed in the query).
const SUMMARY: &str = "engine_id,version,origin,restored_from,note,created_by,created_at,\
execution_mode,check_state,check_issues,checked_at,steps:flow_config->steps";

fn engine_not_found(id: Uuid) -> Error {
    Error::not_found(codes::ENGINE_NOT_FOUND, format!("engine {id} not found"))
}

/// Per-version numbers of one engine; refuses non-admins (`permission_denied`).
pub async fn stats(rest: &Rest, caller: &Caller, engine: Uuid) -> Result<Vec<VersionStats>> {
    let builder = rest.rpc(
        caller,
        "engine_version_stats",
        &json!({"engine_id": engine}),
    )?;
    rest.send(builder).await
}

/// The history of an engine: every version, its numbers, which is current, the rollout.
pub async fn list(rest: &Rest, caller: &Caller, engine: Uuid) -> Result<History> {
    // First: it says permission_denied to a non-admin, whom RLS would show nothing.
    let numbers = stats(rest, caller, engine).await?;
    let release = rollout::release(rest, caller, engine)
        .await?
        .ok_or_else(|| engine_not_found(engine))?;
    let builder = rest
        .table(caller, "engine_versions")?
        .select(SUMMARY)
        .eq("engine_id", engine.to_string())
        .order("version.desc");
    let rows: Vec<Value> = rest.send(builder).await?;
    let mut by_version: BTreeMap<i32, VersionStats> =
        numbers.into_iter().map(|s| (s.version, s)).collect();
    let mut versions = Vec::with_capacity(rows.len());
    for mut row in rows {
        let steps = row["steps"].as_array().map(Vec::len);
        row["steps"] = Value::Null;
        let mut v: EngineVersion = serde_json::from_value(row)
            .map_err(|e| Error::internal(format!("decoding engine_versions: {e}")))?;
        v.steps = steps;
        annotate(&mut v, &release);
        v.stats = Some(by_version.remove(&v.version).unwrap_or(VersionStats {
            version: v.version,
            ..Default::default()
        }));
        versions.push(v);
    }
    Ok(History {
        engine_id: engine,
        current_version: release.current_version,
        rollout: release.rollout(),
        versions,
    })
}

fn annotate(v: &mut EngineVersion, release: &Release) {
    v.current = v.version == release.current_version;
    v.candidate = release.rollout_version == Some(v.version);
}

/// One version with its flow (and its numbers).
pub async fn get(
    rest: &Rest,
    caller: &Caller,
    engine: Uuid,
    version: i32,
) -> Result<EngineVersion> {
    let numbers = stats(rest, caller, engine).await?;
    let release = rollout::release(rest, caller, engine)
        .await?
        .ok_or_else(|| engine_not_found(engine))?;
    let builder = rest
        .table(caller, "engine_versions")?
        .select("*")
        .eq("engine_id", engine.to_string())
        .eq("version", version.to_string());
    let rows: Vec<EngineVersion> = rest.send(builder).await?;
    let mut v = rows.into_iter().next().ok_or_else(|| {
        Error::not_found(
            codes::VERSION_NOT_FOUND,
            format!("engine {engine} has no version {version}"),
        )
    })?;
    v.steps = v
        .flow_config
        .as_ref()
        .and_then(|f| f["steps"].as_array())
        .map(Vec::len);
    annotate(&mut v, &release);
    v.stats = Some(
        numbers
            .into_iter()
            .find(|s| s.version == version)
            .unwrap_or(VersionStats {
                version,
                ..Default::default()
            }),
    );
    Ok(v)
}

/// `POST /v1/engines/{id}/rollback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    pub version: i32,
    #[serde(default)]
    pub note: Option<String>,
}

/// Makes version `n` current again as a new version; returns that new version.
#[tracing::instrument(skip_all, fields(engine_id = %engine, version = request.version))]
pub async fn rollback(
    rest: &Rest,
    caller: &Caller,
    engine: Uuid,
    request: &RollbackRequest,
) -> Result<EngineVersion> {
    check_note(request.note.as_deref())?;
    let params = json!({"engine_id": engine, "version": request.version, "note": request.note});
    let created: EngineVersion = rest
        .send(rest.rpc(caller, "engine_rollback", &params)?)
        .await?;
    // The engine changed: check it (and the new version) now, as a deploy does.
    if let Err(e) = check::run_pending(rest, Some(engine)).await {
        tracing::debug!(code = %e.code, "engine left for the checker");
    }
    get(rest, caller, engine, created.version).await
}

/// `POST /v1/engines/{id}/versions`: a candidate for a rollout, not made current.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposalRequest {
    pub flow: Value,
    #[serde(default)]
    pub note: Option<String>,
}

/// Stores a flow document as a new version without making it current. It passes the
/// deploy rules first, so it is checked (runnable) before this returns.
#[tracing::instrument(skip_all, fields(engine_id = %engine))]
pub async fn propose(
    rest: &Rest,
    caller: &Caller,
    engine: Uuid,
    request: &ProposalRequest,
) -> Result<EngineVersion> {
    check_note(request.note.as_deref())?;
    let flow = parse_flow(&request.flow)?;
    let row = flow.to_engine_row();
    let params = json!({
        "engine_id": engine, "flow_config": row.flow_config, "models": row.models,
        "execution_mode": row.execution_mode, "note": request.note,
    });
    let created: EngineVersion = rest
        .send(rest.rpc(caller, "engine_version_propose", &params)?)
        .await?;
    if let Err(e) = run_pending(rest, Some(engine)).await {
        tracing::debug!(code = %e.code, "version left for the checker");
    }
    let mut v = get(rest, caller, engine, created.version).await?;
    v.notes = flow.notes;
    Ok(v)
}

fn check_note(note: Option<&str>) -> Result<()> {
    match note {
        Some(n) if n.chars().count() > 2000 => Err(Error::invalid(
            codes::INVALID_REQUEST,
            "note must be at most 2000 characters",
        )
        .with_details(json!({"path": "note"}))),
        _ => Ok(()),
    }
}

/// A pending version with what its check needs.
#[derive(Debug, Deserialize)]
struct PendingVersion {
    engine_id: Uuid,
    version: i32,
    flow_config: Value,
    execution_mode: Option<String>,
    engine: Option<PendingEngine>,
}

#[derive(Debug, Deserialize)]
struct PendingEngine {
    name: String,
    tier: Option<String>,
}

/// Most version checks per round.
const BATCH: usize = 100;

/// Checks every pending version (or those of `engine`) with the service role, by the
/// rules an engine is checked by (the engine's name and tier as they are now).
pub async fn run_pending(rest: &Rest, engine: Option<Uuid>) -> Result<usize> {
    let mut builder = rest
        .table(&Caller::Service, "engine_versions")?
        .select("engine_id,version,flow_config,execution_mode,engine:ai_engines(name,tier)")
        .eq("check_state", CheckState::Pending.as_str())
        .order("created_at.asc")
        .limit(BATCH);
    if let Some(id) = engine {
        builder = builder.eq("engine_id", id.to_string());
    }
    let pending: Vec<PendingVersion> = rest.send(builder).await?;
    let mut saved = 0;
    for p in pending {
        let Some(e) = p.engine else { continue };
        let verdict = check::evaluate(
            &e.name,
            &p.flow_config,
            p.execution_mode.as_deref(),
            e.tier.as_deref(),
        );
        let params = json!({
            "engine_id": p.engine_id, "version": p.version, "runnable": verdict.runnable,
            "issues": verdict.issues,
        });
        let written: bool = rest
            .send(rest.rpc(&Caller::Service, "engine_version_check_save", &params)?)
            .await?;
        if written {
            saved += 1;
            tracing::info!(engine_id = %p.engine_id, version = p.version,
                runnable = verdict.runnable, "engine version checked");
        }
    }
    Ok(saved)
}

/// One field that differs between two versions: `from` or `to` is null when absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub from: Value,
    pub to: Value,
}

/// A step that differs between two versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepChange {
    pub id: String,
    pub fields: Vec<FieldChange>,
}

/// `GET /v1/engines/{id}/versions/{a}/diff/{b}`: what changed from `a` to `b`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionDiff {
    pub from: i32,
    pub to: i32,
    /// Steps of `to` that `from` did not have (their ids).
    pub added: Vec<String>,
    /// Steps of `from` that `to` no longer has.
    pub removed: Vec<String>,
    /// Steps in both, with each field that differs.
    pub changed: Vec<StepChange>,
    /// The step order, when it changed (ids in order).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<FieldChange>,
    /// Changes outside the steps: `execution_mode`, `models`, and the flow's own keys.
    pub flow: Vec<FieldChange>,
    /// Nothing at all differs.
    pub identical: bool,
}

/// The diff between two stored versions of an engine.
pub async fn diff_versions(
    rest: &Rest,
    caller: &Caller,
    engine: Uuid,
    from: i32,
    to: i32,
) -> Result<VersionDiff> {
    let a = get(rest, caller, engine, from).await?;
    let b = get(rest, caller, engine, to).await?;
    Ok(diff(&a, &b))
}

/// Step ids in order; a step without an id is named by its position (`#2`).
fn steps_by_id(flow: &Value) -> Vec<(String, Value)> {
    flow["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, s)| {
            let id = s["id"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("#{i}"));
            (id, s.clone())
        })
        .collect()
}

/// Leaf differences between two JSON values, objects walked key by key (arrays and
/// scalars compared whole), paths joined with dots.
fn field_changes(prefix: &str, a: &Value, b: &Value, out: &mut Vec<FieldChange>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                field_changes(
                    &path,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push(FieldChange {
            field: prefix.to_owned(),
            from: a.clone(),
            to: b.clone(),
        }),
        _ => {}
    }
}

/// Which steps were added, removed or changed (and which fields, old → new).
pub fn diff(a: &EngineVersion, b: &EngineVersion) -> VersionDiff {
    let null = Value::Null;
    let fa = a.flow_config.as_ref().unwrap_or(&null);
    let fb = b.flow_config.as_ref().unwrap_or(&null);
    let sa = steps_by_id(fa);
    let sb = steps_by_id(fb);
    let ma: BTreeMap<&str, &Value> = sa.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mb: BTreeMap<&str, &Value> = sb.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let added = sb
        .iter()
        .filter(|(id, _)| !ma.contains_key(id.as_str()))
        .map(|(id, _)| id.clone())
        .collect();
    let removed = sa
        .iter()
        .filter(|(id, _)| !mb.contains_key(id.as_str()))
        .map(|(id, _)| id.clone())
        .collect();
    let mut changed = Vec::new();
    for (id, step_a) in &sa {
        if let Some(step_b) = mb.get(id.as_str()) {
            let mut fields = Vec::new();
            field_changes("", step_a, step_b, &mut fields);
            if !fields.is_empty() {
                changed.push(StepChange {
                    id: id.clone(),
                    fields,
                });
            }
        }
    }
    let common = |list: &[(String, Value)], other: &BTreeMap<&str, &Value>| -> Vec<Value> {
        list.iter()
            .filter(|(id, _)| other.contains_key(id.as_str()))
            .map(|(id, _)| json!(id))
            .collect()
    };
    let (oa, ob) = (common(&sa, &mb), common(&sb, &ma));
    let order = (oa != ob).then(|| FieldChange {
        field: "steps".into(),
        from: Value::Array(oa),
        to: Value::Array(ob),
    });
    let mut flow = Vec::new();
    let without_steps = |f: &Value| {
        let mut f = f.clone();
        if let Some(o) = f.as_object_mut() {
            o.remove("steps");
        }
        f
    };
    field_changes(
        "flow_config",
        &without_steps(fa),
        &without_steps(fb),
        &mut flow,
    );
    if a.execution_mode != b.execution_mode {
        flow.push(FieldChange {
            field: "execution_mode".into(),
            from: json!(a.execution_mode),
            to: json!(b.execution_mode),
        });
    }
    if a.models != b.models {
        flow.push(FieldChange {
            field: "models".into(),
            from: a.models.clone().unwrap_or(Value::Null),
            to: b.models.clone().unwrap_or(Value::Null),
        });
    }
    let mut d = VersionDiff {
        from: a.version,
        to: b.version,
        added,
        removed,
        changed,
        order,
        flow,
        identical: false,
    };
    d.identical = d.added.is_empty()
        && d.removed.is_empty()
        && d.changed.is_empty()
        && d.order.is_none()
        && d.flow.is_empty();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(n: i32, flow: Value, mode: &str) -> EngineVersion {
        serde_json::from_value(json!({
            "engine_id": Uuid::nil(), "version": n, "origin": "update", "restored_from": null,
            "note": null, "created_by": null, "created_at": null, "execution_mode": mode,
            "check_state": "runnable", "check_issues": [], "checked_at": null,
            "flow_config": flow, "models": [],
        }))
        .expect("version")
    }

    #[test]
    fn diff_names_added_removed_and_changed_fields() {
        let a = version(
            1,
            json!({"type": "full", "steps": [
                {"id": "outline", "configuration": {"provider": "openai", "model": "a", "prompt": "p"}},
                {"id": "edit", "configuration": {"provider": "openai", "model": "a", "prompt": "e"}}]}),
            "sequential",
        );
        let b = version(
            2,
            json!({"type": "full", "steps": [
                {"id": "outline", "configuration": {"provider": "anthropic", "model": "a", "prompt": "p",
                  "max_tokens": 900}},
                {"id": "chapters", "configuration": {"provider": "openai", "model": "a", "prompt": "c"}}]}),
            "parallel",
        );
        let d = diff(&a, &b);
        assert_eq!(d.added, vec!["chapters"]);
        assert_eq!(d.removed, vec!["edit"]);
        assert_eq!(d.changed.len(), 1);
        assert_eq!(d.changed[0].id, "outline");
        assert_eq!(
            d.changed[0].fields,
            vec![
                FieldChange {
                    field: "configuration.max_tokens".into(),
                    from: Value::Null,
                    to: json!(900)
                },
                FieldChange {
                    field: "configuration.provider".into(),
                    from: json!("openai"),
                    to: json!("anthropic")
                },
            ]
        );
        assert_eq!(d.flow[0].field, "execution_mode");
        assert!(d.order.is_none());
        assert!(!d.identical);
        assert!(diff(&a, &a).identical);
    }

    #[test]
    fn diff_sees_a_new_order_of_the_same_steps() {
        let s1 = json!({"id": "x", "configuration": {}});
        let s2 = json!({"id": "y", "configuration": {}});
        let a = version(1, json!({"steps": [s1.clone(), s2.clone()]}), "parallel");
        let b = version(2, json!({"steps": [s2, s1]}), "parallel");
        let d = diff(&a, &b);
        assert!(d.changed.is_empty());
        assert_eq!(d.order.map(|o| o.to), Some(json!(["y", "x"])));
    }
}
