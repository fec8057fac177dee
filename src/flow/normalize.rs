//! Stage 0: reading the React app's shapes where their meaning is unambiguous.
//!
//! The seed's editor writes `ai_engines` straight through supabase-js, in its own
//! dialect: camelCase configuration keys (`maxTokens`, `systemPrompt`), `for_each`
//! as the template path (`steps.outline.output.chapters`, perhaps inside `{{ }}`)
//! and bare placeholders (`{{topic}}`, `{{outline}}`). Each is rewritten to the
//! canonical form and recorded as a [`Note`] the admin sees; a spelling that could
//! mean two things is refused with both readings named, never guessed.
//!
//! Runs before every other stage, on any JSON: what it does not recognise it
//! leaves for the shape stage to report.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::issue::{index_path, key_path, quote, Issue};
use super::shape::CONFIG_KEYS;
use super::template::{self, ITEM_VARS, ROOT_INPUT, ROOT_STEPS};

/// One rewrite: at `path`, `from` was read as `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    pub path: String,
    pub from: String,
    pub to: String,
}

/// Spellings of a configuration key other than its camelCase form (derived
/// from [`CONFIG_KEYS`]). `timeout` is read as seconds: a millisecond value is
/// over `timeout_s`'s limit (900) and refused with its path, never taken as hours.
const EXTRA_ALIASES: &[(&str, &str)] = &[
    ("systemPrompt", "system"),
    ("system_prompt", "system"),
    ("outputFormat", "output"),
    ("output_format", "output"),
    ("timeout", "timeout_s"),
];

/// The document after stage 0, what was rewritten, and what could not be.
#[derive(Debug)]
pub(crate) struct Normalized {
    pub doc: Value,
    pub notes: Vec<Note>,
    pub issues: Vec<Issue>,
}

/// `max_tokens` -> `maxTokens`, `timeout_s` -> `timeoutS`.
fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The canonical key an alias stands for (`None` for canonical and unknown keys).
pub(crate) fn alias_target(key: &str) -> Option<&'static str> {
    if let Some((_, to)) = EXTRA_ALIASES.iter().find(|(from, _)| *from == key) {
        return Some(to);
    }
    CONFIG_KEYS
        .iter()
        .map(|(k, _)| *k)
        .find(|k| *k != key && camel(k) == key)
}

/// Every alias, for documentation and the SQL trigger's tests.
pub fn aliases() -> Vec<(String, &'static str)> {
    let mut all: Vec<(String, &'static str)> = CONFIG_KEYS
        .iter()
        .filter(|(k, _)| camel(k) != *k)
        .map(|(k, _)| (camel(k), *k))
        .collect();
    all.extend(EXTRA_ALIASES.iter().map(|(f, t)| (f.to_string(), *t)));
    all
}

pub(crate) fn normalize(doc: &Value) -> Normalized {
    let mut out = Normalized {
        doc: doc.clone(),
        notes: Vec::new(),
        issues: Vec::new(),
    };
    let Some(steps) = out.doc.get_mut("steps").and_then(Value::as_array_mut) else {
        return out;
    };
    // Keys first: the placeholders' readings depend on the renamed prompts.
    for (i, step) in steps.iter_mut().enumerate() {
        let path = key_path(&index_path("steps", i), "configuration");
        if let Some(cfg) = step.get_mut("configuration").and_then(Value::as_object_mut) {
            rename_keys(cfg, &path, &mut out.notes, &mut out.issues);
        }
    }
    let ids: BTreeSet<String> = steps
        .iter()
        .filter_map(|s| s.get("id").and_then(Value::as_str).map(str::to_string))
        .collect();
    let inputs = input_fields(steps);
    for (i, step) in steps.iter_mut().enumerate() {
        let path = key_path(&index_path("steps", i), "configuration");
        let Some(cfg) = step.get_mut("configuration").and_then(Value::as_object_mut) else {
            continue;
        };
        if let Some(Value::String(spec)) = cfg.get_mut("for_each") {
            let at = key_path(&path, "for_each");
            match for_each(spec, &ids) {
                Ok(Some(canonical)) => {
                    out.notes.push(Note {
                        path: at,
                        from: spec.clone(),
                        to: canonical.clone(),
                    });
                    *spec = canonical;
                }
                Ok(None) => {}
                Err(message) => out
                    .issues
                    .push(Issue::new(at, "ambiguous_reference", message)),
            }
        }
        for key in ["prompt", "system"] {
            if let Some(Value::String(text)) = cfg.get_mut(key) {
                let at = key_path(&path, key);
                *text = placeholders(text, &at, &ids, &inputs, &mut out.notes, &mut out.issues);
            }
        }
    }
    out
}

fn rename_keys(
    cfg: &mut Map<String, Value>,
    path: &str,
    notes: &mut Vec<Note>,
    issues: &mut Vec<Issue>,
) {
    let keys: Vec<String> = cfg.keys().cloned().collect();
    for key in keys {
        let Some(to) = alias_target(&key) else {
            continue;
        };
        let at = key_path(path, &key);
        let value = cfg.get(&key).cloned().unwrap_or(Value::Null);
        match cfg.get(to).filter(|v| !v.is_null()) {
            Some(existing) if *existing != value && !value.is_null() => {
                issues.push(Issue::new(
                    at,
                    "ambiguous_key",
                    format!(
                        "both {} and {} are set, to different values; keep one",
                        quote(&key),
                        quote(to)
                    ),
                ));
                continue;
            }
            Some(_) => {}
            None => {
                cfg.insert(to.to_string(), value);
            }
        }
        cfg.remove(&key);
        notes.push(Note {
            path: at,
            from: key,
            to: to.to_string(),
        });
    }
}

/// The input fields the flow's templates name explicitly (`input.<field>`).
fn input_fields(steps: &[Value]) -> BTreeSet<String> {
    let mut fields = BTreeSet::new();
    for step in steps {
        for key in ["prompt", "system"] {
            let Some(text) = step
                .get("configuration")
                .and_then(|c| c.get(key))
                .and_then(Value::as_str)
            else {
                continue;
            };
            let Ok(analysis) = template::analyze(text) else {
                continue;
            };
            for var in &analysis.variables {
                let mut parts = var.split('.');
                if parts.next() == Some(ROOT_INPUT) {
                    fields.extend(parts.next().map(str::to_string));
                }
            }
        }
    }
    fields
}

/// `steps.outline.output.chapters` or `{{ outline.chapters }}` -> `outline.chapters`.
/// `Ok(None)` when the spec is already canonical (or not ours to read).
///
/// Only a rewrite that the rule leaves alone is made: reading the result again must
/// change nothing (`steps.steps.output.x` would become `steps.x`, then `x`), so that
/// normalizing twice is normalizing once. Anything else is left as written for the
/// checks to judge.
fn for_each(spec: &str, ids: &BTreeSet<String>) -> Result<Option<String>, String> {
    match for_each_once(spec, ids)? {
        Some(canonical) if matches!(for_each_once(&canonical, ids), Ok(None)) => {
            Ok(Some(canonical))
        }
        Some(_) => Ok(None),
        None => Ok(None),
    }
}

fn for_each_once(spec: &str, ids: &BTreeSet<String>) -> Result<Option<String>, String> {
    let trimmed = spec.trim();
    let inner = trimmed
        .strip_prefix("{{")
        .and_then(|s| s.strip_suffix("}}"))
        .map(str::trim)
        .unwrap_or(trimmed);
    let parts: Vec<&str> = inner.split('.').collect();
    let canonical = match parts.as_slice() {
        [root, id, rest @ ..]
            if *root == ROOT_STEPS && matches!(rest.first(), None | Some(&"output")) =>
        {
            let rest = rest.get(1..).unwrap_or_default();
            let reading: Vec<&str> = std::iter::once(*id)
                .chain(rest.iter().copied())
                .map(str::trim)
                .collect();
            let reading = reading.join(".");
            if ids.contains(ROOT_STEPS) {
                if ids.contains(*id) {
                    return Err(format!(
                        "{} could mean the step \"steps\" (path {}) or the step {} (path {}); write {} or {}",
                        quote(spec),
                        quote(&parts[1..].join(".")),
                        quote(id),
                        quote(&rest.join(".")),
                        quote(&format!("steps.{}", parts[1..].join("."))),
                        quote(&reading)
                    ));
                }
                inner.to_string()
            } else {
                reading
            }
        }
        _ => inner.to_string(),
    };
    Ok((canonical != spec).then_some(canonical))
}

/// Rewrites each bare `{{name}}` of `text`; returns the new text.
fn placeholders(
    text: &str,
    path: &str,
    ids: &BTreeSet<String>,
    inputs: &BTreeSet<String>,
    notes: &mut Vec<Note>,
    issues: &mut Vec<Issue>,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            break;
        };
        let whole = &rest[start..start + 2 + len + 2];
        let name = whole[2..2 + len].trim();
        out.push_str(&rest[..start]);
        match reading(name, ids, inputs) {
            Reading::Keep => out.push_str(whole),
            Reading::Both => {
                issues.push(Issue::new(
                    path,
                    "ambiguous_reference",
                    format!(
                        "{} could mean the step {} (steps.{name}.output) or the input field input.{name}; write one of them",
                        quote(whole),
                        quote(name)
                    ),
                ));
                out.push_str(whole);
            }
            Reading::As(to) => {
                let note = Note {
                    path: path.to_string(),
                    from: whole.to_string(),
                    to: to.clone(),
                };
                // `{{topic}}` twice in one prompt is one reading.
                if !notes.contains(&note) {
                    notes.push(note);
                }
                out.push_str(&to);
            }
        }
        rest = &rest[start + 2 + len + 2..];
    }
    out.push_str(rest);
    out
}

enum Reading {
    Keep,
    Both,
    As(String),
}

fn reading(name: &str, ids: &BTreeSet<String>, inputs: &BTreeSet<String>) -> Reading {
    let mut chars = name.chars();
    let ident = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ident
        || name == ROOT_INPUT
        || name == ROOT_STEPS
        || ITEM_VARS.contains(&name)
        || template::is_global(name)
    {
        return Reading::Keep;
    }
    let step = ids.contains(name);
    if step && inputs.contains(name) {
        return Reading::Both;
    }
    if step {
        return Reading::As(if name.contains('-') {
            format!("{{{{ steps[\"{name}\"].output }}}}")
        } else {
            format!("{{{{ steps.{name}.output }}}}")
        });
    }
    if name.contains('-') {
        // `a-b` is a subtraction to the template engine, and no step has that id.
        return Reading::Keep;
    }
    Reading::As(format!("{{{{ input.{name} }}}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn aliases_are_derived_from_the_real_keys() {
        assert_eq!(alias_target("maxTokens"), Some("max_tokens"));
        assert_eq!(alias_target("dependsOn"), Some("depends_on"));
        assert_eq!(alias_target("forEach"), Some("for_each"));
        assert_eq!(alias_target("timeoutS"), Some("timeout_s"));
        assert_eq!(alias_target("systemPrompt"), Some("system"));
        assert_eq!(alias_target("outputFormat"), Some("output"));
        assert_eq!(alias_target("max_tokens"), None);
        assert_eq!(alias_target("model"), None);
        assert_eq!(alias_target("topP"), None);
        assert!(aliases()
            .iter()
            .any(|(f, t)| f == "timeout" && *t == "timeout_s"));
    }

    #[test]
    fn the_react_shaped_flow_is_read() {
        let doc = json!({"name": "n", "type": "full", "steps": [
            {"id": "outline", "configuration": {"provider": "openai", "model": "m",
              "maxTokens": 100, "systemPrompt": "Be {{ tone | default('clear') }}.", "prompt": "Plan {{topic}}.",
              "outputFormat": "json"}},
            {"id": "chapters", "configuration": {"provider": "openai", "model": "m",
              "forEach": "{{ steps.outline.output.chapters }}", "prompt": "Write {{ item.title }} from {{outline}}."}}]});
        let n = normalize(&doc);
        assert!(n.issues.is_empty(), "{:?}", n.issues);
        let c0 = &n.doc["steps"][0]["configuration"];
        assert_eq!(c0["max_tokens"], 100);
        assert_eq!(c0["output"], "json");
        assert_eq!(c0["prompt"], "Plan {{ input.topic }}.");
        assert_eq!(c0["system"], "Be {{ tone | default('clear') }}.");
        assert!(c0.get("maxTokens").is_none());
        let c1 = &n.doc["steps"][1]["configuration"];
        assert_eq!(c1["for_each"], "outline.chapters");
        assert_eq!(
            c1["prompt"],
            "Write {{ item.title }} from {{ steps.outline.output }}."
        );
        let froms: Vec<&str> = n.notes.iter().map(|n| n.from.as_str()).collect();
        assert_eq!(
            froms,
            [
                "maxTokens",
                "outputFormat",
                "systemPrompt",
                "forEach",
                "{{topic}}",
                "{{ steps.outline.output.chapters }}",
                "{{outline}}"
            ]
        );
        assert_eq!(n.notes[0].path, "steps[0].configuration.maxTokens");
        assert_eq!(n.notes[4].to, "{{ input.topic }}");
    }

    #[test]
    fn both_spellings_with_different_values_are_refused() {
        let doc = json!({"steps": [{"id": "a", "configuration": {"maxTokens": 1, "max_tokens": 2,
                         "systemPrompt": "s", "system": "s"}}]});
        let n = normalize(&doc);
        assert_eq!(n.issues.len(), 1);
        assert_eq!(n.issues[0].path, "steps[0].configuration.maxTokens");
        assert_eq!(n.issues[0].code, "ambiguous_key");
        // The same value twice is one setting.
        assert_eq!(n.doc["steps"][0]["configuration"]["system"], "s");
        assert!(n.doc["steps"][0]["configuration"]
            .get("systemPrompt")
            .is_none());
    }

    #[test]
    fn for_each_paths() {
        let s = ids(&["outline", "chapters"]);
        assert_eq!(
            for_each("steps.outline.output.chapters", &s),
            Ok(Some("outline.chapters".into()))
        );
        assert_eq!(
            for_each("{{steps.outline.output}}", &s),
            Ok(Some("outline".into()))
        );
        assert_eq!(
            for_each("{{ outline.chapters }}", &s),
            Ok(Some("outline.chapters".into()))
        );
        assert_eq!(for_each("outline.chapters", &s), Ok(None));
        // Found by normalizing_twice_changes_nothing: rewrites are fixed points.
        assert_eq!(
            for_each(" steps. for x in ", &s),
            Ok(Some("for x in".into()))
        );
        assert_eq!(for_each("steps.steps.output.x", &s), Ok(None));
        assert_eq!(for_each("steps.outline.chapters", &s), Ok(None));
        // A step really called "steps" makes the template path ambiguous...
        let with_steps = ids(&["steps", "outline"]);
        let err = for_each("steps.outline.output.chapters", &with_steps).err();
        assert!(err
            .as_deref()
            .is_some_and(|e| e.contains("\"steps\"") && e.contains("\"outline\"")));
        // ...unless only one reading names a step.
        assert_eq!(for_each("steps.parts.output", &with_steps), Ok(None));
    }

    #[test]
    fn bare_placeholders() {
        let s = ids(&["outline", "first-draft"]);
        let inputs = ids(&["outline"]);
        let (mut notes, mut issues) = (Vec::new(), Vec::new());
        let got = placeholders(
            "{{topic}} {{ item }} {{range}} {{ input.x }} {{first-draft}} {{ a-b }}",
            "p",
            &s,
            &BTreeSet::new(),
            &mut notes,
            &mut issues,
        );
        assert_eq!(
            got,
            "{{ input.topic }} {{ item }} {{range}} {{ input.x }} {{ steps[\"first-draft\"].output }} {{ a-b }}"
        );
        assert_eq!(notes.len(), 2);
        let got = placeholders("{{outline}}", "p", &s, &inputs, &mut notes, &mut issues);
        assert_eq!(got, "{{outline}}");
        assert_eq!(issues.len(), 1);
        assert!(
            issues[0].message.contains("steps.outline.output")
                && issues[0].message.contains("input.outline")
        );
        // Unclosed braces are left for the template stage to report.
        assert_eq!(
            placeholders("{{ x", "p", &s, &inputs, &mut notes, &mut issues),
            "{{ x"
        );
    }

    #[test]
    fn anything_else_passes_through() {
        for doc in [
            json!(null),
            json!([1]),
            json!({"steps": 3}),
            json!({"steps": [1, {"configuration": 2}]}),
        ] {
            let n = normalize(&doc);
            assert_eq!(n.doc, doc);
            assert!(n.notes.is_empty() && n.issues.is_empty());
        }
    }
}
