//! The demo's view of a book being written: `generation_deltas` rows (read as the
//! requesting user through PostgREST, as the React app would with supabase-js) turned
//! into whole lines, each labelled with its call, so parallel chapters interleave
//! readably. A call's text follows the reassembly rule of sql/V11 as V15 amends it (an
//! attempt row may carry the attempt's first text): a discarded attempt or a restarted
//! call is said so, and its unprinted text is dropped.

use serde_json::Value;
use std::collections::BTreeMap;

/// Lines longer than this are cut at a space (a model may write a paragraph as one line).
const WIDTH: usize = 96;

#[derive(Default)]
pub struct LiveText {
    /// The last row taken (the position to read after).
    pub last: i64,
    /// Text of each call (step, item) not yet printed as a whole line.
    pending: BTreeMap<(String, i64), String>,
}

fn label(step: &str, item: i64) -> String {
    if item < 0 {
        step.to_owned()
    } else {
        format!("{step} {}", item + 1)
    }
}

impl LiveText {
    /// Take one row (its JSON); returns the lines it completes.
    pub fn absorb(&mut self, row: &Value) -> Vec<String> {
        let seq = row["seq"].as_i64().unwrap_or(0);
        if seq <= self.last {
            return Vec::new();
        }
        self.last = seq;
        let step = row["step_id"].as_str().unwrap_or("?").to_owned();
        let item = row["item_index"].as_i64().unwrap_or(-1);
        let name = label(&step, item);
        let key = (step, item);
        match row["kind"].as_str() {
            Some("delta") => {
                let buf = self.pending.entry(key).or_default();
                buf.push_str(row["text"].as_str().unwrap_or(""));
                take_lines(buf, false)
                    .into_iter()
                    .map(|l| format!("[{name}] {l}"))
                    .collect()
            }
            Some("attempt") => {
                let meta = &row["meta"];
                let by = match (meta["provider"].as_str(), meta["model"].as_str()) {
                    (Some(p), Some(m)) => format!(" ({p}/{m})"),
                    _ => String::new(),
                };
                let n = row["attempt"].as_i64().unwrap_or(1);
                let retry = if n > 1 {
                    format!(", attempt {n}")
                } else {
                    String::new()
                };
                // The attempt's first text may ride on its row (sql/V15).
                let buf = self.pending.entry(key).or_default();
                *buf = row["text"].as_str().unwrap_or("").to_owned();
                let mut out = vec![format!("[{name}] -- writing{by}{retry} --")];
                out.extend(
                    take_lines(buf, false)
                        .into_iter()
                        .map(|l| format!("[{name}] {l}")),
                );
                out
            }
            Some("discard") => {
                self.pending.remove(&key);
                let why = row["meta"]["reason"]
                    .as_str()
                    .unwrap_or("it failed part-way");
                vec![format!(
                    "[{name}] -- that attempt is discarded ({why}); it is tried again --"
                )]
            }
            Some("restart") => {
                self.pending.remove(&key);
                vec![format!(
                    "[{name}] -- the job resumed: this call is written again --"
                )]
            }
            _ => Vec::new(),
        }
    }

    /// What is left of every call, as lines (at the end of the job).
    pub fn finish(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for ((step, item), mut buf) in std::mem::take(&mut self.pending) {
            let name = label(&step, item);
            out.extend(
                take_lines(&mut buf, true)
                    .into_iter()
                    .map(|l| format!("[{name}] {l}")),
            );
        }
        out
    }
}

/// Whole lines out of `buf` (and over-long ones cut at a space); with `all`, the rest too.
fn take_lines(buf: &mut String, all: bool) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        if let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            let line = line.trim_end();
            if !line.is_empty() {
                out.push(line.to_owned());
            }
            continue;
        }
        if buf.chars().count() > WIDTH {
            let cut = buf
                .char_indices()
                .take_while(|(i, _)| *i <= WIDTH)
                .filter(|(_, c)| *c == ' ')
                .map(|(i, _)| i)
                .last();
            if let Some(i) = cut.filter(|i| *i > 0) {
                let line: String = buf.drain(..=i).collect();
                out.push(line.trim_end().to_owned());
                continue;
            }
        }
        break;
    }
    if all && !buf.trim().is_empty() {
        out.push(buf.trim_end().to_owned());
        buf.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(seq: i64, item: i64, kind: &str, text: &str) -> Value {
        json!({"seq": seq, "step_id": "chapters", "item_index": item, "kind": kind,
               "attempt": if seq > 5 { 2 } else { 1 }, "run": 1, "text": text,
               "meta": {"provider": "local", "model": "smol", "reason": "cut"}})
    }

    #[test]
    fn whole_lines_per_call_and_discarded_text_dropped() {
        let mut live = LiveText::default();
        assert_eq!(
            live.absorb(&row(1, 0, "attempt", "")),
            vec!["[chapters 1] -- writing (local/smol) --"]
        );
        assert!(live.absorb(&row(2, 0, "delta", "The sea ")).is_empty());
        assert_eq!(
            live.absorb(&row(3, 0, "delta", "rose.\nThen ")),
            vec!["[chapters 1] The sea rose."]
        );
        assert!(live.absorb(&row(3, 0, "delta", "again")).is_empty(), "seen");
        assert_eq!(live.absorb(&row(4, 0, "discard", "")).len(), 1);
        assert_eq!(
            live.absorb(&row(6, 0, "attempt", "")),
            vec!["[chapters 1] -- writing (local/smol), attempt 2 --"]
        );
        live.absorb(&row(7, 0, "delta", "Calm water"));
        assert_eq!(live.finish(), vec!["[chapters 1] Calm water"]);
        assert_eq!(live.last, 7);
    }

    #[test]
    fn an_attempt_row_carrying_text_starts_the_call_with_it() {
        let mut live = LiveText::default();
        assert_eq!(
            live.absorb(&row(1, 0, "attempt", "One line.\nAnd ")),
            vec![
                "[chapters 1] -- writing (local/smol) --",
                "[chapters 1] One line."
            ]
        );
        live.absorb(&row(2, 0, "delta", "more"));
        assert_eq!(live.finish(), vec!["[chapters 1] And more"]);
    }

    #[test]
    fn long_lines_are_cut_at_a_space() {
        let mut buf = "word ".repeat(40);
        let lines = take_lines(&mut buf, true);
        assert!(lines.len() >= 2, "{lines:?}");
        assert!(lines.iter().all(|l| l.chars().count() <= WIDTH + 1));
        assert_eq!(lines.join(" "), "word ".repeat(40).trim_end());
    }
}
