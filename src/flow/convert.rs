//! Between a [`Flow`] and its `ai_engines` row.
//!
//! `flow_config` keeps each step's configuration exactly as given (no
//! defaults injected), so deploy -> load -> deploy writes the same JSON.

use serde_json::{json, Map, Value};

use super::document::{EngineRow, Flow};
use super::issue::{stage_error, Issue};
use super::parse_flow;
use crate::error::{codes, Result};

/// The `flow_config` layout this module writes and reads.
pub const SCHEMA_VERSION: u64 = 1;

impl Flow {
    /// The `ai_engines` columns a deploy writes.
    pub fn to_engine_row(&self) -> EngineRow {
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| json!({"id": s.id, "name": s.name, "configuration": s.configuration}))
            .collect();
        EngineRow {
            name: self.name.clone(),
            description: self.description.clone(),
            flow_config: json!({
                "type": self.flow_type,
                "schema_version": SCHEMA_VERSION,
                "steps": steps,
            }),
            models: self.models(),
            execution_mode: self.execution_mode.as_str().to_string(),
            tier: self.tier.map(|t| t.as_str().to_string()),
        }
    }

    /// The distinct (provider, model) pairs in first-use order, each with the
    /// steps using it as primary and as fallback (the app's
    /// `extractModelsFromConfigurations`).
    fn models(&self) -> Value {
        let mut entries: Vec<ModelUse<'_>> = Vec::new();
        for s in &self.steps {
            record_use(
                &mut entries,
                &s.config.provider,
                &s.config.model,
                &s.id,
                true,
            );
            for f in &s.config.fallbacks {
                record_use(&mut entries, &f.provider, &f.model, &s.id, false);
            }
        }
        Value::Array(
            entries
                .into_iter()
                .map(|e| {
                    json!({
                        "provider": e.provider,
                        "model": e.model,
                        "steps": e.steps,
                        "fallback_for": e.fallback_for,
                    })
                })
                .collect(),
        )
    }

    /// Rebuild a Flow from a stored engine (flow_config + execution_mode),
    /// re-running validation (a snapshot is untrusted input too).
    pub fn from_engine(
        name: &str,
        flow_config: &Value,
        execution_mode: Option<&str>,
        tier: Option<&str>,
    ) -> Result<Flow> {
        let refuse = |path: &str, code: &'static str, message: &str| {
            stage_error(
                codes::INVALID_FLOW,
                "invalid stored flow",
                &[Issue::new(path, code, message)],
                None,
            )
        };
        let Value::Object(config) = flow_config else {
            return Err(refuse(
                "flow_config",
                "invalid_type",
                "flow_config must be a JSON object",
            ));
        };
        if let Some(v) = config.get("schema_version") {
            if v.as_u64() != Some(SCHEMA_VERSION) {
                return Err(refuse(
                    "flow_config.schema_version",
                    "unsupported_schema_version",
                    "this flow_config was written by an unknown schema version (expected 1)",
                ));
            }
        }
        let mut doc = Map::new();
        doc.insert("name".into(), Value::from(name));
        for key in ["type", "steps"] {
            if let Some(v) = config.get(key) {
                doc.insert(key.into(), v.clone());
            }
        }
        if let Some(mode) = execution_mode {
            doc.insert("execution_mode".into(), Value::from(mode));
        }
        if let Some(tier) = tier {
            doc.insert("tier".into(), Value::from(tier));
        }
        parse_flow(&Value::Object(doc))
    }
}

/// One (provider, model) pair and the steps using it.
struct ModelUse<'a> {
    provider: &'a str,
    model: &'a str,
    steps: Vec<&'a str>,
    fallback_for: Vec<&'a str>,
}

fn record_use<'a>(
    entries: &mut Vec<ModelUse<'a>>,
    provider: &'a str,
    model: &'a str,
    step: &'a str,
    primary: bool,
) {
    let pos = match entries
        .iter()
        .position(|e| e.provider == provider && e.model == model)
    {
        Some(pos) => pos,
        None => {
            entries.push(ModelUse {
                provider,
                model,
                steps: Vec::new(),
                fallback_for: Vec::new(),
            });
            entries.len() - 1
        }
    };
    if let Some(e) = entries.get_mut(pos) {
        let list = if primary {
            &mut e.steps
        } else {
            &mut e.fallback_for
        };
        if !list.contains(&step) {
            list.push(step);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::test_support::{flow, has, issues, step};
    use serde_json::json;

    fn sample() -> Flow {
        let mut doc = flow(
            "parallel",
            vec![
                step("outline", json!({"output": "json", "x_pos": {"x": 1}})),
                step(
                    "chapters",
                    json!({"provider": "anthropic", "model": "claude-3-5-haiku-latest",
                           "for_each": "outline.chapters", "prompt": "{{ item.title }}",
                           "fallbacks": [{"provider": "openai", "model": "gpt-4o-mini"},
                                         {"provider": "gemini", "model": "gemini-1.5-flash"}]}),
                ),
                step(
                    "edit",
                    json!({"provider": "gemini", "model": "gemini-1.5-flash",
                                    "prompt": "{{ steps.chapters.outputs }}"}),
                ),
            ],
        );
        doc["tier"] = json!("pro");
        doc["description"] = json!("d");
        match crate::flow::parse_flow(&doc) {
            Ok(f) => f,
            Err(e) => panic!("{e} {:?}", e.details),
        }
    }

    #[test]
    fn row_has_the_engine_columns() {
        let row = sample().to_engine_row();
        assert_eq!(row.name, "Test");
        assert_eq!(row.description.as_deref(), Some("d"));
        assert_eq!(row.execution_mode, "parallel");
        assert_eq!(row.tier.as_deref(), Some("pro"));
        assert_eq!(row.flow_config["type"], "full");
        assert_eq!(row.flow_config["schema_version"], 1);
        let steps = row.flow_config["steps"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(steps.len(), 3);
        // Configuration as given: UI keys kept, no defaults injected.
        assert_eq!(
            steps[0],
            json!({"id": "outline", "name": "outline", "configuration": {
                "provider": "openai", "model": "gpt-4o-mini", "prompt": "Write.",
                "output": "json", "x_pos": {"x": 1}}})
        );
        let serialized = serde_json::to_value(&row).unwrap_or_default();
        assert!(serialized.get("flow_config").is_some() && serialized["tier"] == "pro");
    }

    #[test]
    fn models_are_distinct_pairs_in_first_use_order() {
        let row = sample().to_engine_row();
        assert_eq!(
            row.models,
            json!([
                {"provider": "openai", "model": "gpt-4o-mini", "steps": ["outline"], "fallback_for": ["chapters"]},
                {"provider": "anthropic", "model": "claude-3-5-haiku-latest", "steps": ["chapters"], "fallback_for": []},
                {"provider": "gemini", "model": "gemini-1.5-flash", "steps": ["edit"], "fallback_for": ["chapters"]}
            ])
        );
    }

    #[test]
    fn engine_round_trip_is_stable() {
        let flow = sample();
        let row = flow.to_engine_row();
        let back = Flow::from_engine(
            &row.name,
            &row.flow_config,
            Some(&row.execution_mode),
            row.tier.as_deref(),
        );
        let back = match back {
            Ok(f) => f,
            Err(e) => panic!("{e} {:?}", e.details),
        };
        assert_eq!(back.steps, flow.steps);
        assert_eq!(back.to_engine_row().flow_config, row.flow_config);
        assert_eq!(back.to_engine_row().models, row.models);
        assert_eq!(back.tier, Some(crate::flow::Tier::Pro));
        // The description is not part of flow_config; the caller has the column.
        assert_eq!(back.description, None);
    }

    #[test]
    fn stored_snapshots_are_checked_again() {
        let row = sample().to_engine_row();
        // Not an object.
        let err = Flow::from_engine("x", &json!([]), None, None).err();
        assert_eq!(err.as_ref().map(|e| e.code), Some(codes::INVALID_FLOW));
        assert!(err
            .as_ref()
            .is_some_and(|e| has(&issues(e), "flow_config", "invalid_type")));
        // Unknown schema version.
        let mut cfg = row.flow_config.clone();
        cfg["schema_version"] = json!(2);
        let err = Flow::from_engine("x", &cfg, None, None).err();
        assert!(err.is_some_and(|e| has(
            &issues(&e),
            "flow_config.schema_version",
            "unsupported_schema_version"
        )));
        // Without execution_mode the stored flow is sequential: `edit` still
        // comes after `chapters`, so it parses.
        assert!(Flow::from_engine("x", &row.flow_config, None, None).is_ok());
        // Bad columns.
        let err = Flow::from_engine("x", &row.flow_config, Some("fast"), Some("gold")).err();
        let got = err.map(|e| issues(&e)).unwrap_or_default();
        assert!(has(&got, "execution_mode", "invalid_value") && has(&got, "tier", "invalid_value"));
        // A credential planted in a stored row is still refused.
        let mut cfg = row.flow_config.clone();
        cfg["steps"][0]["configuration"]["x_note"] = json!("sk-abcdefghijklmnopqrstuvwxyz0123");
        let err = Flow::from_engine("x", &cfg, None, None).err();
        assert_eq!(err.map(|e| e.code), Some(codes::SECRET_IN_FLOW));
    }
}
