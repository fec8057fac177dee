//! Engine assignments (to a tier or to a user) and resolution: which engines a
//! person may use, and the one a generation uses when none is named. Resolution is
//! written once, in SQL (`my_engines`, `resolve_engine`), so the React app and this
//! service always agree.

use crate::error::{codes, Error, Kind, Result};
use crate::flow::{ExecutionMode, Tier};
use crate::rest::{Caller, Rest};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// An `engine_assignments` row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    pub id: Uuid,
    pub engine_id: Option<Uuid>,
    pub assignment_type: AssignmentType,
    pub tier: Option<Tier>,
    pub user_id: Option<Uuid>,
    pub priority: Option<i32>,
    pub active: Option<bool>,
    pub created_at: Option<String>,
}

/// What resolution returns: the engine and the assignment that gave it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineChoice {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub flow_config: Value,
    pub models: Value,
    pub execution_mode: Option<ExecutionMode>,
    pub tier: Option<Tier>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub assignment_id: Uuid,
    pub assignment_type: AssignmentType,
    pub assignment_priority: Option<i32>,
    pub assigned_at: Option<String>,
    pub rank: i32,
    /// The service's check: `pending`, `runnable` or `not_runnable`. Resolution
    /// skips a not_runnable engine for the next one.
    #[serde(default)]
    pub check_state: Option<crate::engines::check::CheckState>,
    /// true: checked; false: known broken (see check_issues); null: pending.
    #[serde(default)]
    pub runnable: Option<bool>,
    #[serde(default)]
    pub check_issues: Option<Value>,
    /// The engine version the caller gets (sql/V9).
    #[serde(default)]
    pub version: Option<i32>,
    /// true when that version is a rollout's candidate (the caller is in its share).
    #[serde(default)]
    pub rollout: Option<bool>,
}

/// The `assignment_type` column (its CHECK values, sql/V1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AssignmentType {
    Tier,
    User,
}

impl AssignmentType {
    pub const ALL: [AssignmentType; 2] = [AssignmentType::Tier, AssignmentType::User];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tier => "tier",
            Self::User => "user",
        }
    }
}

impl std::fmt::Display for AssignmentType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who an assignment is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Tier(Tier),
    User(Uuid),
}

/// The request body for one assignment: exactly one of `tier` and `user_id`.
/// `assignment_type` (the table's own column, which the React app sends) may be
/// given too; it must agree with them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAssignment {
    pub engine_id: Uuid,
    #[serde(default)]
    pub assignment_type: Option<String>,
    #[serde(default)]
    pub tier: Option<Tier>,
    #[serde(default)]
    pub user_id: Option<Uuid>,
    #[serde(default)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub active: Option<bool>,
}

impl NewAssignment {
    pub fn target(&self) -> Result<Target> {
        let target = match (self.tier, self.user_id) {
            (Some(t), None) => Target::Tier(t),
            (None, Some(u)) => Target::User(u),
            _ => {
                return Err(Error::invalid(
                    codes::INVALID_ASSIGNMENT,
                    "give exactly one of tier and user_id",
                )
                .with_details(json!({"path": "tier"})))
            }
        };
        let implied = match target {
            Target::Tier(_) => "tier",
            Target::User(_) => "user_id",
        };
        match self.assignment_type.as_deref() {
            None => Ok(target),
            Some("tier") if implied == "tier" => Ok(target),
            Some("user") if implied == "user_id" => Ok(target),
            Some(kind @ ("tier" | "user")) => Err(Error::invalid(
                codes::INVALID_ASSIGNMENT,
                format!(
                    "assignment_type is \"{kind}\" but the assignment names a {}; give {} or leave assignment_type out",
                    if implied == "tier" { "tier" } else { "user_id" },
                    if kind == "tier" { "tier (and no user_id)" } else { "user_id (and no tier)" },
                ),
            )
            .with_details(json!({"path": "assignment_type"}))),
            Some(other) => Err(Error::invalid(
                codes::INVALID_ASSIGNMENT,
                format!(
                    "unknown assignment_type {}; expected \"tier\" or \"user\"",
                    Value::from(other)
                ),
            )
            .with_details(json!({"path": "assignment_type"}))),
        }
    }

    fn rpc_params(&self) -> Result<Value> {
        let target = self.target()?;
        Ok(match target {
            Target::Tier(t) => json!({
                "engine_id": self.engine_id, "assignment_type": "tier", "tier": t.as_str(),
                "user_id": null, "priority": self.priority.unwrap_or(0), "active": self.active.unwrap_or(true),
            }),
            Target::User(u) => json!({
                "engine_id": self.engine_id, "assignment_type": "user", "tier": null,
                "user_id": u, "priority": self.priority.unwrap_or(0), "active": self.active.unwrap_or(true),
            }),
        })
    }
}

/// Many engines x many targets, all-or-nothing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkAssignment {
    pub engine_ids: Vec<Uuid>,
    /// Optional, as on one assignment: `tier` allows only `tiers`, `user` only `user_ids`.
    #[serde(default)]
    pub assignment_type: Option<String>,
    #[serde(default)]
    pub tiers: Vec<Tier>,
    #[serde(default)]
    pub user_ids: Vec<Uuid>,
    #[serde(default)]
    pub priority: Option<i32>,
    #[serde(default)]
    pub active: Option<bool>,
}

/// The most rows one bulk call may write.
pub const BULK_LIMIT: usize = 10_000;

impl BulkAssignment {
    /// The cartesian product, as single assignments.
    pub fn expand(&self) -> Result<Vec<NewAssignment>> {
        if self.engine_ids.is_empty() {
            return Err(
                Error::invalid(codes::INVALID_ASSIGNMENT, "engine_ids must not be empty")
                    .with_details(json!({"path": "engine_ids"})),
            );
        }
        if self.tiers.is_empty() && self.user_ids.is_empty() {
            return Err(Error::invalid(
                codes::INVALID_ASSIGNMENT,
                "give at least one tier or user id",
            )
            .with_details(json!({"path": "tiers"})));
        }
        let contradiction = match self.assignment_type.as_deref() {
            None => None,
            Some("tier") => (!self.user_ids.is_empty())
                .then_some("assignment_type is \"tier\" but user_ids are given"),
            Some("user") => (!self.tiers.is_empty())
                .then_some("assignment_type is \"user\" but tiers are given"),
            Some(_) => Some("assignment_type must be \"tier\" or \"user\""),
        };
        if let Some(message) = contradiction {
            return Err(Error::invalid(codes::INVALID_ASSIGNMENT, message)
                .with_details(json!({"path": "assignment_type"})));
        }
        let n = self.engine_ids.len() * (self.tiers.len() + self.user_ids.len());
        if n > BULK_LIMIT {
            return Err(Error::invalid(
                codes::INVALID_ASSIGNMENT,
                format!("{n} assignments in one call; the limit is {BULK_LIMIT}"),
            ));
        }
        let mut out = Vec::with_capacity(n);
        for &engine_id in &self.engine_ids {
            for &tier in &self.tiers {
                out.push(NewAssignment {
                    engine_id,
                    assignment_type: None,
                    tier: Some(tier),
                    user_id: None,
                    priority: self.priority,
                    active: self.active,
                });
            }
            for &user in &self.user_ids {
                out.push(NewAssignment {
                    engine_id,
                    assignment_type: None,
                    tier: None,
                    user_id: Some(user),
                    priority: self.priority,
                    active: self.active,
                });
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignmentPatch {
    pub priority: Option<i32>,
    pub active: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct AssignmentFilter {
    pub engine_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub tier: Option<Tier>,
}

fn not_found(id: Uuid) -> Error {
    Error::not_found(
        codes::ASSIGNMENT_NOT_FOUND,
        format!("assignment {id} not found"),
    )
}

fn admin_only(e: Error) -> Error {
    if matches!(e.kind, Kind::Forbidden) {
        Error::forbidden("only admins can manage assignments")
    } else {
        e
    }
}

/// Assign one engine to one target; assigning twice updates the existing row.
#[tracing::instrument(skip_all, fields(engine_id = %new.engine_id))]
pub async fn assign(rest: &Rest, caller: &Caller, new: &NewAssignment) -> Result<Assignment> {
    let builder = rest.rpc(caller, "assign_engine", &new.rpc_params()?)?;
    rest.send(builder).await.map_err(admin_only)
}

/// Write every assignment or none (one transaction).
#[tracing::instrument(skip_all, fields(rows = items.len()))]
pub async fn bulk(
    rest: &Rest,
    caller: &Caller,
    items: &[NewAssignment],
) -> Result<Vec<Assignment>> {
    let params: Vec<Value> = items
        .iter()
        .map(NewAssignment::rpc_params)
        .collect::<Result<_>>()?;
    let builder = rest.rpc(caller, "assign_engines_bulk", &json!({ "items": params }))?;
    rest.send(builder).await.map_err(admin_only)
}

/// Admins: every assignment; anyone else: their own and their tier's (RLS).
pub async fn list(
    rest: &Rest,
    caller: &Caller,
    filter: &AssignmentFilter,
) -> Result<Vec<Assignment>> {
    let mut builder = rest
        .table(caller, "engine_assignments")?
        .select("*")
        .order("engine_id,priority.desc,created_at.desc");
    if let Some(e) = filter.engine_id {
        builder = builder.eq("engine_id", e.to_string());
    }
    if let Some(u) = filter.user_id {
        builder = builder.eq("user_id", u.to_string());
    }
    if let Some(t) = filter.tier {
        builder = builder.eq("tier", t.as_str());
    }
    rest.send(builder).await
}

async fn get(rest: &Rest, caller: &Caller, id: Uuid) -> Result<Assignment> {
    let builder = rest
        .table(caller, "engine_assignments")?
        .select("*")
        .eq("id", id.to_string());
    let rows: Vec<Assignment> = rest.send(builder).await?;
    rows.into_iter().next().ok_or_else(|| not_found(id))
}

async fn explain_no_rows(rest: &Rest, caller: &Caller, id: Uuid) -> Error {
    match get(rest, caller, id).await {
        Ok(_) => Error::forbidden("only admins can manage assignments"),
        Err(e) => e,
    }
}

#[tracing::instrument(skip_all, fields(assignment_id = %id))]
pub async fn update(
    rest: &Rest,
    caller: &Caller,
    id: Uuid,
    patch: &AssignmentPatch,
) -> Result<Assignment> {
    let mut body = Map::new();
    if let Some(p) = patch.priority {
        body.insert("priority".into(), json!(p));
    }
    if let Some(a) = patch.active {
        body.insert("active".into(), json!(a));
    }
    if body.is_empty() {
        return Err(Error::invalid(
            codes::INVALID_REQUEST,
            "nothing to update: give priority or active",
        ));
    }
    let builder = rest
        .table(caller, "engine_assignments")?
        .eq("id", id.to_string())
        .update(Value::Object(body).to_string());
    let rows: Vec<Assignment> = rest.send(builder).await.map_err(admin_only)?;
    match rows.into_iter().next() {
        Some(a) => Ok(a),
        None => Err(explain_no_rows(rest, caller, id).await),
    }
}

#[tracing::instrument(skip_all, fields(assignment_id = %id))]
pub async fn remove(rest: &Rest, caller: &Caller, id: Uuid) -> Result<()> {
    let builder = rest
        .table(caller, "engine_assignments")?
        .eq("id", id.to_string())
        .delete();
    let rows: Vec<Value> = rest.send(builder).await.map_err(admin_only)?;
    if rows.is_empty() {
        return Err(explain_no_rows(rest, caller, id).await);
    }
    Ok(())
}

/// The engines the caller may use, best first.
pub async fn my_engines(rest: &Rest, caller: &Caller) -> Result<Vec<EngineChoice>> {
    let builder = rest.rpc(caller, "my_engines", &json!({}))?;
    rest.send(builder).await
}

/// The engine a generation uses when none is named (`no_engine_assigned` if none).
pub async fn resolve(rest: &Rest, caller: &Caller) -> Result<EngineChoice> {
    let builder = rest.rpc(caller, "resolve_engine", &json!({}))?;
    rest.send(builder).await
}
