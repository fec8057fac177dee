//! Flow documents the tests and benchmarks deploy.

use serde_json::Value;

/// The smallest flow_config the database accepts (sql/V7: steps with id, provider,
/// model and prompt) and the service's check passes.
pub fn one_step_flow_config() -> Value {
    serde_json::json!({"type": "full", "steps": [{"id": "write", "name": "Write",
        "configuration": {"provider": "offline", "model": "fixture", "prompt": "Write a short book."}}]})
}

/// The repository's example book flow (examples/book-flow.json).
pub fn example_flow() -> Value {
    serde_json::from_str(include_str!("../../examples/book-flow.json"))
        .expect("example flow is JSON")
}
