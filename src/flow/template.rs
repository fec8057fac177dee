//! Prompt templates: minijinja with strict undefined values and no escaping.
//!
//! Render context (built by the worker):
//! - `input`: the generation request's input object;
//! - `steps.<id>.output`: a finished step's output (a string for text steps,
//!   parsed JSON for json steps); for a fan-out step also
//!   `steps.<id>.outputs`, the per-item outputs in item order;
//! - `item`, `item_index` (0-based), `item_number` (1-based): only while
//!   rendering a `for_each` step.
//!
//! Strict undefined means a typo or a missing output fails the call instead
//! of silently sending an empty string to a paid model. Objects and arrays
//! print as compact JSON, which is what a model should be shown.

use std::collections::BTreeSet;

use minijinja::value::ValueKind;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};
use serde_json::Value;

/// The context roots a template may read; anything else is a typo.
pub(crate) const ROOT_INPUT: &str = "input";
pub(crate) const ROOT_STEPS: &str = "steps";
pub(crate) const ITEM_VARS: &[&str] = &["item", "item_index", "item_number"];

fn environment<'a>() -> Environment<'a> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Prompts are not HTML: escaping would corrupt quotes and ampersands.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_formatter(|out, state, value| {
        if matches!(value.kind(), ValueKind::Map | ValueKind::Seq) {
            let json = serde_json::to_string(value).map_err(|e| {
                minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("cannot print value as JSON: {e}"),
                )
            })?;
            out.write_str(&json)
                .map_err(|_| minijinja::Error::new(ErrorKind::WriteFailure, "cannot write output"))
        } else {
            minijinja::escape_formatter(out, state, value)
        }
    });
    env
}

fn describe(e: &minijinja::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        msg.push_str(": ");
        msg.push_str(&inner.to_string());
        source = inner.source();
    }
    msg
}

/// Renders `template` against `ctx` (normally `{"input", "steps", "item"…}`).
/// A missing value, a syntax error or a failing filter is an `Err` with a
/// readable message; no input makes it panic.
pub fn render(template: &str, ctx: &Value) -> Result<String, String> {
    let env = environment();
    let tmpl = env.template_from_str(template).map_err(|e| describe(&e))?;
    tmpl.render(minijinja::Value::from_serialize(ctx))
        .map_err(|e| describe(&e))
}

/// The ids of the steps `template` reads through `steps.<id>` or
/// `steps["<id>"]`, sorted and deduplicated. Computed (dynamic) lookups such as
/// `steps[name]` cannot be resolved and are left out; flow validation refuses
/// them. `Err` only for a syntax error.
pub fn references(template: &str) -> Result<Vec<String>, String> {
    let analysis = analyze(template)?;
    let ids: BTreeSet<String> = analysis
        .variables
        .iter()
        .filter_map(|v| step_path(v).map(|(id, _)| id.to_string()))
        .collect();
    Ok(ids.into_iter().collect())
}

/// What a template reads.
#[derive(Debug, Default)]
pub(crate) struct Analysis {
    /// Undeclared variables with their attribute chains (`steps.a.output`).
    pub variables: BTreeSet<String>,
    /// Whether `steps` is also used in a way that names no step statically.
    pub dynamic_steps: bool,
}

/// Compiles `template` and lists the variables it reads.
pub(crate) fn analyze(template: &str) -> Result<Analysis, String> {
    let env = environment();
    let tmpl = env.template_from_str(template).map_err(|e| describe(&e))?;
    let mut variables: BTreeSet<String> = tmpl.undeclared_variables(true).into_iter().collect();
    let mut dynamic_steps = false;
    // A bare `steps` comes from a subscript (`steps["my-id"]`, needed for ids
    // with hyphens) or from dynamic use; tell the two apart from the source.
    if variables.remove(ROOT_STEPS) {
        let (ids, dynamic) = step_subscripts(template);
        dynamic_steps = dynamic;
        variables.extend(ids.into_iter().map(|id| format!("{ROOT_STEPS}.{id}")));
    }
    Ok(Analysis {
        variables,
        dynamic_steps,
    })
}

/// Whether `name` is a global function of the environment (`range`, `dict`…).
pub(crate) fn is_global(name: &str) -> bool {
    environment().globals().any(|(n, _)| n == name)
}

/// Splits `steps.<id>[.<attr>…]` into the id and the rest of the chain.
pub(crate) fn step_path(variable: &str) -> Option<(&str, Vec<&str>)> {
    let mut parts = variable.split('.');
    if parts.next() != Some(ROOT_STEPS) {
        return None;
    }
    let id = parts.next()?;
    Some((id, parts.collect()))
}

/// Scans the expression parts of a template for uses of `steps` that are not
/// attribute lookups: literal subscripts give step ids, anything else is
/// dynamic. Errs on the side of "dynamic", which validation refuses.
fn step_subscripts(src: &str) -> (Vec<String>, bool) {
    let b = src.as_bytes();
    let mut ids = Vec::new();
    let mut dynamic = false;
    let mut i = 0;
    while i + 1 < b.len() {
        let close: &[u8] = match (b[i], b[i + 1]) {
            (b'{', b'{') => b"}}",
            (b'{', b'%') => b"%}",
            (b'{', b'#') => {
                i = find(b, i + 2, b"#}").map_or(b.len(), |e| e + 2);
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        };
        i += 2;
        let mut prev_significant = 0u8;
        while i < b.len() {
            let c = b[i];
            if b[i..].starts_with(close) {
                i += 2;
                break;
            }
            if c == b'"' || c == b'\'' {
                i = skip_string(b, i);
                prev_significant = c;
                continue;
            }
            if c.is_ascii_alphabetic() || c == b'_' {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                if &b[start..i] == ROOT_STEPS.as_bytes() && prev_significant != b'.' {
                    match literal_subscript(b, i) {
                        Subscript::Attribute => {}
                        Subscript::Literal(id, end) => {
                            ids.push(id);
                            i = end;
                        }
                        Subscript::Dynamic => dynamic = true,
                    }
                }
                prev_significant = b'a';
                continue;
            }
            if !c.is_ascii_whitespace() {
                prev_significant = c;
            }
            i += 1;
        }
    }
    (ids, dynamic)
}

enum Subscript {
    Attribute,
    Literal(String, usize),
    Dynamic,
}

/// What follows an occurrence of `steps` ending at `at`.
fn literal_subscript(b: &[u8], at: usize) -> Subscript {
    let i = skip_ws(b, at);
    match b.get(i) {
        Some(b'.') => Subscript::Attribute,
        Some(b'[') => {
            let start = skip_ws(b, i + 1);
            let Some(&quote) = b.get(start).filter(|q| **q == b'"' || **q == b'\'') else {
                return Subscript::Dynamic;
            };
            let end = skip_string(b, start);
            // skip_string returns the index after the closing quote.
            let inner = b.get(start + 1..end.saturating_sub(1)).unwrap_or_default();
            let closed = end >= start + 2 && b.get(end - 1) == Some(&quote);
            let after = skip_ws(b, end);
            if !closed || inner.contains(&b'\\') || b.get(after) != Some(&b']') {
                return Subscript::Dynamic;
            }
            match std::str::from_utf8(inner) {
                Ok(id) => Subscript::Literal(id.to_string(), after + 1),
                Err(_) => Subscript::Dynamic,
            }
        }
        _ => Subscript::Dynamic,
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// Index just after the string literal that starts (with its quote) at `i`.
fn skip_string(b: &[u8], i: usize) -> usize {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            c if c == quote => return j + 1,
            _ => j += 1,
        }
    }
    b.len()
}

fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_text_and_json_values() {
        let ctx = json!({
            "input": {"topic": "bees & wasps"},
            "steps": {"outline": {"output": {"title": "Bees", "chapters": [{"title": "A"}]}},
                      "chapters": {"outputs": ["one", "two"]}}
        });
        assert_eq!(
            render(
                "About {{ input.topic }}: {{ steps.outline.output.title }}",
                &ctx
            ),
            Ok("About bees & wasps: Bees".into())
        );
        assert_eq!(
            render("{{ steps.outline.output.chapters }}", &ctx),
            Ok(r#"[{"title":"A"}]"#.into())
        );
        assert_eq!(
            render("{{ steps.chapters.outputs }}", &ctx),
            Ok(r#"["one","two"]"#.into())
        );
        assert_eq!(
            render(
                "{% for c in steps.chapters.outputs %}{{ c }};{% endfor %}",
                &ctx
            ),
            Ok("one;two;".into())
        );
    }

    #[test]
    fn renders_item_variables() {
        let ctx =
            json!({"item": {"title": "T", "summary": "S"}, "item_index": 0, "item_number": 1});
        assert_eq!(
            render(
                "{{ item_number }}. {{ item.title }} - {{ item.summary }}",
                &ctx
            ),
            Ok("1. T - S".into())
        );
    }

    #[test]
    fn missing_values_are_errors() {
        let ctx = json!({"input": {"topic": "x"}});
        assert!(render("{{ input.nope }}", &ctx).is_err());
        assert!(render("{{ steps.outline.output }}", &ctx).is_err());
        assert!(render("{{ nope }}", &json!(null)).is_err());
        assert!(render("{% if", &ctx).is_err());
        let err = render("{{ input.nope }}", &ctx).err().unwrap_or_default();
        assert!(err.contains("undefined"), "{err}");
    }

    #[test]
    fn default_filter_works_under_strict_undefined() {
        let tmpl = "{{ input.chapters | default(3) }}";
        assert_eq!(render(tmpl, &json!({"input": {}})), Ok("3".into()));
        assert_eq!(
            render(tmpl, &json!({"input": {"chapters": 5}})),
            Ok("5".into())
        );
    }

    #[test]
    fn references_lists_step_ids() {
        let t = r#"{{ steps.b.output }} {{ steps.a.output.x }} {{ steps["c-d"].output }} {{ input.q }}"#;
        assert_eq!(
            references(t),
            Ok(vec!["a".to_string(), "b".into(), "c-d".into()])
        );
        assert_eq!(references("plain text, with steps: 1"), Ok(vec![]));
        assert!(references("{{ steps.").is_err());
    }

    #[test]
    fn analyze_flags_dynamic_step_lookups() {
        let dynamic = |t: &str| analyze(t).map(|a| a.dynamic_steps).ok();
        assert_eq!(dynamic("{{ steps['x'] }} text steps [y]"), Some(false));
        assert_eq!(dynamic("{{ steps[name] }}"), Some(true));
        assert_eq!(
            dynamic("{% for s in steps %}{{ s }}{% endfor %}"),
            Some(true)
        );
        assert_eq!(dynamic("{# steps[x] #}{{ steps.a.output }}"), Some(false));
        assert_eq!(dynamic("{{ 'steps[x]' ~ steps['b'] }}"), Some(false));
    }
}
