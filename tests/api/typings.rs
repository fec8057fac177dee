//! `supabase/client/engines.d.ts` held to the JSON the API really returns: every key
//! the API sends is declared in the type, and every field the type promises (not
//! marked `?`) is sent. The types are read from the file itself, so an API change
//! without its type (or the reverse) fails here.

use crate::kit::app::{app_with_mocks, book_setup};
use crate::kit::http::JsonCalls;
use crate::kit::jobs::generate;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

const TYPES: &str = include_str!("../../supabase/client/engines.d.ts");

#[derive(Debug, Default)]
struct Interface {
    /// (name, optional)
    fields: Vec<(String, bool)>,
    /// `[key: string]: …`: any other key is allowed.
    open: bool,
    /// `extends Parent` or `extends Omit<Parent, "a" | "b">`.
    parent: Option<(String, Vec<String>)>,
}

/// Every `export interface` of the file, by name. Fields are the lines indented by
/// two spaces inside the block (each field of the file is on one line).
fn interfaces() -> HashMap<String, Interface> {
    let mut all = HashMap::new();
    let mut current: Option<(String, Interface)> = None;
    for line in TYPES.lines() {
        if let Some(rest) = line.strip_prefix("export interface ") {
            let (head, _) = rest.split_once('{').expect("interface head");
            let (name, parent) = match head.split_once(" extends ") {
                Some((name, parent)) => (name.trim(), Some(parse_parent(parent.trim()))),
                None => (head.trim(), None),
            };
            current = Some((
                name.to_owned(),
                Interface {
                    parent,
                    ..Default::default()
                },
            ));
            continue;
        }
        let Some((_, iface)) = current.as_mut() else {
            continue;
        };
        if line == "}" {
            if let Some((name, iface)) = current.take() {
                all.insert(name, iface);
            }
            continue;
        }
        let Some(field) = line.strip_prefix("  ").filter(|l| !l.starts_with(' ')) else {
            continue;
        };
        if field.starts_with("[key: string]") {
            iface.open = true;
        } else if let Some((name, _)) = field.split_once(':') {
            let optional = name.ends_with('?');
            let name = name.trim_end_matches('?');
            if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                iface.fields.push((name.to_owned(), optional));
            }
        }
    }
    all
}

fn parse_parent(text: &str) -> (String, Vec<String>) {
    match text.strip_prefix("Omit<").and_then(|t| t.strip_suffix('>')) {
        Some(inner) => {
            let (parent, omitted) = inner.split_once(',').expect("Omit<T, K>");
            let omitted = omitted
                .split('|')
                .map(|k| k.trim().trim_matches('"').to_owned())
                .collect();
            (parent.trim().to_owned(), omitted)
        }
        None => (text.to_owned(), Vec::new()),
    }
}

/// The fields of `name`, its parents' included (minus what an `Omit` leaves out).
fn fields(all: &HashMap<String, Interface>, name: &str) -> (Vec<(String, bool)>, bool) {
    let iface = all
        .get(name)
        .unwrap_or_else(|| panic!("no interface {name} in engines.d.ts"));
    let mut own = iface.fields.clone();
    let mut open = iface.open;
    if let Some((parent, omitted)) = &iface.parent {
        let (inherited, parent_open) = fields(all, parent);
        open |= parent_open;
        own.extend(inherited.into_iter().filter(|(f, _)| !omitted.contains(f)));
    }
    (own, open)
}

/// What of `value` disagrees with the interface `name`: keys it does not declare,
/// and required fields that are missing.
fn disagreements(all: &HashMap<String, Interface>, name: &str, value: &Value) -> Vec<String> {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("{name}: not an object: {value}"));
    let (declared, open) = fields(all, name);
    let names: BTreeSet<&str> = declared.iter().map(|(f, _)| f.as_str()).collect();
    let mut wrong = Vec::new();
    if !open {
        for key in object.keys() {
            if !names.contains(key.as_str()) {
                wrong.push(format!(
                    "{name}: the API sends `{key}`, the type does not declare it"
                ));
            }
        }
    }
    for (field, optional) in &declared {
        if !optional && !object.contains_key(field) {
            wrong.push(format!(
                "{name}: the type promises `{field}`, the API does not send it"
            ));
        }
    }
    wrong
}

#[test]
fn the_reader_of_the_types_finds_fields_parents_and_omissions() {
    let all = interfaces();
    let (engine, _) = fields(&all, "Engine");
    assert!(engine.contains(&("flow_config".into(), false)));
    assert!(engine.contains(&("check".into(), true)));
    let (choice, _) = fields(&all, "EngineChoice");
    assert!(choice.iter().any(|(f, _)| f == "flow_config"));
    assert!(!choice.iter().any(|(f, _)| f == "created_by"));
    let (detail, _) = fields(&all, "GenerationDetail");
    assert!(detail.iter().any(|(f, _)| f == "steps"));
    assert!(detail.iter().any(|(f, _)| f == "engine_version"));
    assert!(all["EngineCheck"].fields.iter().any(|(f, _)| f == "issues"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_types_match_the_json_the_api_returns() {
    let all = interfaces();
    let (app, _mocks) = app_with_mocks().await;
    let (admin, pro, engine) = book_setup(&app).await;
    let mut wrong = Vec::new();

    let (s, shown) = app
        .get(&format!("/v1/engines/{engine}"), &admin.token)
        .await;
    assert_eq!(s, 200, "{shown}");
    wrong.extend(disagreements(&all, "Engine", &shown));
    if let Some(check) = shown.get("check").filter(|c| !c.is_null()) {
        wrong.extend(disagreements(&all, "EngineCheck", check));
    }
    let (s, listed) = app.get("/v1/engines", &admin.token).await;
    assert_eq!(s, 200, "{listed}");
    for e in listed.as_array().expect("engines") {
        wrong.extend(disagreements(&all, "Engine", e));
    }

    let (s, assignments) = app
        .get(&format!("/v1/assignments?engine_id={engine}"), &admin.token)
        .await;
    assert_eq!(s, 200, "{assignments}");
    let assignments = assignments.as_array().expect("assignments");
    assert!(!assignments.is_empty());
    for a in assignments {
        wrong.extend(disagreements(&all, "Assignment", a));
    }

    let (s, choice) = app.get("/v1/me/engine", &pro.token).await;
    assert_eq!(s, 200, "{choice}");
    wrong.extend(disagreements(&all, "EngineChoice", &choice));

    let detail = generate(&app, &pro, "otters", Duration::from_secs(60)).await;
    assert_eq!(detail["status"], "succeeded", "{detail}");
    wrong.extend(disagreements(&all, "GenerationDetail", &detail));
    let steps = detail["steps"].as_array().expect("steps");
    assert!(!steps.is_empty());
    for step in steps {
        wrong.extend(disagreements(&all, "GenerationStep", step));
    }
    let (s, jobs) = app.get("/v1/generations", &pro.token).await;
    assert_eq!(s, 200, "{jobs}");
    for job in jobs.as_array().expect("jobs") {
        wrong.extend(disagreements(&all, "GenerationJob", job));
    }

    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "engines.d.ts and the API disagree:\n{}",
        wrong.join("\n")
    );
}
