//! What a job runs on: the engine as it was when the job was created
//! (`generation_jobs.engine_snapshot`, built by the insert trigger of sql/V9), so a
//! redeploy or a deletion of the engine does not change a job already queued.

use crate::flow::{ExecutionMode, Tier};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineSnapshot {
    /// The flow as the engine stored it (checked again by `Flow::from_engine`).
    pub flow_config: Value,
    #[serde(default)]
    pub models: Value,
    /// The engine row's columns, whose CHECKs guarantee these values.
    #[serde(default)]
    pub execution_mode: Option<ExecutionMode>,
    #[serde(default)]
    pub tier: Option<Tier>,
    #[serde(default)]
    pub engine_version: Option<i32>,
    #[serde(default)]
    pub engine_updated_at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_snapshot_the_trigger_builds_is_read_whole() {
        let s: EngineSnapshot = serde_json::from_value(json!({
            "flow_config": {"steps": []}, "models": [], "execution_mode": "parallel",
            "tier": "pro", "engine_updated_at": "2026-11-30T00:00:00+00:00", "engine_version": 3
        }))
        .expect("snapshot");
        assert_eq!(s.execution_mode, Some(ExecutionMode::Parallel));
        assert_eq!(s.tier, Some(Tier::Pro));
        assert_eq!(s.engine_version, Some(3));
    }

    #[test]
    fn a_snapshot_before_versions_lacks_only_the_optional_keys() {
        let s: EngineSnapshot =
            serde_json::from_value(json!({"flow_config": {"steps": []}})).expect("snapshot");
        assert_eq!(s.execution_mode, None);
        assert_eq!(s.models, Value::Null);
    }

    #[test]
    fn an_unknown_mode_is_refused() {
        let r = serde_json::from_value::<EngineSnapshot>(
            json!({"flow_config": {}, "execution_mode": "fast"}),
        );
        assert!(r.is_err());
    }
}
