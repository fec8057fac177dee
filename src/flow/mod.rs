//! Flow documents: parse, check and convert a SuperAdmin's multi-step AI flow,
//! and render its prompt templates.
//!
//! [`parse_flow`] first reads the React app's shapes (stage 0, `normalize`:
//! camelCase keys, `for_each` as a template path, bare `{{name}}`; each rewrite
//! becomes a [`Note`] on the flow), then runs four stages and fails at the first
//! stage that finds anything, listing every problem of that stage in
//! `details.issues = [{"path", "code", "message", ...}]` (and the notes in
//! `details.notes`):
//!
//! 1. shape (`invalid_flow`): JSON types of the document and its members; then
//!    what stage 0 could not read because it means two things (`invalid_flow`,
//!    `ambiguous_key` / `ambiguous_reference`);
//! 2. secrets (`secret_in_flow`): credential-like keys or values anywhere,
//!    because an engine row is readable by every user it is assigned to;
//! 3. readiness (`flow_not_ready`, with `details.readiness` 0..=100): every
//!    step has a provider, a model and a prompt;
//! 4. validation (`invalid_flow`): values, references, templates, cycles.
//!
//! The JSON Schema of the document is `docs/flow.schema.json`; an example is
//! `examples/book-flow.json`.

mod convert;
mod document;
mod graph;
mod issue;
mod normalize;
mod readiness;
mod secrets;
mod shape;
mod template;
mod validate;

pub use convert::SCHEMA_VERSION;
pub use document::{
    EngineRow, ExecutionMode, Flow, ForEach, ModelRef, OutputKind, Step, StepConfig, Tier,
};
pub use normalize::{aliases, Note};
pub use template::{references, render};

use serde_json::Value;

use crate::error::{codes, Result};
use issue::stage_error;

/// The providers a step (or a fallback) may name.
pub const PROVIDERS: &[&str] = &[
    "openai",
    "anthropic",
    "gemini",
    "ollama",
    "openai_compatible",
    "offline",
    "local",
];

/// Checks a flow document (see the module docs for the stages) and returns
/// the typed flow.
pub fn parse_flow(doc: &Value) -> Result<Flow> {
    let normalized = normalize::normalize(doc);
    let notes = normalized.notes;
    parse_normalized(&normalized.doc, &normalized.issues)
        .map(|mut flow| {
            flow.notes.clone_from(&notes);
            flow
        })
        .map_err(|e| with_notes(e, &notes))
}

fn parse_normalized(doc: &Value, ambiguities: &[issue::Issue]) -> Result<Flow> {
    let raw = shape::check(doc)
        .map_err(|issues| stage_error(codes::INVALID_FLOW, "invalid flow", &issues, None))?;
    if !ambiguities.is_empty() {
        return Err(stage_error(
            codes::INVALID_FLOW,
            "invalid flow",
            ambiguities,
            None,
        ));
    }
    let found = secrets::scan(doc);
    if !found.is_empty() {
        return Err(stage_error(
            codes::SECRET_IN_FLOW,
            "the flow contains what looks like a credential; provider keys belong in the server configuration",
            &found,
            None,
        ));
    }
    readiness::check(&raw).map_err(|(percent, issues)| {
        stage_error(
            codes::FLOW_NOT_READY,
            &format!("the flow is {percent}% ready"),
            &issues,
            Some(("readiness", Value::from(percent))),
        )
    })?;
    validate::build(&raw)
        .map_err(|issues| stage_error(codes::INVALID_FLOW, "invalid flow", &issues, None))
}

/// The rewrites stage 0 made, next to the issues of a refused flow: the admin
/// fixes the rest knowing how their spelling was read.
fn with_notes(mut err: crate::error::Error, notes: &[Note]) -> crate::error::Error {
    if notes.is_empty() {
        return err;
    }
    if let Some(Value::Object(details)) = err.details.as_mut() {
        details.insert(
            "notes".into(),
            serde_json::to_value(notes).unwrap_or_default(),
        );
    }
    err
}

/// Builders shared by the tests of this module's files.
#[cfg(test)]
pub(crate) mod test_support {
    use serde_json::{json, Value};

    use crate::error::Error;

    /// A fully configured step; `extra` members are merged into its configuration.
    pub fn step(id: &str, extra: Value) -> Value {
        let mut cfg = json!({"provider": "openai", "model": "gpt-4o-mini", "prompt": "Write."});
        if let (Some(c), Value::Object(e)) = (cfg.as_object_mut(), extra) {
            c.extend(e);
        }
        json!({"id": id, "name": id, "configuration": cfg})
    }

    pub fn flow(mode: &str, steps: Vec<Value>) -> Value {
        json!({"name": "Test", "type": "full", "execution_mode": mode, "steps": steps})
    }

    /// The (path, code) of every issue of a failed parse.
    pub fn issues(err: &Error) -> Vec<(String, String)> {
        let list = err
            .details
            .as_ref()
            .and_then(|d| d.get("issues"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        list.iter()
            .map(|i| {
                let field = |k: &str| i.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                (field("path"), field("code"))
            })
            .collect()
    }

    /// Parses `doc`, expecting the error `code`; returns its issues.
    pub fn refused(doc: &Value, code: crate::error::Code) -> Vec<(String, String)> {
        match super::parse_flow(doc) {
            Ok(_) => panic!("expected {code}, the flow was accepted"),
            Err(e) => {
                assert_eq!(e.code, code, "{e}: {:?}", e.details);
                issues(&e)
            }
        }
    }

    /// Whether the issues contain exactly this (path, code).
    pub fn has(list: &[(String, String)], path: &str, code: &str) -> bool {
        list.iter().any(|(p, c)| p == path && c == code)
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{flow, has, issues, refused, step};
    use super::*;
    use crate::error::Kind;
    use proptest::prelude::*;
    use serde_json::json;

    const EXAMPLE: &str = include_str!("../../examples/book-flow.json");

    #[test]
    fn the_example_book_flow_parses() {
        let doc: Value = serde_json::from_str(EXAMPLE).unwrap_or_default();
        let f = match parse_flow(&doc) {
            Ok(f) => f,
            Err(e) => panic!("{e} {:?}", e.details),
        };
        assert_eq!(f.execution_mode, ExecutionMode::Parallel);
        assert_eq!(f.tier, Some(Tier::Pro));
        let ids: Vec<&str> = f.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["outline", "chapters", "edit"]);
        assert_eq!(f.dependencies(0), Vec::<usize>::new());
        assert_eq!(f.dependencies(1), vec![0]);
        assert_eq!(f.dependencies(2), vec![0, 1]);
        assert_eq!(f.dependencies(7), Vec::<usize>::new());
        assert_eq!(f.depth(), 3);
        assert_eq!(f.step_index("edit"), Some(2));
        assert_eq!(f.step_index("nope"), None);
        let chapters = &f.steps[1].config;
        assert_eq!(
            chapters.fallbacks,
            [ModelRef {
                provider: "openai".into(),
                model: "gpt-4o-mini".into()
            }]
        );
        assert_eq!(f.steps[0].config.output, OutputKind::Json);

        // Its prompts render with the context the worker builds.
        let outline =
            json!({"title": "Bees", "chapters": [{"title": "Hive", "summary": "Life in it"}]});
        let ctx = json!({"input": {"topic": "bees"}, "steps": {"outline": {"output": outline}},
                         "item": outline["chapters"][0], "item_index": 0, "item_number": 1});
        let prompt = render(&chapters.prompt, &ctx).unwrap_or_default();
        assert!(prompt.starts_with("Write chapter 1, \"Hive\"."), "{prompt}");
        let first = render(&f.steps[0].config.prompt, &ctx).unwrap_or_default();
        assert!(
            first.starts_with("Plan a book about bees with 3 chapters."),
            "{first}"
        );
        let ctx = json!({"input": {"topic": "bees"}, "steps": {"outline": {"output": outline},
                         "chapters": {"output": ["A", "B"], "outputs": ["A", "B"]}}});
        let edit = render(&f.steps[2].config.prompt, &ctx).unwrap_or_default();
        assert!(edit.contains("[\"A\",\"B\"]"), "{edit}");
    }

    #[test]
    fn shape_errors_come_first() {
        let got = refused(&json!("flow"), codes::INVALID_FLOW);
        assert!(has(&got, "", "invalid_type"));
        // Even with a credential inside, a malformed document is a shape error.
        let doc = json!({"name": 1, "type": "full", "steps": [], "api_key": "x"});
        let got = refused(&doc, codes::INVALID_FLOW);
        assert_eq!(got, [("name".to_string(), "invalid_type".to_string())]);
        let doc = json!({"name": "n", "type": "full", "steps": [{"id": 5}]});
        assert!(has(
            &refused(&doc, codes::INVALID_FLOW),
            "steps[0].id",
            "invalid_type"
        ));
    }

    #[test]
    fn secrets_beat_readiness_and_are_never_echoed() {
        let key = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
        let doc = json!({"name": "n", "type": "full", "steps": [
            {"id": "a", "configuration": {"provider": "openai", "apiKey": "whatever",
             "prompt": format!("Use {key}")}}]});
        let err = match parse_flow(&doc) {
            Ok(_) => panic!("accepted a flow with a key"),
            Err(e) => e,
        };
        assert_eq!(err.code, codes::SECRET_IN_FLOW);
        assert_eq!(err.kind, Kind::Invalid);
        let got = issues(&err);
        assert!(
            has(&got, "steps[0].configuration.apiKey", "secret_key"),
            "{got:?}"
        );
        assert!(
            has(&got, "steps[0].configuration.prompt", "secret_value"),
            "{got:?}"
        );
        let all = format!("{} {:?}", err.message, err.details);
        assert!(!all.contains(key) && !all.contains("whatever"), "{all}");
        // max_tokens and token_budget are not credentials.
        let ok = flow(
            "sequential",
            vec![step("a", json!({"max_tokens": 5, "x_token_budget": 3}))],
        );
        assert!(parse_flow(&ok).is_ok());
    }

    #[test]
    fn readiness_reports_the_percentage_and_every_missing_field() {
        let doc = json!({"name": "n", "type": "full", "steps": [
            step("outline", json!({})),
            {"id": "chapters", "configuration": {"provider": "anthropic", "prompt": "p"}},
            {"id": "edit", "configuration": null},
            step("extra", json!({}))]});
        let err = match parse_flow(&doc) {
            Ok(_) => panic!("accepted an unready flow"),
            Err(e) => e,
        };
        assert_eq!(err.code, codes::FLOW_NOT_READY);
        let details = err.details.clone().unwrap_or_default();
        assert_eq!(details["readiness"], 50);
        assert_eq!(
            details["issues"][0],
            json!({"path": "steps[1].configuration.model", "code": "missing_field",
                   "step_id": "chapters", "message": "step \"chapters\" has no model"})
        );
        assert_eq!(issues(&err).len(), 4);
        let empty = json!({"name": "n", "type": "full", "steps": []});
        let err = parse_flow(&empty).err();
        let readiness = err.and_then(|e| e.details).map(|d| d["readiness"].clone());
        assert_eq!(readiness, Some(json!(0)));
    }

    #[test]
    fn react_spellings_are_read_and_noted_even_when_the_flow_is_refused() {
        let doc = json!({"name": "n", "type": "full", "steps": [
            {"id": "a", "configuration": {"provider": "openai", "model": "m",
              "prompt": "About {{topic}} and {{topic}}.", "maxTokens": 10, "timeout": 30}}]});
        let f = match parse_flow(&doc) {
            Ok(f) => f,
            Err(e) => panic!("{e} {:?}", e.details),
        };
        assert_eq!(f.steps[0].config.max_tokens, Some(10));
        assert_eq!(f.steps[0].config.timeout_s, Some(30));
        assert_eq!(
            f.steps[0].config.prompt,
            "About {{ input.topic }} and {{ input.topic }}."
        );
        assert_eq!(f.notes.len(), 3, "{:?}", f.notes);
        // Stored canonical: reading the row again changes nothing and notes nothing.
        let row = f.to_engine_row();
        let again = Flow::from_engine(&row.name, &row.flow_config, None, None);
        assert!(again.is_ok_and(|g| g.notes.is_empty() && g.steps == f.steps));
        // A timeout in milliseconds is refused at the canonical path, with the note.
        let mut ms = doc.clone();
        ms["steps"][0]["configuration"]["timeout"] = json!(30000);
        let err = parse_flow(&ms).err();
        let got = err.as_ref().map(issues).unwrap_or_default();
        assert!(
            has(&got, "steps[0].configuration.timeout_s", "out_of_range"),
            "{got:?}"
        );
        let notes = err
            .and_then(|e| e.details)
            .map(|d| d["notes"].clone())
            .unwrap_or_default();
        assert!(
            notes
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["from"] == "timeout")),
            "{notes}"
        );
        // Two readings: refused with both named, before secrets and readiness.
        let both = json!({"name": "n", "type": "full", "steps": [
            {"id": "a", "configuration": {"maxTokens": 1, "max_tokens": 2}}]});
        let got = refused(&both, codes::INVALID_FLOW);
        assert_eq!(
            got,
            [(
                "steps[0].configuration.maxTokens".to_string(),
                "ambiguous_key".to_string()
            )]
        );
    }

    // ---- property tests -------------------------------------------------

    fn arb_key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("name".to_string()),
            Just("type".to_string()),
            Just("steps".to_string()),
            Just("id".to_string()),
            Just("configuration".to_string()),
            Just("provider".to_string()),
            Just("model".to_string()),
            Just("prompt".to_string()),
            Just("system".to_string()),
            Just("for_each".to_string()),
            Just("depends_on".to_string()),
            Just("fallbacks".to_string()),
            Just("output".to_string()),
            Just("execution_mode".to_string()),
            Just("max_tokens".to_string()),
            Just("temperature".to_string()),
            Just("x_ui".to_string()),
            "[a-zA-Z_-]{0,8}",
        ]
    }

    fn arb_text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("openai".to_string()),
            Just("json".to_string()),
            Just("parallel".to_string()),
            Just("full".to_string()),
            Just("a".to_string()),
            Just("a.items".to_string()),
            Just("{{ steps.a.output }}".to_string()),
            Just("{{ item }}".to_string()),
            Just("sk-abcdefghijklmnopqrstu".to_string()),
            "[ -~]{0,24}",
            "\\PC{0,12}",
        ]
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            arb_text().prop_map(Value::from),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(arb_key(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_template() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("{{".to_string()),
            Just("}}".to_string()),
            Just("{%".to_string()),
            Just("%}".to_string()),
            Just("{#".to_string()),
            Just(" for x in ".to_string()),
            Just(" endfor ".to_string()),
            Just(" if ".to_string()),
            Just(" steps".to_string()),
            Just("[".to_string()),
            Just("]".to_string()),
            Just("'".to_string()),
            Just(".output".to_string()),
            Just(" item".to_string()),
            Just(" input".to_string()),
            Just("|".to_string()),
            Just("tojson".to_string()),
            Just("default(".to_string()),
            Just(")".to_string()),
            "[ -~]{0,6}",
            "\\PC{0,3}",
        ];
        prop::collection::vec(piece, 0..16).prop_map(|v| v.concat())
    }

    /// Cases per property: a quick default in every run; the long run sets
    /// BOOKENGINE_FUZZ_CASES (e.g. 1000000).
    fn fuzz_cases(default: u32) -> u32 {
        std::env::var("BOOKENGINE_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: fuzz_cases(600), ..ProptestConfig::default() })]

        #[test]
        fn parse_flow_never_panics(doc in arb_json()) {
            let _ = parse_flow(&doc);
            let wrapped = json!({"name": "n", "type": "full", "steps": [doc.clone()]});
            let _ = parse_flow(&wrapped);
            let _ = Flow::from_engine("n", &json!({"type": "full", "steps": doc}), Some("parallel"), None);
        }

        #[test]
        fn normalizing_twice_changes_nothing(doc in arb_json(), tmpl in arb_template(), key in arb_key()) {
            let mut cfg = serde_json::Map::new();
            cfg.insert(key.clone(), doc.clone());
            cfg.insert("prompt".into(), Value::from(tmpl.clone()));
            cfg.insert("forEach".into(), Value::from(tmpl.clone()));
            let shaped = json!({"steps": [{"id": "a", "configuration": cfg},
                                          {"id": key, "configuration": {"systemPrompt": tmpl}}]});
            for d in [doc, shaped] {
                let once = normalize::normalize(&d);
                if once.issues.is_empty() {
                    let twice = normalize::normalize(&once.doc);
                    prop_assert_eq!(&twice.doc, &once.doc);
                    prop_assert!(twice.notes.is_empty(), "{:?}", twice.notes);
                }
            }
        }

        #[test]
        fn render_never_panics(tmpl in arb_template(), ctx in arb_json()) {
            let _ = render(&tmpl, &ctx);
            let _ = references(&tmpl);
            let ctx = json!({"input": ctx, "steps": {"a": {"output": [1, {"b": "c"}]}}, "item": "i"});
            let _ = render(&tmpl, &ctx);
            let doc = flow("parallel", vec![step("a", json!({"output": "json"})),
                                            step("b", json!({"prompt": tmpl, "for_each": "a"}))]);
            let _ = parse_flow(&doc);
        }
    }

    /// A step of a random graph. References are raw numbers that
    /// `graph_doc` turns into mostly earlier, sometimes later, self or
    /// missing steps, so that both accepted and refused graphs are common.
    #[derive(Debug, Clone)]
    struct GenStep {
        depends_on: Vec<u32>,
        template_refs: Vec<u32>,
        for_each: Option<u32>,
        json: bool,
    }

    fn arb_graph() -> impl Strategy<Value = (bool, Vec<GenStep>)> {
        let gen_step = (
            prop::collection::vec(any::<u32>(), 0..3),
            prop::collection::vec(any::<u32>(), 0..3),
            prop::option::weighted(0.3, any::<u32>()),
            prop::bool::weighted(0.8),
        )
            .prop_map(|(depends_on, template_refs, for_each, json)| GenStep {
                depends_on,
                template_refs,
                for_each,
                json,
            });
        (any::<bool>(), prop::collection::vec(gen_step, 1..8))
    }

    /// The step id a raw reference from step `i` of `n` points at; `None`
    /// drops the reference (an "earlier" step of the first step).
    fn target(raw: u32, i: usize, n: usize) -> Option<String> {
        let r = raw as usize;
        let j = match r % 40 {
            0 => n,              // missing
            1 => i,              // itself
            2..=5 => r / 40 % n, // anywhere
            _ if i == 0 => return None,
            _ => r / 40 % i, // earlier
        };
        Some(format!("s{j}"))
    }

    fn graph_doc(parallel: bool, steps: &[GenStep]) -> Value {
        let n = steps.len();
        let docs = steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut prompt: String = s
                    .template_refs
                    .iter()
                    .filter_map(|r| target(*r, i, n))
                    .map(|id| format!("{{{{ steps.{id}.output }}}} "))
                    .collect();
                if s.for_each.is_some_and(|r| target(r, i, n).is_some()) {
                    prompt.push_str("{{ item }}");
                }
                prompt.push_str("go");
                let depends_on: Vec<String> = s
                    .depends_on
                    .iter()
                    .filter_map(|r| target(*r, i, n))
                    .collect();
                let mut cfg = json!({
                    "prompt": prompt,
                    "depends_on": depends_on,
                    "output": if s.json { "json" } else { "text" },
                });
                if let Some(src) = s.for_each.and_then(|r| target(r, i, n)) {
                    cfg["for_each"] = json!(format!("{src}.items"));
                }
                step(&format!("s{i}"), cfg)
            })
            .collect();
        flow(if parallel { "parallel" } else { "sequential" }, docs)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: fuzz_cases(800), ..ProptestConfig::default() })]

        #[test]
        fn accepted_graphs_are_closed_and_acyclic((parallel, steps) in arb_graph()) {
            let doc = graph_doc(parallel, &steps);
            let Ok(f) = parse_flow(&doc) else { return Ok(()); };
            let n = f.steps.len();
            let deps = f.graph();
            for (i, ds) in deps.iter().enumerate() {
                for &d in ds {
                    prop_assert!(d < n && d != i, "dangling or self dependency {i} -> {d}");
                    if !parallel {
                        prop_assert!(d < i, "forward dependency {i} -> {d} in sequential mode");
                    }
                }
                let s = &f.steps[i];
                for dep in &s.config.depends_on {
                    prop_assert!(f.step_index(dep).is_some());
                }
                if let Some(fe) = &s.config.for_each {
                    let src = f.step_index(&fe.step);
                    prop_assert!(src.is_some_and(|j| f.steps[j].config.output == OutputKind::Json));
                }
            }
            prop_assert_eq!(graph::topological_order(deps).len(), n, "cycle accepted");
            prop_assert!(f.depth() >= 1 && f.depth() <= n);
            // What was accepted must also survive a store and reload.
            let row = f.to_engine_row();
            let back = Flow::from_engine(&row.name, &row.flow_config, Some(&row.execution_mode), None);
            prop_assert!(back.is_ok());
        }
    }
}
