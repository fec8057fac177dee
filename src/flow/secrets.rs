//! Refusing credentials in a flow document.
//!
//! An engine row is readable by every user it is assigned to, so a provider
//! key pasted into a flow would leak to all of them. Provider credentials
//! belong in the server's configuration; the flow only names the provider.
//! Issues say what looked like a credential and where, never the value.

use serde_json::Value;

use super::issue::{index_path, key_path, Issue};

/// Key suffixes that name a credential, compared after lowercasing and
/// dropping `_` and `-` (so `apiKey`, `API-KEY` and `openai_api_key` all match,
/// while `max_tokens` and `token_budget` do not).
const SENSITIVE_KEY_SUFFIXES: &[&str] = &[
    "apikey",
    "authorization",
    "secret",
    "password",
    "accesstoken",
    "refreshtoken",
    "bearer",
    "privatekey",
];

/// All credential-looking keys and values anywhere in `doc`, in document order.
pub(crate) fn scan(doc: &Value) -> Vec<Issue> {
    let mut issues = Vec::new();
    // An explicit stack instead of recursion: a deeply nested document must
    // not be able to overflow the thread's stack.
    let mut stack: Vec<(&Value, String)> = vec![(doc, String::new())];
    while let Some((value, path)) = stack.pop() {
        match value {
            Value::String(s) => {
                if let Some(what) = credential_kind(s) {
                    issues.push(Issue::new(
                        path,
                        "secret_value",
                        format!(
                            "this text looks like {what}; credentials must not be stored in a flow"
                        ),
                    ));
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate().rev() {
                    stack.push((item, index_path(&path, i)));
                }
            }
            Value::Object(map) => {
                let mut children = Vec::with_capacity(map.len());
                for (key, item) in map {
                    let child = key_path(&path, key);
                    if is_sensitive_key(key) {
                        issues.push(Issue::new(
                            child.clone(),
                            "secret_key",
                            format!(
                                "the key {} names a credential; configure provider credentials on the server, not in the flow",
                                super::issue::quote(key)
                            ),
                        ));
                    } else if let Some(what) = credential_kind(key) {
                        issues.push(Issue::new(
                            child.clone(),
                            "secret_value",
                            format!("this key looks like {what}; credentials must not be stored in a flow"),
                        ));
                    }
                    children.push((item, child));
                }
                stack.extend(children.into_iter().rev());
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
    issues
}

/// Whether an object key names a credential field.
pub(crate) fn is_sensitive_key(key: &str) -> bool {
    let norm: String = key
        .chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    SENSITIVE_KEY_SUFFIXES.iter().any(|s| norm.ends_with(s))
}

/// What kind of credential `s` seems to contain, if any.
pub(crate) fn credential_kind(s: &str) -> Option<&'static str> {
    let b = s.as_bytes();
    // Only ASCII prefixes are matched, so byte offsets are safe to use even
    // in non-ASCII text.
    for i in 0..b.len() {
        if let Some(what) = pem_at(b, i) {
            return Some(what);
        }
        // Token prefixes must start a word: "task-…" or "risk-…" is prose.
        if i > 0 && is_token_byte(b[i - 1]) {
            continue;
        }
        let rest = &b[i..];
        let found = if prefixed_run(rest, b"sk-", 16) {
            Some("a provider API key (sk-…)")
        } else if prefixed_run(rest, b"AIza", 30) {
            Some("a Google API key (AIza…)")
        } else if prefixed_run(rest, b"gsk_", 20)
            || prefixed_run(rest, b"xai-", 20)
            || prefixed_run(rest, b"hf_", 20)
        {
            Some("a provider API token (gsk_/xai-/hf_…)")
        } else if is_jwt(rest) {
            Some("a JSON Web Token")
        } else if is_bearer(rest) {
            Some("a bearer token")
        } else {
            None
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

fn is_token_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// Whether `b` is `prefix` followed by at least `min` API-key characters.
/// Counting stops at `min`, so long runs cost no more than short ones.
fn prefixed_run(b: &[u8], prefix: &[u8], min: usize) -> bool {
    b.strip_prefix(prefix).is_some_and(|rest| {
        rest.iter()
            .take(min)
            .take_while(|c| is_token_byte(**c))
            .count()
            >= min
    })
}

/// Length of the run of API-key characters at the start of `b`.
fn token_run(b: &[u8]) -> usize {
    b.iter().take_while(|c| is_token_byte(**c)).count()
}

/// `eyJ…​.eyJ…​.…`: a base64url JSON header and payload (the signature may be
/// empty for unsigned tokens).
fn is_jwt(b: &[u8]) -> bool {
    if !b.starts_with(b"eyJ") {
        return false;
    }
    let header = token_run(b);
    let Some(rest) = b.get(header..) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(b".") else {
        return false;
    };
    if !rest.starts_with(b"eyJ") {
        return false;
    }
    let payload = token_run(rest);
    rest.get(payload..).is_some_and(|r| r.starts_with(b"."))
}

/// `Bearer <16+ token68 chars>`, case-insensitively.
fn is_bearer(b: &[u8]) -> bool {
    const WORD: &[u8] = b"bearer";
    if b.len() <= WORD.len() || !b[..WORD.len()].eq_ignore_ascii_case(WORD) {
        return false;
    }
    let rest = &b[WORD.len()..];
    let spaces = rest.iter().take_while(|c| **c == b' ').count();
    if spaces == 0 {
        return false;
    }
    let token = rest[spaces..]
        .iter()
        .take(16)
        .take_while(|c| {
            c.is_ascii_alphanumeric()
                || matches!(**c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
        })
        .count();
    token >= 16
}

/// `-----BEGIN … PRIVATE KEY-----` on one line.
fn pem_at(b: &[u8], i: usize) -> Option<&'static str> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const END: &[u8] = b"PRIVATE KEY-----";
    let rest = b.get(i..)?;
    if !rest.starts_with(BEGIN) {
        return None;
    }
    // PEM labels are short; looking a bounded distance ahead keeps a text
    // with many "-----BEGIN " from costing quadratic time.
    let window = &rest[..rest.len().min(BEGIN.len() + 64)];
    let line_end = window
        .iter()
        .position(|c| *c == b'\n' || *c == b'\r')
        .unwrap_or(window.len());
    let line = &window[..line_end];
    line.windows(END.len())
        .any(|w| w == END)
        .then_some("a PEM private key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sensitive_keys_are_found_case_insensitively() {
        for k in [
            "api_key",
            "apiKey",
            "API-KEY",
            "openai_api_key",
            "Authorization",
            "client_secret",
            "secret",
            "password",
            "db_password",
            "access_token",
            "refresh_token",
            "bearer",
            "private_key",
            "privateKey",
            "x_apikey",
        ] {
            assert!(is_sensitive_key(k), "{k}");
        }
        for k in [
            "max_tokens",
            "token_budget",
            "tokens",
            "model",
            "prompt",
            "secretary",
            "key",
            "temperature",
            "passwords_policy",
        ] {
            assert!(!is_sensitive_key(k), "{k}");
        }
    }

    #[test]
    fn credential_values_are_found() {
        let cases = [
            "sk-abcdefghijklmnop1234",
            "use sk-ant-api03-abcdefghijklmnopqrstuvwxyz please",
            "sk-proj-ABCDEFGHIJKLMNOPqrst",
            "AIzaSyA1234567890abcdefghijklmnopqrstu",
            "gsk_abcdefghijklmnopqrstuvwxyz",
            "xai-abcdefghijklmnopqrstuvwxyz",
            "hf_abcdefghijklmnopqrstuvwxyz",
            "Authorization: Bearer abcdefghijklmnop.qrst",
            "bearer  0123456789abcdef0123",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE...",
            "text\n-----BEGIN OPENSSH PRIVATE KEY-----",
        ];
        for c in cases {
            assert!(credential_kind(c).is_some(), "{c}");
        }
    }

    #[test]
    fn ordinary_text_is_not_a_credential() {
        let cases = [
            "",
            "Write a task-oriented chapter about risk-assessment-frameworks-for-teams",
            "sk-short",
            "ask-abcdefghijklmnopqrstuvwxyz",
            "The bearer of bad news",
            "bearer token",
            "AIza short",
            "eyJ is not a jwt",
            "-----BEGIN PUBLIC KEY-----",
            "gpt-4o-mini",
            "claude-3-5-haiku-latest",
            "hf_small",
            "ünïcödé sk-",
        ];
        for c in cases {
            assert_eq!(credential_kind(c), None, "{c}");
        }
    }

    #[test]
    fn scan_reports_paths_without_values() {
        let secret = "sk-abcdefghijklmnopqrstuvwxyz123456";
        let doc = json!({
            "name": "x",
            "steps": [{"id": "a", "configuration": {
                "max_tokens": 100,
                "api_key": "",
                "x_notes": ["fine", secret],
                "ui": {"Authorization": null}
            }}]
        });
        let issues = scan(&doc);
        // Sorted: member order depends on serde_json's `preserve_order` feature.
        let mut paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            [
                "steps[0].configuration.api_key",
                "steps[0].configuration.ui.Authorization",
                "steps[0].configuration.x_notes[1]",
            ]
        );
        for i in &issues {
            assert!(!i.message.contains(secret));
        }
        let code_at = |p: &str| issues.iter().find(|i| i.path == p).map(|i| i.code);
        assert_eq!(
            code_at("steps[0].configuration.x_notes[1]"),
            Some("secret_value")
        );
        assert_eq!(
            code_at("steps[0].configuration.api_key"),
            Some("secret_key")
        );
    }

    #[test]
    fn long_adversarial_text_is_scanned_quickly() {
        // Each of these would be quadratic with unbounded look-ahead.
        for unit in ["-----BEGIN ", "bearer ", "a", "-"] {
            let text = unit.repeat(200_000 / unit.len());
            assert_eq!(credential_kind(&text), None, "{unit}");
        }
        // One long token is still one credential-looking token.
        let text = "sk-".repeat(100_000);
        assert!(credential_kind(&text).is_some());
    }

    #[test]
    fn credential_shaped_keys_are_found() {
        let doc = json!({"x_map": {"sk-abcdefghijklmnopqrstuvwxyz": 1}});
        assert_eq!(scan(&doc).len(), 1);
    }
}
