//! The OpenAPI document (`openapi.json`, hand-written) and the routers agree: every
//! route a module declares is documented with the same methods, and every documented
//! operation is served. Read from the modules' sources, so a route added without its
//! documentation (or the reverse) fails here rather than in a client.

use serde_json::Value;
use std::collections::BTreeSet;

/// Every HTTP module's source (all of `src/http`), so a new module is checked too.
fn sources() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("src/http")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        // This file's own examples are not routes.
        .filter(|p| p.file_name().is_some_and(|n| n != "agreement.rs"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("a module's source");
            (p.display().to_string(), text)
        })
        .collect();
    out.sort();
    out
}

/// Routes that are not part of the API and so not in the document: the admin page
/// (HTML, JS, CSS and its local-stack helper).
fn undocumented(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// `(path, method)` for every `.route("path", get(..).post(..))` in `source`.
fn declared(source: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        // The call's arguments, up to its closing parenthesis.
        let mut depth = 1usize;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let args = &rest[..end];
        let Some(path) = args.split('"').nth(1) else {
            continue;
        };
        let handlers = args.split_once(',').map(|(_, h)| h).unwrap_or_default();
        for method in METHODS {
            let called = handlers.match_indices(&format!("{method}(")).any(|(i, _)| {
                i == 0 || !handlers[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
            });
            if called {
                out.push((path.to_owned(), method.to_owned()));
            }
        }
    }
    out
}

#[test]
fn every_route_is_documented_and_every_documented_operation_is_served() {
    let doc: Value = serde_json::from_str(include_str!("openapi.json")).expect("openapi.json");
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .into_iter()
                .flat_map(|o| o.keys())
                .filter(|m| METHODS.contains(&m.as_str()))
                .map(move |m| (path.clone(), m.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = sources()
        .iter()
        .flat_map(|(_, source)| declared(source))
        .filter(|(path, _)| !undocumented(path))
        .collect();
    assert!(
        served.len() >= 20,
        "the route parser found too few: {served:?}"
    );
    let missing: Vec<_> = served.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "served but not in openapi.json: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "in openapi.json but not served: {stale:?}"
    );
}

/// The error codes the document lists are exactly the catalogue (`error::Code`).
#[test]
fn the_documented_error_codes_are_the_catalogue() {
    let doc: Value = serde_json::from_str(include_str!("openapi.json")).expect("openapi.json");
    let listed: Vec<&str> = doc["components"]["schemas"]["Error"]["properties"]["error"]
        ["properties"]["code"]["enum"]
        .as_array()
        .expect("the Error schema's code enum")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let catalogue: Vec<&str> = crate::error::Code::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, catalogue);
}

/// Every enum the document states is the Rust type's values, found by the property
/// it describes; an enum on a property not listed here fails, so a new one gets its
/// check too.
#[test]
fn the_documented_enums_are_the_rust_types() {
    use crate::assignments::AssignmentType;
    use crate::engines::check::CheckState;
    use crate::engines::versions::VersionOrigin;
    use crate::flow::{ExecutionMode, Tier};
    use crate::jobs::{JobStatus, StepStatus};
    fn words<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> Vec<String> {
        all.iter().map(|v| name(*v).to_owned()).collect()
    }
    fn walk(v: &Value, path: &str, found: &mut Vec<(String, Vec<String>)>) {
        match v {
            Value::Object(map) => {
                // A parameter's schema is named by the parameter.
                let named;
                let path = match (map.get("name").and_then(Value::as_str), map.get("in")) {
                    (Some(name), Some(_)) => {
                        named = format!("{path}/{name}");
                        named.as_str()
                    }
                    _ => path,
                };
                if let Some(Value::Array(values)) = map.get("enum") {
                    // `null` marks a nullable field, not a value of the type.
                    let values = values.iter().filter_map(Value::as_str).map(str::to_owned);
                    found.push((path.to_owned(), values.collect()));
                }
                for (k, x) in map {
                    walk(x, &format!("{path}/{k}"), found);
                }
            }
            Value::Array(items) => {
                for (i, x) in items.iter().enumerate() {
                    walk(x, &format!("{path}/{i}"), found);
                }
            }
            _ => {}
        }
    }
    let doc: Value = serde_json::from_str(include_str!("openapi.json")).expect("openapi.json");
    let mut found = Vec::new();
    walk(&doc, "", &mut found);
    assert!(found.len() >= 10, "the document's enums were not found");
    for (path, values) in found {
        let property = path
            .split('/')
            .rev()
            .find(|p| !matches!(*p, "schema" | "items") && p.parse::<usize>().is_err())
            .unwrap_or_default();
        let expected = match property {
            "code" => continue, // the_documented_error_codes_are_the_catalogue
            "tier" | "tiers" => words(&Tier::ALL, Tier::as_str),
            "execution_mode" => words(&ExecutionMode::ALL, ExecutionMode::as_str),
            "assignment_type" => words(&AssignmentType::ALL, AssignmentType::as_str),
            "state" | "check_state" => words(&CheckState::ALL, CheckState::as_str),
            "origin" => words(&VersionOrigin::ALL, VersionOrigin::as_str),
            "status" if path.contains("/Step/") => words(&StepStatus::ALL, StepStatus::as_str),
            "status" => words(&JobStatus::ALL, JobStatus::as_str),
            other => panic!("{path}: an enum on `{other}` with no Rust type to check it against"),
        };
        assert_eq!(values, expected, "{path}");
    }
}

#[test]
fn the_route_parser_reads_multi_line_routes_and_chained_methods() {
    let source = r#"
        .route("/a", get(list).post(create))
        .route(
            "/a/{id}/b",
            get(show).delete(remove),
        )
        .route("/c", post(widget()))
    "#;
    let found = declared(source);
    let found: Vec<(&str, &str)> = found
        .iter()
        .map(|(p, m)| (p.as_str(), m.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            ("/a", "get"),
            ("/a", "post"),
            ("/a/{id}/b", "get"),
            ("/a/{id}/b", "delete"),
            ("/c", "post"),
        ]
    );
}
