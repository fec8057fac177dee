//! Turning model text into step outputs, and step outputs into the book.

use serde_json::{json, Map, Value};

/// Parse a JSON answer: the whole text, else the first JSON object or array in it
/// (inside a Markdown fence or a sentence; see [`crate::providers::json_answer`]).
pub fn parse_json_output(text: &str) -> Result<Value, String> {
    serde_json::from_str::<Value>(text.trim())
        .ok()
        .or_else(|| crate::providers::json_answer::extract_json(text))
        .ok_or_else(|| "the model's answer was not valid JSON".into())
}

/// Follow `path` (object keys, or array indices) into `value`.
pub fn navigate<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| match v {
        Value::Object(m) => m.get(key),
        Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(as_text).collect::<Vec<_>>().join("\n\n"),
        other => other.to_string(),
    }
}

/// The book: the last step's output (a fan-out's outputs joined in order), under
/// a title from the input or from the first JSON output that has one.
pub fn assemble(input: &Value, order: &[String], outputs: &Map<String, Value>) -> Value {
    let title = input["title"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            order
                .iter()
                .filter_map(|id| outputs.get(id))
                .find_map(|o| o["title"].as_str().map(str::to_owned))
        })
        .or_else(|| input["topic"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "Untitled".into());
    let body = order
        .last()
        .and_then(|id| outputs.get(id))
        .map(as_text)
        .unwrap_or_default();
    let book = if body.trim_start().starts_with("# ") {
        body
    } else {
        format!("# {title}\n\n{body}")
    };
    json!({"title": title, "book": book, "outputs": outputs})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_in_fences_and_prose_is_found() {
        assert_eq!(
            parse_json_output("```json\n{\"a\":1}\n```").unwrap(),
            json!({"a": 1})
        );
        assert_eq!(
            parse_json_output("Sure! Here it is: [1,2] hope it helps").unwrap(),
            json!([1, 2])
        );
        assert!(parse_json_output("no json here").is_err());
        assert!(parse_json_output("{\"a\":").is_err());
    }

    #[test]
    fn navigate_objects_and_arrays() {
        let v = json!({"a": {"b": [10, 20]}});
        assert_eq!(
            navigate(&v, &["a".into(), "b".into(), "1".into()]),
            Some(&json!(20))
        );
        assert_eq!(navigate(&v, &["x".into()]), None);
    }

    #[test]
    fn the_book_is_the_last_output_under_a_title() {
        let mut outputs = Map::new();
        outputs.insert("outline".into(), json!({"title": "Otters"}));
        outputs.insert("chapters".into(), json!(["one", "two"]));
        let r = assemble(&json!({}), &["outline".into(), "chapters".into()], &outputs);
        assert_eq!(r["book"], "# Otters\n\none\n\ntwo");
    }
}
