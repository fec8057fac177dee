//! Problems found in a flow document, their paths, and the errors carrying them.
//!
//! Every stage collects all of its problems before failing, so the editor can
//! mark every bad field at once instead of one per deploy attempt.

use serde_json::{json, Map, Value};

use crate::error::Error;

/// More than this many issues are cut off (and `truncated` is set), so a huge
/// pathological document cannot produce an unbounded error body.
pub(crate) const MAX_ISSUES: usize = 1000;

/// One problem at one place of the document.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Issue {
    pub path: String,
    pub code: &'static str,
    pub message: String,
    /// Extra members of the issue object (`step_id`, `steps`, ...).
    pub extra: Map<String, Value>,
}

impl Issue {
    pub fn new(path: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            code,
            message: message.into(),
            extra: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    /// The same issue under another code.
    pub fn renamed(mut self, code: &'static str) -> Self {
        self.code = code;
        self
    }

    fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("path".into(), Value::from(self.path.clone()));
        obj.insert("code".into(), Value::from(self.code));
        obj.insert("message".into(), Value::from(self.message.clone()));
        for (k, v) in &self.extra {
            obj.insert(k.clone(), v.clone());
        }
        Value::Object(obj)
    }
}

/// Path of member `key` under `base` (`""` is the document root).
pub(crate) fn key_path(base: &str, key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        if base.is_empty() {
            key.to_string()
        } else {
            format!("{base}.{key}")
        }
    } else {
        // Odd keys are bracketed and JSON-quoted so the path stays unambiguous.
        format!("{base}[{}]", Value::from(key))
    }
}

/// Path of element `index` under `base`.
pub(crate) fn index_path(base: &str, index: usize) -> String {
    format!("{base}[{index}]")
}

/// A user-supplied string quoted for a message, shortened so that a long
/// value cannot bloat the error.
pub(crate) fn quote(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        Value::from(s).to_string()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{}…", Value::from(head))
    }
}

/// The error for one failed stage: `headline` plus the first issue as the
/// message, all issues (and `extra` members) in `details`.
pub(crate) fn stage_error(
    code: crate::error::Code,
    headline: &str,
    issues: &[Issue],
    extra: Option<(&str, Value)>,
) -> Error {
    let message = match issues.first() {
        Some(first) => {
            let more = match issues.len() {
                1 => String::new(),
                n => format!(" (and {} more)", n - 1),
            };
            let at = if first.path.is_empty() {
                String::new()
            } else {
                format!("{}: ", first.path)
            };
            format!("{headline}: {at}{}{more}", first.message)
        }
        None => headline.to_string(),
    };
    let mut details = Map::new();
    if let Some((k, v)) = extra {
        details.insert(k.to_string(), v);
    }
    let list: Vec<Value> = issues.iter().take(MAX_ISSUES).map(Issue::to_json).collect();
    details.insert("issues".into(), Value::Array(list));
    if issues.len() > MAX_ISSUES {
        details.insert("truncated".into(), json!(true));
    }
    Error::invalid(code, message).with_details(Value::Object(details))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::codes;

    #[test]
    fn paths_bracket_odd_keys() {
        assert_eq!(key_path("", "name"), "name");
        assert_eq!(key_path("steps[0]", "id"), "steps[0].id");
        assert_eq!(key_path("a", "ui-state"), "a[\"ui-state\"]");
        assert_eq!(key_path("", "1x"), "[\"1x\"]");
        assert_eq!(index_path("steps", 3), "steps[3]");
    }

    #[test]
    fn quote_truncates_long_values() {
        assert_eq!(quote("ab"), "\"ab\"");
        let long = "x".repeat(100);
        assert!(quote(&long).chars().count() < 70);
    }

    #[test]
    fn stage_error_lists_all_issues() {
        let issues = vec![
            Issue::new("name", "missing_field", "name is required"),
            Issue::new("steps", "invalid_type", "steps must be an array").with("step_id", "x"),
        ];
        let err = stage_error(codes::INVALID_FLOW, "invalid flow", &issues, None);
        assert_eq!(err.code, codes::INVALID_FLOW);
        assert_eq!(
            err.message,
            "invalid flow: name: name is required (and 1 more)"
        );
        let details = err.details.unwrap_or_default();
        assert_eq!(details["issues"][1]["step_id"], "x");
        assert_eq!(details["issues"].as_array().map(Vec::len), Some(2));
    }
}
