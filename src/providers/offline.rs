//! The built-in offline provider: an OpenAI-compatible endpoint served in-process
//! on loopback and reached through the same HTTP client as the real providers.
//! It writes deterministic text shaped by the prompt: a JSON outline when JSON is
//! asked for, prose otherwise. It is placeholder text, never model output, and
//! says so in what it writes.

use crate::error::{Error, Result};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::convert::Infallible;
use tokio::sync::OnceCell;

static SERVER: OnceCell<String> = OnceCell::const_new();

/// Start the server once per process; returns its base URL (`http://127.0.0.1:PORT/v1`).
///
/// It runs on a thread with its own runtime: the process-wide URL must outlive
/// whichever runtime asked first (a test's, a CLI command's).
pub async fn start() -> Result<String> {
    SERVER
        .get_or_try_init(|| async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| Error::internal(format!("offline provider: {e}")))?;
            let port = listener
                .local_addr()
                .map_err(|e| Error::internal(format!("offline provider: {e}")))?
                .port();
            std::thread::Builder::new()
                .name("offline-provider".into())
                .spawn(move || {
                    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        return;
                    };
                    rt.block_on(async move {
                        if let Ok(l) = tokio::net::TcpListener::from_std(listener) {
                            let _ = axum::serve(crate::net::nodelay(l), router()).await;
                        }
                    });
                })
                .map_err(|e| Error::internal(format!("offline provider thread: {e}")))?;
            Ok(format!("http://127.0.0.1:{port}/v1"))
        })
        .await
        .cloned()
}

pub fn router() -> Router {
    Router::new().route("/v1/chat/completions", post(complete))
}

async fn complete(Json(body): Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or("offline").to_owned();
    let prompt: String = body["messages"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter(|m| m["role"] == "user")
                .filter_map(|m| m["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default();
    let wants_json = body["response_format"]["type"] == "json_object";
    let text = if wants_json {
        outline(&prompt)
    } else if let Some(parts) = embedded_texts(&prompt) {
        manuscript(&parts)
    } else {
        prose(&prompt)
    };
    let input_tokens = prompt.split_whitespace().count() as u64;
    let output_tokens = text.split_whitespace().count() as u64;
    let usage = json!({"prompt_tokens": input_tokens, "completion_tokens": output_tokens, "total_tokens": input_tokens + output_tokens});
    if body["stream"] == true {
        let with_usage = body["stream_options"]["include_usage"] == true;
        return stream(&model, &text, with_usage.then_some(usage)).into_response();
    }
    Json(json!({
        "id": "offline-1",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": usage,
    }))
    .into_response()
}

/// The answer as OpenAI streams it: a chunk per word, a finish chunk, the usage
/// chunk (empty `choices`) when it was asked for, then `[DONE]`.
fn stream(model: &str, text: &str, usage: Option<Value>) -> impl IntoResponse {
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": "offline-1", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
        .to_string()
    };
    let mut data = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    data.extend(
        words(text)
            .into_iter()
            .map(|w| chunk(json!({ "content": w }), Value::Null)),
    );
    data.push(chunk(json!({}), json!("stop")));
    if let Some(usage) = usage {
        data.push(
            json!({"id": "offline-1", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage})
                .to_string(),
        );
    }
    data.push("[DONE]".to_owned());
    let events = data
        .into_iter()
        .map(|d| Ok::<_, Infallible>(Event::default().data(d)));
    Sse::new(futures::stream::iter(events))
}

/// The text cut after each run of whitespace: joined, the pieces are the text.
fn words(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            pieces.push(&text[start..i]);
            start = i;
            in_space = false;
        }
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

/// A stable 64-bit hash (FNV-1a): the same prompt always gives the same text.
fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The subject: the text after "about", "on" or "topic:", else the prompt's first words.
fn subject(prompt: &str) -> String {
    let lower = prompt.to_lowercase();
    for marker in ["topic:", "about ", " on "] {
        if let Some(i) = lower.find(marker) {
            let rest = &prompt[i + marker.len()..];
            let s: String = rest
                .split(['\n', '.', '"'])
                .next()
                .unwrap_or_default()
                .split(" with ")
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .take(8)
                .collect::<Vec<_>>()
                .join(" ");
            if !s.is_empty() {
                return s;
            }
        }
    }
    prompt
        .split_whitespace()
        .take(6)
        .collect::<Vec<_>>()
        .join(" ")
}

/// "N chapters" in the prompt, else 3 (at most 24).
fn chapter_count(prompt: &str) -> usize {
    let words: Vec<&str> = prompt.split_whitespace().collect();
    words
        .windows(2)
        .find_map(|w| {
            let n = w[0]
                .trim_matches(|c: char| !c.is_ascii_digit())
                .parse::<usize>()
                .ok()?;
            w[1].to_lowercase().starts_with("chapter").then_some(n)
        })
        .unwrap_or(3)
        .clamp(1, 24)
}

const THEMES: &[&str] = &[
    "Beginnings",
    "The First Question",
    "Patterns",
    "Turning Points",
    "Hidden Costs",
    "Practice",
    "Voices",
    "The Long View",
    "Tools of the Trade",
    "Mistakes Worth Making",
    "Crossroads",
    "What Remains",
];

fn outline(prompt: &str) -> String {
    let topic = subject(prompt);
    let n = chapter_count(prompt);
    let h = hash(prompt) as usize;
    let chapters: Vec<Value> = (0..n)
        .map(|i| {
            let theme = THEMES[(h + i) % THEMES.len()];
            json!({
                "title": format!("{theme}"),
                "summary": format!("Chapter {} looks at {topic} through the lens of {}.", i + 1, theme.to_lowercase()),
            })
        })
        .collect();
    json!({"title": format!("A Book About {topic}"), "chapters": chapters}).to_string()
}

/// A JSON array of texts inside the prompt (an edit step handed the chapters).
fn embedded_texts(prompt: &str) -> Option<Vec<String>> {
    prompt
        .char_indices()
        .filter(|(_, c)| *c == '[')
        .find_map(|(i, _)| {
            let mut stream =
                serde_json::Deserializer::from_str(&prompt[i..]).into_iter::<Vec<String>>();
            match stream.next() {
                Some(Ok(v)) if !v.is_empty() => Some(v),
                _ => None,
            }
        })
}

/// An "edited" manuscript: the texts in order under chapter headings.
fn manuscript(parts: &[String]) -> String {
    parts
        .iter()
        .enumerate()
        .map(|(i, t)| format!("## Chapter {}\n\n{}", i + 1, t.trim()))
        .collect::<Vec<_>>()
        .join("\n\n")
}

const SENTENCES: &[&str] = &[
    "Every subject has a shape, and this one reveals it slowly.",
    "The details matter more than the headlines suggest.",
    "What looks simple from a distance turns out to have many moving parts.",
    "Practitioners learn this by doing, long before they can explain it.",
    "There is a quiet pleasure in seeing the pieces fit together.",
    "Each choice made early echoes through everything that follows.",
    "The best examples come from ordinary days, not grand occasions.",
    "It helps to name the trade-offs out loud.",
];

fn prose(prompt: &str) -> String {
    let topic = subject(prompt);
    let h = hash(prompt) as usize;
    let paragraph = |k: usize| -> String {
        (0..4)
            .map(|j| SENTENCES[(h / (k + 1) + j * 3 + k) % SENTENCES.len()])
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "_[offline provider: deterministic placeholder text, not model output]_\n\n\
         This section is about {topic}. {}\n\n{}\n\n{}",
        paragraph(0),
        paragraph(1),
        paragraph(2)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outline_is_json_with_the_asked_number_of_chapters() {
        let o: Value = serde_json::from_str(&outline(
            "Write an outline with 5 chapters about sea otters.",
        ))
        .unwrap();
        assert_eq!(o["chapters"].as_array().map(Vec::len), Some(5));
        assert!(o["title"].as_str().unwrap().contains("sea otters"));
    }

    #[test]
    fn an_edit_prompt_gets_the_chapters_back_in_order() {
        let text = manuscript(&embedded_texts("Edit these:\n[\"one\", \"two\"]\nThanks").unwrap());
        assert_eq!(text, "## Chapter 1\n\none\n\n## Chapter 2\n\ntwo");
        assert!(embedded_texts("no array [1, 2] of texts").is_none());
    }

    #[test]
    fn words_join_back_into_the_text() {
        let text = "  One two\n\nthree  ";
        let w = words(text);
        assert_eq!(w, vec!["  ", "One ", "two\n\n", "three  "]);
        assert_eq!(w.concat(), text);
        assert!(words("").is_empty());
    }

    #[test]
    fn prose_is_deterministic_and_labelled() {
        assert_eq!(prose("about bees"), prose("about bees"));
        assert!(prose("about bees").contains("not model output"));
    }
}
