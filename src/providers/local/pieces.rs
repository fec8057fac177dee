//! Text out of a decode loop token by token, for streaming. A token may end in
//! the middle of a UTF-8 character (byte-level vocabularies) and a tokenizer may
//! drop a leading space of whatever it decodes first (SentencePiece), so each
//! step decodes a window that starts at the previous piece's tokens and sends
//! only what that adds, and holds back a window that ends mid-character.

use super::tokenizer::ChatTokenizer;

#[derive(Debug, Default)]
pub struct Pieces {
    /// Where the window starts: the first token of the last piece sent.
    prev: usize,
    /// Where the last piece sent ended.
    current: usize,
    /// All the text sent so far.
    pub sent: String,
}

impl Pieces {
    /// The text `output`'s newest tokens add, once it is whole characters.
    pub fn next(
        &mut self,
        tokenizer: &ChatTokenizer,
        output: &[u32],
    ) -> anyhow::Result<Option<String>> {
        let before = tokenizer.decode(&output[self.prev..self.current])?;
        let now = tokenizer.decode(&output[self.prev..])?;
        if now.ends_with('\u{FFFD}') || now.len() <= before.len() {
            return Ok(None);
        }
        let Some(piece) = now.get(before.len()..).filter(|_| now.starts_with(&before)) else {
            return Ok(None);
        };
        let piece = piece.to_owned();
        self.prev = self.current;
        self.current = output.len();
        self.sent.push_str(&piece);
        Ok(Some(piece))
    }

    /// What is left once generation stopped, given the whole decoded answer; None
    /// if the pieces sent are not its start (then the answer is what was sent).
    pub fn rest<'a>(&self, whole: &'a str) -> Option<&'a str> {
        whole.strip_prefix(self.sent.as_str())
    }
}

/// Pieces of an answer that is trimmed at both ends: leading whitespace is never
/// sent, and whitespace is held back until text follows it, so the pieces sent
/// join into exactly `answer.trim()`.
#[derive(Debug, Default)]
pub struct Trimmed {
    started: bool,
    pending: String,
}

impl Trimmed {
    /// The part of `piece` that may be sent now (possibly empty).
    pub fn push(&mut self, piece: &str) -> String {
        let piece = if self.started {
            piece
        } else {
            piece.trim_start()
        };
        if piece.is_empty() {
            return String::new();
        }
        self.started = true;
        let body = piece.trim_end();
        if body.is_empty() {
            self.pending.push_str(piece);
            return String::new();
        }
        let out = format!("{}{body}", std::mem::take(&mut self.pending));
        self.pending.push_str(&piece[body.len()..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimmed_pieces_join_into_the_trimmed_text() {
        for pieces in [
            vec!["  \n", " Hello", " ", "world", "\n\n", "again ", " \n"],
            vec!["one"],
            vec![" ", "\t"],
            vec!["a ", "b  ", "", "c"],
        ] {
            let whole: String = pieces.concat();
            let mut t = Trimmed::default();
            let sent: String = pieces.iter().map(|p| t.push(p)).collect();
            assert_eq!(sent, whole.trim(), "{pieces:?}");
        }
    }
}
