//! JSON out of a model's answer, for every provider: models wrap JSON in Markdown
//! fences or sentences, and weak ones write a wrong object before the right one.
//! The worker parses JSON steps with it; the local model also checks its own
//! answers with it before answering.

use serde_json::Value;

/// The first JSON object or array in `text`: the whole text, a fenced block, or the
/// first `{`/`[` from which a JSON value parses.
pub fn extract_json(text: &str) -> Option<Value> {
    extract_json_with(text, &[])
}

/// The first JSON object or array in `text` that has all of `keys` (see
/// [`has_keys`]): weak models often write a wrong object before the right one.
pub fn extract_json_with(text: &str, keys: &[String]) -> Option<Value> {
    let trimmed = text.trim();
    if let Ok(v) = serde_json::from_str::<Value>(trimmed) {
        return Some(v).filter(|v| (v.is_object() || v.is_array()) && has_keys(v, keys));
    }
    let mut from = 0;
    while let Some(i) = trimmed[from..].find(['{', '[']).map(|i| i + from) {
        let mut stream = serde_json::Deserializer::from_str(&trimmed[i..]).into_iter::<Value>();
        match stream.next() {
            Some(Ok(v)) if has_keys(&v, keys) => return Some(v),
            // A whole value of the wrong shape: look after it, not inside it.
            Some(Ok(_)) => from = i + stream.byte_offset(),
            _ => from = i + 1,
        }
    }
    None
}

/// The top-level keys of the first JSON object written out in a request (its
/// example of the answer's shape); empty when there is none.
pub fn required_keys(prompt: &str) -> Vec<String> {
    match extract_json(prompt) {
        Some(Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Whether `v` is an object with all of `keys` (anything passes when `keys` is empty).
pub fn has_keys(v: &Value, keys: &[String]) -> bool {
    keys.is_empty() || keys.iter().all(|k| v.get(k).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_is_found_in_fences_and_chatter() {
        assert_eq!(extract_json(r#"{"a": 1}"#), Some(json!({"a": 1})));
        assert_eq!(
            extract_json("Sure!\n```json\n{\"a\": [1, 2]}\n```\nDone."),
            Some(json!({"a": [1, 2]}))
        );
        assert_eq!(extract_json("no json here"), None);
        assert_eq!(extract_json("\"just a string\""), None);
        assert_eq!(extract_json("{\"a\": 1"), None);
        let keys = ["title".to_owned()];
        assert_eq!(
            extract_json_with("{\"name\": {\"title\": 0}} then {\"title\": \"T\"}", &keys),
            Some(json!({"title": "T"}))
        );
        assert_eq!(extract_json_with("{\"name\": 1}", &keys), None);
    }

    #[test]
    fn a_json_example_in_the_request_names_the_required_keys() {
        let prompt = "Plan a book.\nReturn only a JSON object of the form {\"title\": \"...\", \"chapters\": [{\"title\": \"...\"}]}.";
        let keys = required_keys(prompt);
        assert_eq!(keys, ["chapters", "title"]);
        assert!(has_keys(&json!({"title": "T", "chapters": []}), &keys));
        assert!(!has_keys(&json!({"title": "T", "author": "A"}), &keys));
        assert!(required_keys("Plan a book.").is_empty());
        assert!(has_keys(&json!([1]), &[]));
    }
}
