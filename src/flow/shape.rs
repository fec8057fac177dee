//! Stage 1: the document's JSON shape (objects, arrays, strings, numbers).
//!
//! Only types are checked here; values (ranges, references, enums) are the
//! business of [`validate`](super::validate), after the secrets and
//! readiness stages. `null` counts as absent everywhere an optional member is
//! allowed, because the React app writes `null` for cleared fields.

use serde_json::{Map, Value};

use super::issue::{index_path, key_path, Issue};

/// The JSON type a known configuration key must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    Str,
    Num,
    StrList,
    ModelList,
}

/// Every configuration key the engine understands, with its type.
pub(crate) const CONFIG_KEYS: &[(&str, Ty)] = &[
    ("provider", Ty::Str),
    ("model", Ty::Str),
    ("prompt", Ty::Str),
    ("system", Ty::Str),
    ("temperature", Ty::Num),
    ("max_tokens", Ty::Num),
    ("fallbacks", Ty::ModelList),
    ("depends_on", Ty::StrList),
    ("for_each", Ty::Str),
    ("output", Ty::Str),
    ("timeout_s", Ty::Num),
    ("retries", Ty::Num),
];

/// The document, type-checked and borrowed.
#[derive(Debug)]
pub(crate) struct RawFlow<'a> {
    pub name: &'a str,
    pub description: Option<&'a str>,
    pub flow_type: &'a str,
    pub execution_mode: Option<&'a str>,
    pub tier: Option<&'a str>,
    pub steps: Vec<RawStep<'a>>,
}

#[derive(Debug)]
pub(crate) struct RawStep<'a> {
    pub id: &'a str,
    pub name: Option<&'a str>,
    /// `None` when absent or `null`: the readiness stage reports it.
    pub configuration: Option<&'a Map<String, Value>>,
}

pub(crate) fn check(doc: &Value) -> Result<RawFlow<'_>, Vec<Issue>> {
    let Value::Object(root) = doc else {
        return Err(vec![Issue::new(
            "",
            "invalid_type",
            format!("the flow must be a JSON object, not {}", type_name(doc)),
        )]);
    };
    let mut issues = Vec::new();
    let name = required_str(root, "", "name", &mut issues);
    let description = optional_str(root, "", "description", &mut issues);
    let flow_type = required_str(root, "", "type", &mut issues);
    let execution_mode = optional_str(root, "", "execution_mode", &mut issues);
    let tier = optional_str(root, "", "tier", &mut issues);
    let steps = match root.get("steps") {
        None | Some(Value::Null) => {
            issues.push(Issue::new("steps", "missing_field", "steps is required"));
            Vec::new()
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| check_step(item, &index_path("steps", i), &mut issues))
            .collect(),
        Some(other) => {
            issues.push(wrong_type("steps", "an array", other));
            Vec::new()
        }
    };
    if !issues.is_empty() {
        return Err(issues);
    }
    Ok(RawFlow {
        name: name.unwrap_or_default(),
        description,
        flow_type: flow_type.unwrap_or_default(),
        execution_mode,
        tier,
        steps,
    })
}

fn check_step<'a>(item: &'a Value, path: &str, issues: &mut Vec<Issue>) -> Option<RawStep<'a>> {
    let Value::Object(step) = item else {
        issues.push(wrong_type(path, "an object", item));
        return None;
    };
    let id = required_str(step, path, "id", issues);
    let name = optional_str(step, path, "name", issues);
    let configuration = match step.get("configuration") {
        None | Some(Value::Null) => None,
        Some(Value::Object(cfg)) => {
            check_configuration(cfg, &key_path(path, "configuration"), issues);
            Some(cfg)
        }
        Some(other) => {
            issues.push(wrong_type(
                &key_path(path, "configuration"),
                "an object",
                other,
            ));
            None
        }
    };
    Some(RawStep {
        id: id?,
        name,
        configuration,
    })
}

fn check_configuration(cfg: &Map<String, Value>, path: &str, issues: &mut Vec<Issue>) {
    for (key, ty) in CONFIG_KEYS {
        let Some(value) = cfg.get(*key).filter(|v| !v.is_null()) else {
            continue;
        };
        let at = key_path(path, key);
        match ty {
            Ty::Str if !value.is_string() => issues.push(wrong_type(&at, "a string", value)),
            Ty::Num if !value.is_number() => issues.push(wrong_type(&at, "a number", value)),
            Ty::StrList => match value {
                Value::Array(items) => {
                    for (i, v) in items.iter().enumerate() {
                        if !v.is_string() {
                            issues.push(wrong_type(&index_path(&at, i), "a string", v));
                        }
                    }
                }
                _ => issues.push(wrong_type(&at, "an array of strings", value)),
            },
            Ty::ModelList => match value {
                Value::Array(items) => {
                    for (i, v) in items.iter().enumerate() {
                        let item_path = index_path(&at, i);
                        match v {
                            Value::Object(m) => {
                                optional_str(m, &item_path, "provider", issues);
                                optional_str(m, &item_path, "model", issues);
                            }
                            _ => issues.push(wrong_type(&item_path, "an object", v)),
                        }
                    }
                }
                _ => issues.push(wrong_type(&at, "an array of {provider, model}", value)),
            },
            Ty::Str | Ty::Num => {}
        }
    }
}

fn required_str<'a>(
    obj: &'a Map<String, Value>,
    base: &str,
    key: &str,
    issues: &mut Vec<Issue>,
) -> Option<&'a str> {
    if matches!(obj.get(key), None | Some(Value::Null)) {
        issues.push(Issue::new(
            key_path(base, key),
            "missing_field",
            format!("{key} is required"),
        ));
        return None;
    }
    optional_str(obj, base, key, issues)
}

fn optional_str<'a>(
    obj: &'a Map<String, Value>,
    base: &str,
    key: &str,
    issues: &mut Vec<Issue>,
) -> Option<&'a str> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            issues.push(wrong_type(&key_path(base, key), "a string", other));
            None
        }
    }
}

fn wrong_type(path: &str, expected: &str, got: &Value) -> Issue {
    Issue::new(
        path,
        "invalid_type",
        format!("expected {expected}, got {}", type_name(got)),
    )
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(doc: &Value) -> Vec<(String, &'static str)> {
        let mut v: Vec<_> = check(doc)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|i| (i.path, i.code))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn non_object_is_refused() {
        assert_eq!(paths(&json!([1])), [(String::new(), "invalid_type")]);
        assert_eq!(paths(&json!("x")), [(String::new(), "invalid_type")]);
    }

    #[test]
    fn all_type_problems_are_listed() {
        let doc = json!({
            "name": 5, "description": [], "execution_mode": true,
            "steps": [
                {"id": "a", "configuration": {"provider": 1, "temperature": "hot",
                    "depends_on": "b", "fallbacks": [{"provider": 2}, "x"]}},
                7,
                {"name": "no id", "configuration": "text"},
                {"id": 3}
            ]
        });
        let got = paths(&doc);
        let want = [
            ("description", "invalid_type"),
            ("execution_mode", "invalid_type"),
            ("name", "invalid_type"),
            ("steps[0].configuration.depends_on", "invalid_type"),
            (
                "steps[0].configuration.fallbacks[0].provider",
                "invalid_type",
            ),
            ("steps[0].configuration.fallbacks[1]", "invalid_type"),
            ("steps[0].configuration.provider", "invalid_type"),
            ("steps[0].configuration.temperature", "invalid_type"),
            ("steps[1]", "invalid_type"),
            ("steps[2].configuration", "invalid_type"),
            ("steps[2].id", "missing_field"),
            ("steps[3].id", "invalid_type"),
            ("type", "missing_field"),
        ];
        let want: Vec<(String, &str)> = want.iter().map(|(p, c)| (p.to_string(), *c)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn nulls_count_as_absent() {
        let doc = json!({"name": "n", "type": "full", "tier": null, "description": null,
            "steps": [{"id": "a", "configuration": {"system": null, "provider": null}}]});
        let raw = check(&doc).ok();
        let step_has_config = raw
            .as_ref()
            .and_then(|r| r.steps.first())
            .is_some_and(|s| s.configuration.is_some());
        assert!(step_has_config);
    }
}
