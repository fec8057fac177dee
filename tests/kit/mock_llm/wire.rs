//! What each provider's wire format carries: the mock's answer texts, whole answers,
//! and a stream's SSE frames, including the error frames a fault sends.

use super::{Answers, Kind, ANTHROPIC_USAGE, GEMINI_USAGE, OPENAI_USAGE};
use serde_json::{json, Value};

/// The user prompt of a request body, whatever the wire format.
pub(super) fn prompt_of(b: &Value) -> String {
    if let Some(msgs) = b["messages"].as_array() {
        return msgs
            .iter()
            .filter(|m| m["role"] == "user")
            .filter_map(|m| m["content"].as_str())
            .collect::<Vec<_>>()
            .join("\n");
    }
    b["contents"][0]["parts"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A JSON outline when JSON is asked for, a chapter-ish text otherwise.
pub(super) fn answer_text(answers: Answers, prompt: &str, wants_json: bool) -> String {
    match (answers, wants_json) {
        (Answers::Echo, true) => json!({"title": "The Mock Book", "chapters": [
            {"title": "Alpha", "summary": "first"},
            {"title": "Beta", "summary": "second"},
            {"title": "Gamma", "summary": "third"},
        ]})
        .to_string(),
        (Answers::Echo, false) => {
            let first = prompt.lines().next().unwrap_or_default();
            format!("Text written for: {first}")
        }
        (Answers::Fixed { chapters }, true) => {
            let chapters: Vec<Value> = (1..=chapters)
                .map(|i| json!({"title": format!("Chapter {i}"), "summary": format!("What chapter {i} covers.")}))
                .collect();
            json!({"title": "A benchmark book", "chapters": chapters}).to_string()
        }
        (Answers::Fixed { .. }, false) => {
            "Benchmark text: a short paragraph standing in for a model's answer.".to_owned()
        }
    }
}

/// A whole (not streamed) answer of `kind` carrying `text`.
pub(super) fn whole_answer(kind: Kind, model: &Value, text: &str) -> Value {
    match kind {
        Kind::OpenAi => {
            let (i, o) = OPENAI_USAGE;
            json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o},
            })
        }
        Kind::Anthropic => {
            let (i, o) = ANTHROPIC_USAGE;
            json!({
                "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                "usage": {"input_tokens": i, "output_tokens": o},
            })
        }
        Kind::Gemini => {
            let (i, o) = GEMINI_USAGE;
            json!({
                "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": i, "candidatesTokenCount": o, "totalTokenCount": i + o},
            })
        }
    }
}

/// A streamed answer as SSE frames: before the text, one per text chunk, after.
pub(super) struct Frames {
    pub(super) head: Vec<String>,
    pub(super) text: Vec<String>,
    pub(super) tail: Vec<String>,
}

pub(super) fn frame(event: Option<&str>, data: &Value) -> String {
    match event {
        Some(e) => format!("event: {e}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

/// The text in `n` pieces of the same number of characters (the last shorter; fewer
/// pieces when the text is shorter than `n`).
pub(super) fn even_pieces(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let per = chars.len().div_ceil(n).max(1);
    chars.chunks(per).map(|p| p.iter().collect()).collect()
}

/// The text cut after each run of whitespace: joined, the pieces are the text.
pub(super) fn words(text: &str) -> Vec<String> {
    let mut pieces: Vec<String> = Vec::new();
    for w in text.split_inclusive(char::is_whitespace) {
        match pieces.last_mut() {
            Some(last) if w.trim().is_empty() => last.push_str(w),
            _ => pieces.push(w.to_owned()),
        }
    }
    pieces
}

pub(super) fn frames(kind: Kind, model: &Value, words: &[String], include_usage: bool) -> Frames {
    match kind {
        Kind::OpenAi => {
            let chunk = |delta: Value, finish: Value| {
                frame(
                    None,
                    &json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], "usage": null}),
                )
            };
            let (i, o) = OPENAI_USAGE;
            let mut tail = vec![chunk(json!({}), json!("stop"))];
            if include_usage {
                tail.push(frame(
                    None,
                    &json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "model": model, "choices": [],
                        "usage": {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o}}),
                ));
            }
            tail.push("data: [DONE]\n\n".to_owned());
            Frames {
                head: vec![chunk(
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                )],
                text: words
                    .iter()
                    .map(|w| chunk(json!({ "content": w }), Value::Null))
                    .collect(),
                tail,
            }
        }
        Kind::Anthropic => {
            let (i, o) = ANTHROPIC_USAGE;
            Frames {
                head: vec![
                    frame(
                        Some("message_start"),
                        &json!({"type": "message_start", "message": {
                        "id": "msg_mock", "type": "message", "role": "assistant", "content": [], "model": model,
                        "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": i, "output_tokens": 1}}}),
                    ),
                    frame(
                        Some("content_block_start"),
                        &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                    ),
                    frame(Some("ping"), &json!({"type": "ping"})),
                ],
                text: words
                    .iter()
                    .map(|w| {
                        frame(
                            Some("content_block_delta"),
                            &json!({"type": "content_block_delta", "index": 0,
                            "delta": {"type": "text_delta", "text": w}}),
                        )
                    })
                    .collect(),
                tail: vec![
                    frame(
                        Some("content_block_stop"),
                        &json!({"type": "content_block_stop", "index": 0}),
                    ),
                    frame(
                        Some("message_delta"),
                        &json!({"type": "message_delta",
                        "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": o}}),
                    ),
                    frame(Some("message_stop"), &json!({"type": "message_stop"})),
                ],
            }
        }
        Kind::Gemini => {
            let (i, o) = GEMINI_USAGE;
            let chunk = |text: &str, finish: Option<&str>, usage: Value| {
                let mut candidate =
                    json!({"content": {"role": "model", "parts": [{"text": text}]}, "index": 0});
                if let Some(f) = finish {
                    candidate["finishReason"] = json!(f);
                }
                frame(
                    None,
                    &json!({"candidates": [candidate], "usageMetadata": usage, "modelVersion": model}),
                )
            };
            Frames {
                head: vec![],
                text: words
                    .iter()
                    .map(|w| {
                        chunk(
                            w,
                            None,
                            json!({"promptTokenCount": i, "totalTokenCount": i}),
                        )
                    })
                    .collect(),
                tail: vec![chunk(
                    "",
                    Some("STOP"),
                    json!({"promptTokenCount": i, "candidatesTokenCount": o, "totalTokenCount": i + o}),
                )],
            }
        }
    }
}

/// What each format sends for `Fault::ErrorEventAfter` and `MalformedChunkAfter`.
pub(super) fn error_frame(kind: Kind) -> String {
    match kind {
        Kind::OpenAi => frame(
            None,
            &json!({"error": {"message": "injected mid-stream error", "type": "server_error", "param": null, "code": null}}),
        ),
        Kind::Anthropic => frame(
            Some("error"),
            &json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ),
        Kind::Gemini => frame(
            None,
            &json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}),
        ),
    }
}
