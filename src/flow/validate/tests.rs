//! The checks of stage 4, each through a whole document.

use super::common_issues::{closest, edit_distance};
use super::*;
use crate::error::codes::INVALID_FLOW;
use crate::flow::test_support::{flow, has, refused, step};
use crate::flow::{parse_flow, ForEach};
use serde_json::json;

/// docs/flow.schema.json repeats the limits for editors: it must say what the
/// checker enforces.
#[test]
fn the_json_schema_states_the_same_limits() {
    let schema: Value =
        serde_json::from_str(include_str!("../../../docs/flow.schema.json")).expect("schema");
    let at = |path: &str| {
        schema
            .pointer(path)
            .cloned()
            .unwrap_or_else(|| panic!("{path} not in the schema"))
    };
    let words = |path: &str| -> Vec<String> {
        at(path)
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let owned = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let tiers: Vec<&str> = Tier::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(words("/properties/type/enum"), owned(FLOW_TYPES));
    assert_eq!(
        words("/properties/execution_mode/enum"),
        owned(EXECUTION_MODES)
    );
    assert_eq!(words("/properties/tier/enum"), owned(&tiers));
    assert_eq!(words("/$defs/provider/enum"), owned(PROVIDERS));
    let cfg = "/$defs/configuration/properties";
    assert_eq!(words(&format!("{cfg}/output/enum")), owned(OUTPUT_KINDS));
    assert_eq!(at("/properties/steps/maxItems"), json!(MAX_STEPS));
    assert_eq!(at("/properties/name/maxLength"), json!(MAX_NAME_CHARS));
    assert_eq!(
        at("/$defs/step/properties/name/maxLength"),
        json!(MAX_NAME_CHARS)
    );
    assert_eq!(
        at(&format!("{cfg}/fallbacks/maxItems")),
        json!(MAX_FALLBACKS)
    );
    let range = |key: &str| {
        (
            at(&format!("{cfg}/{key}/minimum")),
            at(&format!("{cfg}/{key}/maximum")),
        )
    };
    let (lo, hi) = range("temperature");
    assert_eq!(
        (lo.as_f64(), hi.as_f64()),
        (Some(TEMPERATURE.0), Some(TEMPERATURE.1))
    );
    assert_eq!(
        range("max_tokens"),
        (json!(MAX_TOKENS.0), json!(MAX_TOKENS.1))
    );
    assert_eq!(range("timeout_s"), (json!(TIMEOUT_S.0), json!(TIMEOUT_S.1)));
    assert_eq!(range("retries"), (json!(RETRIES.0), json!(RETRIES.1)));
    assert_eq!(
        at("/$defs/stepId/pattern"),
        json!(format!("^[a-z][a-z0-9_-]{{0,{}}}$", MAX_ID_CHARS - 1))
    );
}

fn accepted(doc: &Value) -> Flow {
    match parse_flow(doc) {
        Ok(f) => f,
        Err(e) => panic!("refused: {e} {:?}", e.details),
    }
}

#[test]
fn duplicate_and_malformed_ids() {
    let doc = flow(
        "sequential",
        vec![
            step("a", json!({})),
            step("a", json!({})),
            step("B", json!({})),
        ],
    );
    let got = refused(&doc, INVALID_FLOW);
    assert!(has(&got, "steps[1].id", "duplicate_step_id"), "{got:?}");
    assert!(has(&got, "steps[2].id", "invalid_step_id"), "{got:?}");
    assert_eq!(got.len(), 2);
}

#[test]
fn unknown_steps_are_refused_everywhere() {
    let doc = flow(
        "parallel",
        vec![step(
            "a",
            json!({"depends_on": ["ghost"], "for_each": "phantom.items",
                   "prompt": "{{ steps.spirit.output }}"}),
        )],
    );
    let got = refused(&doc, INVALID_FLOW);
    assert!(
        has(&got, "steps[0].configuration.depends_on[0]", "unknown_step"),
        "{got:?}"
    );
    assert!(
        has(&got, "steps[0].configuration.for_each", "unknown_step"),
        "{got:?}"
    );
    assert!(
        has(&got, "steps[0].configuration.prompt", "unknown_step"),
        "{got:?}"
    );
}

#[test]
fn self_references_are_refused() {
    let doc = flow(
        "parallel",
        vec![step(
            "a",
            json!({"depends_on": ["a"], "system": "{{ steps.a.output }}"}),
        )],
    );
    let got = refused(&doc, INVALID_FLOW);
    assert!(
        has(
            &got,
            "steps[0].configuration.depends_on[0]",
            "self_reference"
        ),
        "{got:?}"
    );
    assert!(
        has(&got, "steps[0].configuration.system", "self_reference"),
        "{got:?}"
    );
}

#[test]
fn sequential_refuses_forward_references_parallel_allows_them() {
    let steps = vec![
        step(
            "a",
            json!({"prompt": "Use {{ steps.b.output }}", "depends_on": ["c"]}),
        ),
        step("b", json!({})),
        step("c", json!({})),
    ];
    let got = refused(&flow("sequential", steps.clone()), INVALID_FLOW);
    assert!(
        has(&got, "steps[0].configuration.prompt", "forward_reference"),
        "{got:?}"
    );
    assert!(
        has(
            &got,
            "steps[0].configuration.depends_on[0]",
            "forward_reference"
        ),
        "{got:?}"
    );
    let f = accepted(&flow("parallel", steps));
    assert_eq!(f.dependencies(0), vec![1, 2]);
    assert_eq!(f.depth(), 2);
    // Absent execution_mode means sequential.
    let mut doc = flow(
        "sequential",
        vec![
            step("a", json!({"depends_on": ["b"]})),
            step("b", json!({})),
        ],
    );
    if let Some(o) = doc.as_object_mut() {
        o.remove("execution_mode");
    }
    assert!(has(
        &refused(&doc, INVALID_FLOW),
        "steps[0].configuration.depends_on[0]",
        "forward_reference"
    ));
}

#[test]
fn cycles_are_reported_with_their_steps() {
    let doc = flow(
        "parallel",
        vec![
            step("a", json!({"prompt": "{{ steps.c.output }}"})),
            step("b", json!({"depends_on": ["a"]})),
            step("c", json!({"for_each": "b", "prompt": "{{ item }}"})),
            step("d", json!({"depends_on": ["c"]})),
        ],
    );
    let err = parse_flow(&doc).err();
    let details = err.and_then(|e| e.details).unwrap_or_default();
    let cycles: Vec<&Value> = details["issues"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["code"] == "cycle")
        .collect();
    assert_eq!(cycles.len(), 1, "{details}");
    assert_eq!(cycles[0]["steps"], json!(["a", "c", "b"]));
    assert_eq!(cycles[0]["path"], "steps[0]");
}

#[test]
fn for_each_needs_a_json_source() {
    let doc = flow(
        "sequential",
        vec![
            step("a", json!({})),
            step("b", json!({"for_each": "a.items", "prompt": "{{ item }}"})),
        ],
    );
    let got = refused(&doc, INVALID_FLOW);
    assert_eq!(
        got,
        [(
            "steps[1].configuration.for_each".to_string(),
            "for_each_not_json".to_string()
        )]
    );
    let doc = flow("sequential", vec![step("a", json!({"for_each": "a..b"}))]);
    assert!(has(
        &refused(&doc, INVALID_FLOW),
        "steps[0].configuration.for_each",
        "invalid_for_each"
    ));
}

#[test]
fn providers_must_be_known_including_fallbacks() {
    let doc = flow(
        "sequential",
        vec![step(
            "a",
            json!({"provider": "openia", "fallbacks": [{"provider": "anthropic", "model": "m"},
                   {"provider": "cohere", "model": "c"}, {"provider": "openai", "model": ""}]}),
        )],
    );
    let got = refused(&doc, INVALID_FLOW);
    assert!(
        has(&got, "steps[0].configuration.provider", "unknown_provider"),
        "{got:?}"
    );
    assert!(
        has(
            &got,
            "steps[0].configuration.fallbacks[1].provider",
            "unknown_provider"
        ),
        "{got:?}"
    );
    assert!(
        has(
            &got,
            "steps[0].configuration.fallbacks[2].model",
            "missing_field"
        ),
        "{got:?}"
    );
    assert_eq!(got.len(), 3);
}

#[test]
fn parameters_out_of_range() {
    let fallbacks: Vec<Value> = (0..6)
        .map(|_| json!({"provider": "openai", "model": "m"}))
        .collect();
    let doc = flow(
        "sequential",
        vec![
            step(
                "a",
                json!({"temperature": 2.5, "max_tokens": 0, "timeout_s": 901, "retries": 11,
                   "fallbacks": fallbacks}),
            ),
            step(
                "b",
                json!({"temperature": -0.1, "max_tokens": 1.5, "retries": -1}),
            ),
        ],
    );
    let got = refused(&doc, INVALID_FLOW);
    for path in [
        "steps[0].configuration.temperature",
        "steps[0].configuration.max_tokens",
        "steps[0].configuration.timeout_s",
        "steps[0].configuration.retries",
        "steps[0].configuration.fallbacks",
        "steps[1].configuration.temperature",
        "steps[1].configuration.max_tokens",
        "steps[1].configuration.retries",
    ] {
        assert!(has(&got, path, "out_of_range"), "{path}: {got:?}");
    }
    assert_eq!(got.len(), 8);
    // The limits themselves are fine.
    let ok = flow(
        "sequential",
        vec![step(
            "a",
            json!({"temperature": 2, "max_tokens": 200000, "timeout_s": 900, "retries": 0}),
        )],
    );
    let f = accepted(&ok);
    assert_eq!(f.steps[0].config.max_tokens, Some(200_000));
    assert_eq!(f.steps[0].config.temperature, Some(2.0));
}

#[test]
fn names_and_step_counts_are_bounded() {
    let mut doc = flow("sequential", vec![step("a", json!({}))]);
    doc["name"] = json!("n".repeat(201));
    doc["steps"][0]["name"] = json!("  ");
    let got = refused(&doc, INVALID_FLOW);
    assert!(has(&got, "name", "out_of_range"));
    assert!(has(&got, "steps[0].name", "out_of_range"));
    let many: Vec<Value> = (0..101)
        .map(|i| step(&format!("s{i}"), json!({})))
        .collect();
    assert!(has(
        &refused(&flow("parallel", many), INVALID_FLOW),
        "steps",
        "out_of_range"
    ));
}

#[test]
fn enumerations_are_checked() {
    let mut doc = flow("async", vec![step("a", json!({"output": "xml"}))]);
    doc["type"] = json!("half");
    doc["tier"] = json!("gold");
    let got = refused(&doc, INVALID_FLOW);
    for path in [
        "type",
        "execution_mode",
        "tier",
        "steps[0].configuration.output",
    ] {
        assert!(has(&got, path, "invalid_value"), "{path}: {got:?}");
    }
}

#[test]
fn unknown_configuration_keys_are_refused_but_ui_keys_kept() {
    let doc = flow(
        "sequential",
        vec![step(
            "a",
            json!({"max_token": 5, "x_color": "red", "uiState": {"open": true}}),
        )],
    );
    let err = parse_flow(&doc).err();
    let msg = err.as_ref().map(|e| e.message.clone()).unwrap_or_default();
    assert!(msg.contains("did you mean \"max_tokens\""), "{msg}");
    let got = err
        .as_ref()
        .map(crate::flow::test_support::issues)
        .unwrap_or_default();
    assert_eq!(
        got,
        [(
            "steps[0].configuration.max_token".to_string(),
            "unknown_field".to_string()
        )]
    );

    let doc = flow(
        "sequential",
        vec![step(
            "a",
            json!({"x_color": "red", "uiState": {"open": true}}),
        )],
    );
    let f = accepted(&doc);
    assert_eq!(f.steps[0].configuration["uiState"], json!({"open": true}));
    assert_eq!(f.steps[0].configuration["x_color"], "red");
}

#[test]
fn template_problems() {
    let doc = flow(
        "sequential",
        vec![
            step("a", json!({"prompt": "{{ input.topic ", "output": "json"})),
            step(
                "b",
                json!({"prompt": "{{ topic | upper }} {{ item.title }} {{ loop.index }}"}),
            ),
            step(
                "c",
                json!({"prompt": "{{ steps.b.result }} {{ steps.b.outputs }} {{ steps.b.output.x }}"}),
            ),
            step(
                "d",
                json!({"prompt": "{% for s in steps %}{{ s }}{% endfor %}"}),
            ),
        ],
    );
    let got = refused(&doc, INVALID_FLOW);
    assert!(
        has(&got, "steps[0].configuration.prompt", "template_syntax"),
        "{got:?}"
    );
    let count = |path: &str, code: &str| got.iter().filter(|(p, c)| p == path && c == code).count();
    assert_eq!(
        count("steps[1].configuration.prompt", "unknown_variable"),
        3,
        "{got:?}"
    );
    assert_eq!(
        count("steps[2].configuration.prompt", "unknown_variable"),
        3,
        "{got:?}"
    );
    assert!(
        has(
            &got,
            "steps[3].configuration.prompt",
            "dynamic_step_reference"
        ),
        "{got:?}"
    );
}

#[test]
fn templates_may_use_globals_filters_and_hyphenated_ids() {
    let doc = flow(
        "parallel",
        vec![
            step("first-draft", json!({"output": "json"})),
            step(
                "b",
                json!({"for_each": "first-draft.parts",
                       "prompt": "{% for i in range(2) %}{{ loop.index }}{% endfor %} {{ item_index }} {{ steps['first-draft'].output | tojson }} {{ input.x | default('y') }}"}),
            ),
        ],
    );
    let f = accepted(&doc);
    assert_eq!(f.dependencies(1), vec![0]);
    let cfg = &f.steps[1].config;
    assert_eq!(
        cfg.for_each,
        Some(ForEach {
            step: "first-draft".into(),
            path: vec!["parts".into()]
        })
    );
}

#[test]
fn hyphenated_ids_in_attribute_syntax_get_a_hint() {
    let doc = flow(
        "sequential",
        vec![
            step("first-draft", json!({})),
            step("b", json!({"prompt": "{{ steps.first-draft.output }}"})),
        ],
    );
    let details = parse_flow(&doc)
        .err()
        .and_then(|e| e.details)
        .unwrap_or_default();
    let hinted = details["issues"].as_array().into_iter().flatten().any(|i| {
        i["code"] == "unknown_step"
            && i["message"]
                .as_str()
                .is_some_and(|m| m.contains("steps[\"first-draft\"]"))
    });
    assert!(hinted, "{details}");
}

#[test]
fn every_problem_of_the_stage_is_listed() {
    let doc = flow(
        "sequential",
        vec![
            step("a", json!({"provider": "nope", "temperature": 9})),
            step(
                "b",
                json!({"depends_on": ["zzz"], "prompt": "{{ what | trim }}"}),
            ),
        ],
    );
    let got = refused(&doc, INVALID_FLOW);
    assert_eq!(got.len(), 4, "{got:?}");
}

#[test]
fn ids_follow_the_rules() {
    for ok in ["a", "outline", "chapter-2", "a_b", &"a".repeat(64)] {
        assert!(valid_id(ok), "{ok}");
    }
    for bad in ["", "1a", "_a", "A", "a b", "é", &"a".repeat(65)] {
        assert!(!valid_id(bad), "{bad}");
    }
}

#[test]
fn for_each_specs_parse() {
    assert_eq!(
        parse_for_each("outline.chapters"),
        Some(ForEach {
            step: "outline".into(),
            path: vec!["chapters".into()]
        })
    );
    assert_eq!(parse_for_each("outline").map(|f| f.path.len()), Some(0));
    assert_eq!(parse_for_each("outline..x"), None);
    assert_eq!(parse_for_each(".x"), None);
    assert_eq!(parse_for_each("x."), None);
}

#[test]
fn suggestions_for_typos() {
    assert_eq!(
        closest("max_token", &["max_tokens", "model"]),
        Some("max_tokens")
    );
    assert_eq!(closest("zzzzzz", &["max_tokens", "model"]), None);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
}
