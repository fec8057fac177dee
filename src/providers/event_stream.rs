//! Server-sent events out of a response body, as the HTML standard's EventSource
//! parses them: lines end at CRLF, LF or CR; `event:` names the event, `data:` lines
//! are joined with LF; comments, `id:`, `retry:` and unknown fields are ignored (a
//! provider's stream needs neither); a blank line dispatches the event when it has
//! data; an event not ended by a blank line when the body ends is dropped.
//!
//! In place of `eventsource-stream`: that crate copies the rest of its buffer after
//! every line and allocates per line, which with a fast provider was about half of
//! what streaming added to the worker's CPU (benches/README 7d). Here a body chunk is
//! scanned once, and only an event's data (and a named event's type) is allocated.

use bytes::Bytes;
use futures::Stream;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// One event: its type (`message` when it named none) and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    pub event: String,
    pub data: String,
}

const NOT_UTF8: &str = "malformed response: the event stream is not UTF-8";

/// The parser's state between body chunks.
#[derive(Debug, Default)]
pub(crate) struct Framer {
    /// A line begun in an earlier chunk.
    partial: Vec<u8>,
    /// The last line ended with CR: an LF right after it belongs to it.
    after_cr: bool,
    /// A byte order mark may still come (nothing was read yet).
    started: bool,
    event: String,
    data: String,
}

impl Framer {
    /// Parse `chunk`, adding the events it completes to `out`. A line that is not
    /// UTF-8 is an error; the events before it are still added.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut VecDeque<Event>) -> Result<(), String> {
        const BOM: &[u8] = b"\xEF\xBB\xBF";
        if !self.started {
            let mut head = std::mem::take(&mut self.partial);
            head.extend_from_slice(chunk);
            // The BOM may be cut across chunks: wait until three bytes are known.
            if head.len() < BOM.len() && BOM.starts_with(&head) {
                self.partial = head;
                return Ok(());
            }
            self.started = true;
            let body = head.strip_prefix(BOM).unwrap_or(&head);
            return self.lines(body, out);
        }
        if chunk.is_empty() {
            return Ok(());
        }
        if std::mem::take(&mut self.after_cr) && chunk[0] == b'\n' {
            chunk = &chunk[1..];
        }
        self.lines(chunk, out)
    }

    fn lines(&mut self, mut chunk: &[u8], out: &mut VecDeque<Event>) -> Result<(), String> {
        while let Some(end) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            let cr = chunk[end] == b'\r';
            if self.partial.is_empty() {
                self.line(&chunk[..end], out)?;
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&chunk[..end]);
                self.line(&line, out)?;
                line.clear();
                self.partial = line;
            }
            let mut next = end + 1;
            if cr {
                match chunk.get(next) {
                    Some(b'\n') => next += 1,
                    // The LF of a CRLF may open the next chunk.
                    None => self.after_cr = true,
                    Some(_) => {}
                }
            }
            chunk = &chunk[next..];
        }
        self.partial.extend_from_slice(chunk);
        Ok(())
    }

    fn line(&mut self, line: &[u8], out: &mut VecDeque<Event>) -> Result<(), String> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            if self.data.is_empty() {
                return Ok(());
            }
            let mut data = std::mem::take(&mut self.data);
            data.pop(); // the LF after the last data line
            out.push_back(Event {
                event: if event.is_empty() {
                    "message".to_owned()
                } else {
                    event
                },
                data,
            });
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let line = std::str::from_utf8(line).map_err(|_| NOT_UTF8.to_owned())?;
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "event" => value.clone_into(&mut self.event),
            _ => {}
        }
        Ok(())
    }
}

/// A body's chunks as events; a transport error (as the caller words it) or a line
/// that is not UTF-8 ends it with an `Err`.
pub(crate) struct EventStream<S> {
    body: S,
    framer: Framer,
    ready: VecDeque<Event>,
    failed: Option<String>,
    ended: bool,
}

impl<S> EventStream<S> {
    pub fn new(body: S) -> Self {
        Self {
            body,
            framer: Framer::default(),
            ready: VecDeque::new(),
            failed: None,
            ended: false,
        }
    }
}

impl<S> Stream for EventStream<S>
where
    S: Stream<Item = Result<Bytes, String>> + Unpin,
{
    type Item = Result<Event, String>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            if let Some(e) = this.failed.take() {
                this.ended = true;
                return Poll::Ready(Some(Err(e)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.body).poll_next(cx)) {
                Some(Ok(chunk)) => {
                    if let Err(e) = this.framer.feed(&chunk, &mut this.ready) {
                        this.failed = Some(e);
                    }
                }
                Some(Err(e)) => this.failed = Some(e),
                None => this.ended = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn parse(chunks: &[&[u8]]) -> (Vec<(String, String)>, Option<String>) {
        let mut f = Framer::default();
        let mut out = VecDeque::new();
        let mut err = None;
        for c in chunks {
            if let Err(e) = f.feed(c, &mut out) {
                err = Some(e);
                break;
            }
        }
        (out.into_iter().map(|e| (e.event, e.data)).collect(), err)
    }

    fn ev(event: &str, data: &str) -> (String, String) {
        (event.to_owned(), data.to_owned())
    }

    #[test]
    fn events_fields_and_line_ends_as_the_standard_reads_them() {
        let (got, err) = parse(&[
            b"\xEF\xBB\xBFdata: one\n\n",
            b": a comment\nevent: content_block_delta\r\ndata:{\"a\":1}\r\n\r\n",
            b"data: multi\ndata:  line\rid: 7\nretry: 10\nfoo: bar\n\n",
            b"data\n\ndata:\n\n\n\nevent: ping\n\n",
            b"data: cut at the end",
        ]);
        assert_eq!(err, None);
        assert_eq!(
            got,
            vec![
                ev("message", "one"),
                ev("content_block_delta", "{\"a\":1}"),
                ev("message", "multi\n line"),
                ev("message", ""),
                ev("message", ""),
            ],
            "an event without data (the ping) is not dispatched; an unended one is dropped"
        );
    }

    #[test]
    fn any_cut_between_chunks_gives_the_same_events() {
        let body: &[u8] =
            "\u{feff}event: a\r\ndata: héllo wörld\r\n\r\ndata: x\rdata: y\r\rdata: z\n\n"
                .as_bytes();
        let whole = parse(&[body]);
        assert_eq!(
            whole.0,
            vec![
                ev("a", "héllo wörld"),
                ev("message", "x\ny"),
                ev("message", "z")
            ]
        );
        for i in 0..=body.len() {
            for j in i..=body.len() {
                let cut = parse(&[&body[..i], &body[i..j], &body[j..]]);
                assert_eq!(cut, whole, "cut at {i} and {j}");
            }
        }
    }

    #[test]
    fn a_line_that_is_not_utf8_is_an_error_after_the_events_before_it() {
        let (got, err) = parse(&[b"data: fine\n\ndata: \xFF\xFE\n\n"]);
        assert_eq!(got, vec![ev("message", "fine")]);
        assert_eq!(err.as_deref(), Some(NOT_UTF8));
    }

    #[tokio::test]
    async fn the_stream_ends_with_the_body_or_with_its_error() {
        let chunks: Vec<Result<Bytes, String>> = vec![
            Ok(Bytes::from_static(b"data: a\n")),
            Ok(Bytes::from_static(b"\ndata: b\n\n")),
            Err("the body broke".into()),
        ];
        let got: Vec<_> = EventStream::new(futures::stream::iter(chunks))
            .collect()
            .await;
        assert_eq!(
            got,
            vec![
                Ok(Event {
                    event: "message".into(),
                    data: "a".into()
                }),
                Ok(Event {
                    event: "message".into(),
                    data: "b".into()
                }),
                Err("the body broke".into()),
            ]
        );
    }
}
