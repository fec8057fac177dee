//! Stage 3: the React app's readiness rule (`calculateFlowReadiness() === 100`).
//!
//! A step is ready when its configuration names a provider, a model and a
//! prompt. The editor shows the percentage, so the error carries it too.

use super::issue::{index_path, key_path, Issue};
use super::shape::RawFlow;

/// The fields a step needs before it can run.
const REQUIRED: &[&str] = &["provider", "model", "prompt"];

/// `Ok` when every step is ready; otherwise the readiness percentage and one
/// issue per missing field per step.
pub(crate) fn check(raw: &RawFlow<'_>) -> Result<(), (u64, Vec<Issue>)> {
    if raw.steps.is_empty() {
        let issue = Issue::new("steps", "missing_field", "the flow has no steps");
        return Err((0, vec![issue]));
    }
    let mut issues = Vec::new();
    let mut ready = 0u64;
    for (i, step) in raw.steps.iter().enumerate() {
        let base = key_path(&index_path("steps", i), "configuration");
        let before = issues.len();
        for field in REQUIRED {
            let present = step
                .configuration
                .and_then(|c| c.get(*field))
                .and_then(|v| v.as_str())
                .is_some_and(|s| !s.trim().is_empty());
            if !present {
                issues.push(
                    Issue::new(
                        key_path(&base, field),
                        "missing_field",
                        format!("step {} has no {field}", super::issue::quote(step.id)),
                    )
                    .with("step_id", step.id),
                );
            }
        }
        if issues.len() == before {
            ready += 1;
        }
    }
    if issues.is_empty() {
        return Ok(());
    }
    let total = raw.steps.len() as u64;
    // Rounded like the editor, but never 100 while something is missing.
    let percent = ((ready * 100 + total / 2) / total).min(99);
    Err((percent, issues))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::shape;
    use serde_json::json;

    #[test]
    fn percentage_counts_fully_configured_steps() {
        let doc = json!({"name": "n", "type": "full", "steps": [
            {"id": "a", "configuration": {"provider": "openai", "model": "m", "prompt": "p"}},
            {"id": "b", "configuration": {"provider": "openai", "model": " ", "prompt": "p"}},
            {"id": "c"}
        ]});
        let raw = shape::check(&doc).ok();
        let Some(Err((percent, issues))) = raw.as_ref().map(check) else {
            panic!("expected not ready");
        };
        assert_eq!(percent, 33);
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "steps[1].configuration.model",
                "steps[2].configuration.provider",
                "steps[2].configuration.model",
                "steps[2].configuration.prompt",
            ]
        );
        assert_eq!(issues[0].message, "step \"b\" has no model");
        assert_eq!(issues[0].extra.get("step_id"), Some(&json!("b")));
    }

    #[test]
    fn many_steps_never_round_up_to_100() {
        let mut steps = vec![json!({"id": "x"})];
        for i in 0..300 {
            steps.push(json!({"id": format!("s{i}"),
                "configuration": {"provider": "openai", "model": "m", "prompt": "p"}}));
        }
        let doc = json!({"name": "n", "type": "full", "steps": steps});
        let raw = shape::check(&doc).ok();
        let percent = raw.as_ref().map(check).and_then(|r| r.err()).map(|e| e.0);
        assert_eq!(percent, Some(99));
    }
}
