//! Gradual rollout of a candidate version to a share of an engine's users.
//!
//! The split is decided in SQL (sql/V9 `engine_rollout_bucket`, applied by
//! `my_engines`, `resolve_engine` and the job insert trigger), so the React app, the
//! service and PostgREST agree; here only the admin's actions and the state.

use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::error::{codes, Error, Result};
use crate::rest::{Caller, Rest};

/// An engine's row in `engine_releases`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Release {
    pub engine_id: Uuid,
    pub current_version: i32,
    pub last_version: i32,
    pub rollout_version: Option<i32>,
    pub rollout_percent: Option<f64>,
    pub rollout_started_at: Option<String>,
    pub rollout_started_by: Option<Uuid>,
    pub rollout_updated_at: Option<String>,
}

/// A running rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// The candidate version.
    pub version: i32,
    /// Share of the engine's users on it (0 to 100).
    pub percent: f64,
    pub started_at: Option<String>,
    pub started_by: Option<Uuid>,
    pub updated_at: Option<String>,
}

impl Release {
    pub fn rollout(&self) -> Option<Rollout> {
        Some(Rollout {
            version: self.rollout_version?,
            percent: self.rollout_percent?,
            started_at: self.rollout_started_at.clone(),
            started_by: self.rollout_started_by,
            updated_at: self.rollout_updated_at.clone(),
        })
    }
}

/// `GET /v1/engines/{id}/rollout` and the answer of every rollout action.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutState {
    pub engine_id: Uuid,
    pub current_version: i32,
    /// null when no rollout runs.
    pub rollout: Option<Rollout>,
}

impl From<Release> for RolloutState {
    fn from(r: Release) -> Self {
        Self {
            engine_id: r.engine_id,
            current_version: r.current_version,
            rollout: r.rollout(),
        }
    }
}

/// `POST /v1/engines/{id}/rollout`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    pub version: i32,
    pub percent: f64,
}

/// The release row as the caller sees it (admins only under RLS: `None` otherwise).
pub async fn release(rest: &Rest, caller: &Caller, engine: Uuid) -> Result<Option<Release>> {
    let builder = rest
        .table(caller, "engine_releases")?
        .select("*")
        .eq("engine_id", engine.to_string());
    let rows: Vec<Release> = rest.send(builder).await?;
    Ok(rows.into_iter().next())
}

/// The current version and the rollout; 403 to a non-admin, 404 for no such engine.
pub async fn state(rest: &Rest, caller: &Caller, engine: Uuid) -> Result<RolloutState> {
    match release(rest, caller, engine).await? {
        Some(r) => Ok(r.into()),
        None => Err(explain_missing(rest, caller, engine).await),
    }
}

/// RLS shows a non-admin no release: tell "not allowed" from "no such engine".
async fn explain_missing(rest: &Rest, caller: &Caller, engine: Uuid) -> Error {
    match super::get(rest, caller, engine).await {
        Ok(_) => Error::forbidden("only admins can manage engine versions"),
        Err(e) => e,
    }
}

/// Starts a rollout of `version` to `percent` of the users, or changes its share.
#[tracing::instrument(skip_all, fields(engine_id = %engine, version = request.version))]
pub async fn start(
    rest: &Rest,
    caller: &Caller,
    engine: Uuid,
    request: &RolloutRequest,
) -> Result<RolloutState> {
    if !request.percent.is_finite() || !(0.0..=100.0).contains(&request.percent) {
        return Err(Error::invalid(
            codes::INVALID_REQUEST,
            "percent must be a number from 0 to 100",
        )
        .with_details(json!({"path": "percent"})));
    }
    // A candidate is handed to users only once checked: check it now if it waits.
    if let Err(e) = super::versions::run_pending(rest, Some(engine)).await {
        tracing::debug!(code = %e.code, "version left for the checker");
    }
    let params =
        json!({"engine_id": engine, "version": request.version, "percent": request.percent});
    let r: Release = rest
        .send(rest.rpc(caller, "engine_rollout_start", &params)?)
        .await?;
    Ok(r.into())
}

/// The candidate becomes current (keeping its number) and the rollout ends.
#[tracing::instrument(skip_all, fields(engine_id = %engine))]
pub async fn promote(rest: &Rest, caller: &Caller, engine: Uuid) -> Result<RolloutState> {
    let r: Release = rest
        .send(rest.rpc(
            caller,
            "engine_rollout_promote",
            &json!({"engine_id": engine}),
        )?)
        .await?;
    // The engine's flow changed: check it now, as a deploy does.
    if let Err(e) = super::check::run_pending(rest, Some(engine)).await {
        tracing::debug!(code = %e.code, "engine left for the checker");
    }
    Ok(r.into())
}

/// Every user back on the current version.
#[tracing::instrument(skip_all, fields(engine_id = %engine))]
pub async fn abort(rest: &Rest, caller: &Caller, engine: Uuid) -> Result<RolloutState> {
    let r: Release = rest
        .send(rest.rpc(
            caller,
            "engine_rollout_abort",
            &json!({"engine_id": engine}),
        )?)
        .await?;
    Ok(r.into())
}
