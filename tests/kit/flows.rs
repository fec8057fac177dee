//! Flow documents the tests and benchmarks deploy.

use serde_json::{json, Value};

/// The smallest flow_config the database accepts (sql/V7: steps with id, provider,
/// model and prompt) and the service's check passes.
pub fn one_step_flow_config() -> Value {
    json!({"type": "full", "steps": [{"id": "write", "name": "Write",
        "configuration": {"provider": "offline", "model": "fixture", "prompt": "Write a short book."}}]})
}

/// The repository's example book flow (examples/book-flow.json).
pub fn example_flow() -> Value {
    serde_json::from_str(include_str!("../../examples/book-flow.json"))
        .expect("example flow is JSON")
}

/// The example book flow with every step on one provider (and no fallbacks).
pub fn book_flow(provider: &str, mode: &str, name: &str) -> Value {
    let mut flow = example_flow();
    flow["execution_mode"] = json!(mode);
    flow["name"] = json!(name);
    if let Some(steps) = flow["steps"].as_array_mut() {
        for s in steps {
            let c = &mut s["configuration"];
            c["provider"] = json!(provider);
            c["model"] = json!("bench-model");
            if let Some(o) = c.as_object_mut() {
                o.remove("fallbacks");
            }
        }
    }
    flow
}

/// A one-step flow (for the queue and memory benchmarks).
pub fn one_step_flow(provider: &str, name: &str) -> Value {
    json!({
        "name": name,
        "type": "full",
        "execution_mode": "sequential",
        "tier": "enterprise",
        "steps": [{"id": "write", "name": "Write", "configuration": {
            "provider": provider, "model": "bench-model",
            "prompt": "Write one paragraph about {{ input.topic }}.", "retries": 0}}]
    })
}
