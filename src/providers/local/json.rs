//! Structured output from a weak model: find the JSON in an answer, or turn a
//! numbered or bulleted outline into the book-outline JSON shape
//! `{"title": ..., "chapters": [{"title": ..., "summary": ...}]}`.

use serde_json::{json, Value};

/// Appended to a JSON request's prompt.
pub const JSON_INSTRUCTION: &str = "Answer with JSON only, no other text.";

/// The one-shot example for the stricter retry: a request and the answer it wants.
pub const EXAMPLE_REQUEST: &str =
    "Plan a book about bees with 2 chapters. Answer with JSON only, no other text.";
pub const EXAMPLE_ANSWER: &str = r#"{"title": "The World of Bees", "chapters": [{"title": "Inside the Hive", "summary": "How a colony lives and works together."}, {"title": "Bees and Flowers", "summary": "Why pollination matters to plants and people."}]}"#;

/// An outline request reworded for a list: the request's own lines without its JSON
/// example and JSON instructions (what is left says the topic and the number of
/// chapters), then how to write the list. A small model writes a numbered list
/// reliably where its JSON is often broken. `None` when nothing but JSON is asked.
pub fn outline_list_prompt(prompt: &str) -> Option<String> {
    let about_json = |l: &str| {
        let lower = l.to_ascii_lowercase();
        let example = l.contains("{\"") || l.contains("{ \"");
        let instruction = lower.contains("json")
            && ["return", "answer", "respond", "reply", "output", "format"]
                .iter()
                .any(|w| lower.contains(w));
        example || instruction
    };
    let ask: Vec<&str> = prompt
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !about_json(l))
        .collect();
    (!ask.is_empty()).then(|| {
        format!(
            "{}\nGive the book a title, then list the chapters, numbered, each with a title and a one-sentence summary.",
            ask.join("\n")
        )
    })
}

/// Turn a numbered or bulleted list (`1. Title: summary`, `- Title — summary`,
/// `Chapter 2: Title - summary`) into `{"title", "chapters": [{"title", "summary"}]}`.
/// The book's title is the first heading (`# ...`, `**...**`, `Title: ...`), else
/// "Untitled". `None` when there is no list.
pub fn coerce_outline(text: &str) -> Option<Value> {
    coerce_outline_with_topic(text, None)
}

/// [`coerce_outline`], with `topic` as the title when the text has no heading.
pub fn coerce_outline_with_topic(text: &str, topic: Option<&str>) -> Option<Value> {
    let mut heading: Option<String> = None;
    let mut chapters: Vec<(String, String)> = Vec::new();
    let mut item_indent: Option<usize> = None;
    for raw in text.lines() {
        let line = raw.trim_end();
        let content = line.trim_start();
        if content.is_empty() || content.starts_with("```") {
            continue;
        }
        let indent = line.len() - content.len();
        match list_item(content) {
            Some(item) if item_indent.is_none_or(|i| indent <= i) => {
                item_indent = Some(indent);
                let (title, summary) = split_title(&item);
                if !title.is_empty() {
                    chapters.push((title, summary));
                }
            }
            // A deeper item or a continuation line: more of the chapter's summary.
            Some(item) if !chapters.is_empty() => append(&mut chapters, &item),
            // Indented, or the first line under a title-only item: its summary.
            _ if !chapters.is_empty()
                && (indent > 0 || chapters.last().is_some_and(|c| c.1.is_empty())) =>
            {
                append(&mut chapters, content)
            }
            _ if chapters.is_empty() && heading.is_none() => heading = heading_of(content),
            _ => {}
        }
    }
    if chapters.is_empty() {
        return None;
    }
    let title = heading
        .or_else(|| topic.map(title_case).filter(|t| !t.is_empty()))
        .unwrap_or_else(|| "Untitled".into());
    let chapters: Vec<Value> = chapters
        .into_iter()
        .map(|(title, summary)| json!({"title": title, "summary": summary}))
        .collect();
    Some(json!({"title": title, "chapters": chapters}))
}

/// A guess at a request's topic: the words after "about" up to the end of the
/// clause ("Plan a book about honey bees with 3 chapters." -> "honey bees").
pub fn topic_of(prompt: &str) -> Option<String> {
    let lower = prompt.to_ascii_lowercase();
    let at = lower.find(" about ")? + " about ".len();
    let rest = &prompt[at..];
    let lower_rest = &lower[at..];
    let mut end = rest
        .find(['.', ',', ';', ':', '\n', '?', '!'])
        .unwrap_or(rest.len());
    for stop in [" with ", " in ", " for ", " that ", " using "] {
        if let Some(i) = lower_rest.find(stop) {
            end = end.min(i);
        }
    }
    let topic = rest[..end].trim().trim_matches(['"', '\'', '*']).trim();
    (!topic.is_empty() && topic.len() <= 120).then(|| topic.to_owned())
}

fn append(chapters: &mut [(String, String)], more: &str) {
    if let Some((_, summary)) = chapters.last_mut() {
        let more = clean(more);
        if !more.is_empty() {
            if !summary.is_empty() {
                summary.push(' ');
            }
            summary.push_str(&more);
        }
    }
}

/// The text of a list item without its marker: `1.`, `1)`, `-`, `*`, `•`, `+`,
/// or `Chapter 1:`.
fn list_item(line: &str) -> Option<String> {
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    if digits > 0 && digits <= 3 {
        let rest = &line[digits..];
        if let Some(r) = rest.strip_prefix(['.', ')']) {
            if r.starts_with(char::is_whitespace) {
                return Some(strip_chapter_word(r.trim()));
            }
        }
    }
    for bullet in ["- ", "* ", "• ", "+ ", "– ", "— "] {
        if let Some(r) = line.strip_prefix(bullet) {
            return Some(strip_chapter_word(r.trim()));
        }
    }
    let unbold = line.trim_start_matches(['*', '#', ' ']);
    if starts_with_chapter_number(unbold) {
        return Some(strip_chapter_word(unbold));
    }
    None
}

fn starts_with_chapter_number(s: &str) -> bool {
    chapter_number_len(s).is_some()
}

/// The length of a leading "Chapter 3", "chapters 2-3" or "Chapters 4–5" (a
/// small model numbers a chapter that covers two parts of its plan that way).
fn chapter_number_len(s: &str) -> Option<usize> {
    let lower = s.to_ascii_lowercase();
    let word = ["chapters ", "chapter "]
        .iter()
        .find(|w| lower.starts_with(*w))?
        .len();
    let digits = |from: usize| s[from..].chars().take_while(char::is_ascii_digit).count();
    let first = digits(word);
    if first == 0 {
        return None;
    }
    let mut end = word + first;
    if let Some(dash) = ["-", "–", "—"].iter().find(|d| s[end..].starts_with(*d)) {
        let more = digits(end + dash.len());
        if more > 0 {
            end += dash.len() + more;
        }
    }
    Some(end)
}

/// "Chapter 3: The Hive" -> "The Hive" (and "**Chapter 3**: X" -> "X").
fn strip_chapter_word(item: &str) -> String {
    let unbold = item.trim_start_matches('*');
    if let Some(len) = chapter_number_len(unbold) {
        let after = &unbold[len..];
        let after = after.trim_start_matches('*');
        let after = after.trim_start_matches([':', '.', '-', '—', '–', ')', ' ']);
        // "Chapter 3" alone keeps its name.
        if after.trim().is_empty() {
            return clean(item);
        }
        return after.trim().to_owned();
    }
    item.to_owned()
}

/// "Title: summary", "Title — summary", "**Title** - summary", "Title" -> (title, summary).
fn split_title(item: &str) -> (String, String) {
    // A bold title is its own unit: "**The Hive**: life inside".
    if let Some(rest) = item.strip_prefix("**") {
        if let Some(end) = rest.find("**") {
            let title = clean(&rest[..end]);
            let summary = rest[end + 2..].trim_start_matches([':', '-', '—', '–', ' ', '.']);
            return (
                title.trim_end_matches(':').trim().to_owned(),
                clean(summary),
            );
        }
    }
    let separators = [": ", " — ", " – ", " - ", " -- "];
    let first = separators
        .iter()
        .filter_map(|s| item.find(s).map(|i| (i, s.len())))
        .min();
    match first {
        Some((i, len)) => (clean(&item[..i]), clean(&item[i + len..])),
        None => (clean(item.trim_end_matches(':')), String::new()),
    }
}

/// Markdown emphasis and quotes off, whitespace collapsed.
fn clean(s: &str) -> String {
    let s = s.replace("**", "").replace("__", "");
    let s = s.trim().trim_matches(['"', '“', '”', '*', '_', '`']).trim();
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A heading line's text, unless it is a generic label ("Outline", "Chapters").
fn heading_of(line: &str) -> Option<String> {
    let lower = line.to_lowercase();
    let text = if let Some(h) = line.strip_prefix('#') {
        h.trim_start_matches('#').trim().to_owned()
    } else if line.starts_with("**") && line.trim_end_matches(':').ends_with("**") {
        line.trim_end_matches(':')
            .trim_matches('*')
            .trim()
            .to_owned()
    } else if let Some(i) = ["book title:", "title:"]
        .iter()
        .find_map(|p| lower.starts_with(p).then_some(p.len()))
    {
        line[i..].trim().to_owned()
    } else {
        return None;
    };
    let text = clean(text.strip_prefix("Title:").unwrap_or(&text));
    let generic = [
        "outline",
        "book outline",
        "chapters",
        "table of contents",
        "contents",
    ];
    (!text.is_empty() && !generic.contains(&text.to_lowercase().trim_end_matches(':')))
        .then_some(text)
}

fn title_case(topic: &str) -> String {
    let mut c = topic.trim().chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_outline_request_is_reworded_for_a_list() {
        let p = "Plan a book about tea with 3 chapters.\nReturn only a JSON object of the form {\"title\": \"...\"}.\n\nAnswer with JSON only.";
        assert_eq!(
            super::outline_list_prompt(p).unwrap(),
            "Plan a book about tea with 3 chapters.\nGive the book a title, then list the chapters, numbered, each with a title and a one-sentence summary."
        );
        // A topic that mentions JSON stays; a prompt that is only JSON has no list form.
        let p = "Plan a book about JSON Schema with 2 chapters.\nReturn only a JSON object like {\"title\": \"...\"}.";
        assert!(super::outline_list_prompt(p)
            .unwrap()
            .starts_with("Plan a book about JSON Schema with 2 chapters.\n"));
        assert!(super::outline_list_prompt("{\"title\": \"...\", \"chapters\": []}").is_none());
    }

    use super::*;

    #[test]
    fn numbered_list_with_colons_and_a_heading() {
        let text = "# The Secret Life of Bees\n\n1. Inside the Hive: How a colony lives.\n2. Pollination: Why flowers need bees.\n3. Threats: What harms bees today.\n";
        let v = coerce_outline(text).unwrap();
        assert_eq!(v["title"], "The Secret Life of Bees");
        assert_eq!(v["chapters"].as_array().unwrap().len(), 3);
        assert_eq!(v["chapters"][0]["title"], "Inside the Hive");
        assert_eq!(v["chapters"][0]["summary"], "How a colony lives.");
        assert_eq!(v["chapters"][2]["title"], "Threats");
    }

    #[test]
    fn bullets_with_dashes_and_no_heading_take_the_topic() {
        let text = "Here is an outline:\n- The Hive — life inside a colony\n- Flowers – pollination\n* Honey - how it is made\n";
        let v = coerce_outline_with_topic(text, Some("bees")).unwrap();
        assert_eq!(v["title"], "Bees");
        let ch = v["chapters"].as_array().unwrap();
        assert_eq!(ch.len(), 3);
        assert_eq!(ch[0]["title"], "The Hive");
        assert_eq!(ch[0]["summary"], "life inside a colony");
        assert_eq!(ch[1]["summary"], "pollination");
        assert_eq!(ch[2]["title"], "Honey");
        assert_eq!(coerce_outline(text).unwrap()["title"], "Untitled");
    }

    #[test]
    fn chapter_ranges_are_one_chapter_each() {
        // SmolLM2's answer in the demo, with the F16 weights (a title line, then
        // "Chapters 2-3:" headings each followed by a paragraph).
        let text = "Title: The History of Tea\n\nChapter 1: The Golden Age\n\nIts origins.\n\nChapters 2-3: The Industrial Revolution\n\nFactories.\n\nChapters 4–5: The Modern Era\n\nCoffee culture.\n\nSummary:\n\nIn this chapter, more.";
        let v = coerce_outline(text).unwrap();
        assert_eq!(v["title"], "The History of Tea");
        let ch = v["chapters"].as_array().unwrap();
        assert_eq!(ch.len(), 3, "{v}");
        assert_eq!(ch[0]["summary"], "Its origins.");
        assert_eq!(ch[1]["title"], "The Industrial Revolution");
        assert_eq!(ch[1]["summary"], "Factories.");
        assert_eq!(ch[2]["title"], "The Modern Era");
        assert!(coerce_outline("Chapters about bees: none").is_none());
    }

    #[test]
    fn bold_titles_chapter_words_and_sub_bullets() {
        let text = "**Title: Bees and Us**\n\n1. **Chapter 1: The Hive** - Life inside.\n   - Workers and drones.\n2. **The Queen**: Her role.\nChapter 3: Honey\nHow honey is made.\nThat is all.\n";
        let v = coerce_outline(text).unwrap();
        assert_eq!(v["title"], "Bees and Us");
        let ch = v["chapters"].as_array().unwrap();
        assert_eq!(ch.len(), 3, "{v}");
        assert_eq!(ch[0]["title"], "The Hive");
        assert_eq!(ch[0]["summary"], "Life inside. Workers and drones.");
        assert_eq!(ch[1]["title"], "The Queen");
        assert_eq!(ch[1]["summary"], "Her role.");
        assert_eq!(ch[2]["title"], "Honey");
        assert_eq!(ch[2]["summary"], "How honey is made.");
    }

    #[test]
    fn prose_is_not_an_outline() {
        assert_eq!(coerce_outline("Bees are insects. They make honey."), None);
        assert_eq!(coerce_outline(""), None);
        assert_eq!(coerce_outline("In 2024. bees"), None);
    }

    #[test]
    fn generic_headings_are_not_titles() {
        let v = coerce_outline("## Outline\n1. A: b\n").unwrap();
        assert_eq!(v["title"], "Untitled");
    }

    #[test]
    fn topics_come_from_the_request() {
        assert_eq!(
            topic_of("Plan a book about honey bees with 3 chapters.").as_deref(),
            Some("honey bees")
        );
        assert_eq!(topic_of("Write about space.").as_deref(), Some("space"));
        assert_eq!(topic_of("Plan a book."), None);
    }

    #[test]
    fn the_example_answer_is_the_outline_shape() {
        let v: Value = serde_json::from_str(EXAMPLE_ANSWER).unwrap();
        assert!(v["title"].is_string());
        assert_eq!(v["chapters"].as_array().unwrap().len(), 2);
    }
}
