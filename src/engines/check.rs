//! The service's check of every engine, whoever wrote it.
//!
//! The React app writes `ai_engines` straight through PostgREST; a trigger
//! (sql/V7) marks each changed engine's row in `engine_checks` as `pending`. The
//! checker finds those rows with the service role (it is work that belongs to no
//! person), runs exactly the rules a deploy and the worker run
//! ([`Flow::from_engine`]), and saves `runnable` or `not_runnable` with the issues
//! and the normalisation notes through `engine_check_save`, which writes only if
//! the engine did not change meanwhile. Several checkers may run at once (one per
//! `serve`/`worker` process): they compute the same result, and saving it twice
//! changes nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::Result;
use crate::flow::Flow;
use crate::rest::{Caller, Rest};

/// Where the check of an engine (or of one of its versions) stands: the `state`
/// and `check_state` columns' CHECK values (sql/V7, sql/V9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckState {
    /// Written by a client other than the service, not checked yet.
    Pending,
    Runnable,
    NotRunnable,
}

impl CheckState {
    pub const ALL: [CheckState; 3] = [
        CheckState::Pending,
        CheckState::Runnable,
        CheckState::NotRunnable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Pending => "pending",
            CheckState::Runnable => "runnable",
            CheckState::NotRunnable => "not_runnable",
        }
    }
}

impl std::fmt::Display for CheckState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An engine's check, as `engine_checks` holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineCheck {
    pub state: CheckState,
    #[serde(default)]
    pub issues: Value,
    #[serde(default)]
    pub notes: Value,
    #[serde(default)]
    pub checked_at: Option<String>,
}

/// The embedded resource to add to an `ai_engines` select.
pub const EMBED: &str = "check:engine_checks(state,issues,notes,checked_at)";

/// What the rules say about one stored engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub runnable: bool,
    pub issues: Value,
    pub notes: Value,
}

/// Runs the deploy/worker rules on an engine's columns.
pub fn evaluate(
    name: &str,
    flow_config: &Value,
    execution_mode: Option<&str>,
    tier: Option<&str>,
) -> Verdict {
    match Flow::from_engine(name, flow_config, execution_mode, tier) {
        Ok(flow) => Verdict {
            runnable: true,
            issues: json!([]),
            notes: serde_json::to_value(&flow.notes).unwrap_or_else(|_| json!([])),
        },
        Err(e) => {
            let details = e.details.unwrap_or_default();
            let issues = match details.get("issues") {
                Some(Value::Array(list)) if !list.is_empty() => Value::Array(list.clone()),
                _ => json!([{"path": "", "code": e.code, "message": e.message}]),
            };
            Verdict {
                runnable: false,
                issues,
                notes: details.get("notes").cloned().unwrap_or_else(|| json!([])),
            }
        }
    }
}

/// A pending check with the engine columns it needs.
#[derive(Debug, Deserialize)]
struct Pending {
    engine_id: Uuid,
    flow_hash: String,
    engine: Option<PendingEngine>,
}

#[derive(Debug, Deserialize)]
struct PendingEngine {
    name: String,
    flow_config: Value,
    execution_mode: Option<String>,
    tier: Option<String>,
}

/// Most checks per round; the rest wait for the next one.
const BATCH: usize = 100;

/// Checks every pending engine (or only `engine`) once; returns how many results were saved.
pub async fn run_pending(rest: &Rest, engine: Option<Uuid>) -> Result<usize> {
    let mut builder = rest
        .table(&Caller::Service, "engine_checks")?
        .select("engine_id,flow_hash,engine:ai_engines(name,flow_config,execution_mode,tier)")
        .eq("state", CheckState::Pending.as_str())
        .order("requested_at.asc")
        .limit(BATCH);
    if let Some(id) = engine {
        builder = builder.eq("engine_id", id.to_string());
    }
    let pending: Vec<Pending> = rest.send(builder).await?;
    let mut saved = 0;
    for p in pending {
        let Some(e) = p.engine else { continue };
        let verdict = evaluate(
            &e.name,
            &e.flow_config,
            e.execution_mode.as_deref(),
            e.tier.as_deref(),
        );
        let params = json!({
            "engine_id": p.engine_id, "flow_hash": p.flow_hash, "runnable": verdict.runnable,
            "issues": verdict.issues, "notes": verdict.notes,
        });
        let written: bool = rest
            .send(rest.rpc(&Caller::Service, "engine_check_save", &params)?)
            .await?;
        if written {
            saved += 1;
            tracing::info!(
                engine_id = %p.engine_id,
                runnable = verdict.runnable,
                issues = verdict.issues.as_array().map_or(0, Vec::len),
                "engine checked"
            );
        }
    }
    Ok(saved)
}

/// Checks pending engines every `interval` until `shutdown`.
pub fn spawn(
    rest: Rest,
    interval: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let interval = interval.max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            // Versions (rollout candidates) are checked by the same rules, same round.
            let round = match run_pending(&rest, None).await {
                Ok(_) => super::versions::run_pending(&rest, None).await,
                Err(e) => Err(e),
            };
            match round {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(
                        code = %e.code,
                        detail = e.internal.as_deref().unwrap_or(""),
                        "engine check round failed"
                    );
                }
            }
            // Back off while PostgREST is down.
            let pause = interval.saturating_mul(failures.clamp(1, 10));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_react_shaped_engine_is_runnable_with_notes() {
        let cfg = json!({"type": "full", "steps": [
            {"id": "outline", "name": "Outline", "configuration": {"provider": "openai", "model": "m",
              "prompt": "Plan a book about {{topic}}.", "maxTokens": 500, "outputFormat": "json"}},
            {"id": "write", "name": "Write", "configuration": {"provider": "openai", "model": "m",
              "systemPrompt": "You write books.", "prompt": "Write the book from {{outline}}."}}]});
        let v = evaluate("React", &cfg, Some("sequential"), Some("pro"));
        assert!(v.runnable, "{:?}", v.issues);
        let froms: Vec<&str> = v
            .notes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["from"].as_str())
            .collect();
        assert!(
            froms.contains(&"maxTokens") && froms.contains(&"{{outline}}"),
            "{froms:?}"
        );
    }

    #[test]
    fn a_broken_engine_lists_its_issues_and_notes() {
        let cfg = json!({"type": "full", "steps": [
            {"id": "a", "configuration": {"provider": "openai", "model": "m", "maxTokens": 0,
              "prompt": "{{ nope.x }}"}}]});
        let v = evaluate("Broken", &cfg, None, None);
        assert!(!v.runnable);
        let paths: Vec<&str> = v
            .issues
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["path"].as_str())
            .collect();
        assert!(
            paths.contains(&"steps[0].configuration.max_tokens"),
            "{paths:?}"
        );
        assert_eq!(v.notes[0]["from"], "maxTokens");
        // Not even an object: one issue, still with a path and a code.
        let v = evaluate("Broken", &json!([]), None, None);
        assert_eq!(v.issues[0]["path"], "flow_config");
    }
}
