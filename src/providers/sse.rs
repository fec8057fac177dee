//! Reading a provider's server-sent events: the status check before the first
//! byte (as for a whole answer), then each event through the provider's
//! decoder, with a limit on how long the stream may go quiet. SSE framing is
//! `eventsource-stream`'s; what each event means is the provider's.

use super::stream::DeltaSink;
use super::{retry_after, send, ChatProvider, ChatRequest, ChatResponse, ProviderError, Usage};
use async_trait::async_trait;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::time::Duration;

/// A provider spoken over HTTP: how its requests are built and its answers read.
/// Each wire format (OpenAI, Anthropic, Gemini) says only that; sending, status
/// classification and the event stream are the same for all of them (below).
pub(crate) trait HttpApi: Send + Sync {
    type Decoder: StreamDecoder + Default;
    /// The request for a whole answer, or (`stream`) for an event stream.
    fn request(
        &self,
        req: &ChatRequest,
        stream: bool,
        timeout: Duration,
    ) -> Result<reqwest::RequestBuilder, ProviderError>;
    /// Reads a whole answer's body.
    const PARSE: Parse;
}

/// How a wire format reads a whole answer's body.
pub(crate) type Parse = fn(&str) -> Result<ChatResponse, ProviderError>;

#[async_trait]
impl<T: HttpApi> ChatProvider for T {
    async fn chat(
        &self,
        req: &ChatRequest,
        timeout: Duration,
    ) -> Result<ChatResponse, ProviderError> {
        (T::PARSE)(&send(self.request(req, false, timeout)?).await?)
    }

    async fn stream(
        &self,
        req: &ChatRequest,
        timeout: Duration,
        idle: Duration,
        sink: &DeltaSink,
    ) -> Result<ChatResponse, ProviderError> {
        let request = self.request(req, true, timeout)?;
        call(request, idle, sink, T::Decoder::default(), T::PARSE).await
    }
}

/// What a provider's wire format says, event by event.
pub(crate) trait StreamDecoder: Send {
    /// One event (`name` is `message` when the event has no `event:` line):
    /// the text it adds, if any. An error event or a malformed chunk is an `Err`.
    fn event(&mut self, name: &str, data: &str) -> Result<Option<String>, ProviderError>;
    /// The provider said the stream is over: stop reading.
    fn done(&self) -> bool;
    /// The answer was finished (a terminal event, or a finish reason where the
    /// format has no terminal event); a stream that ends before this was cut.
    fn complete(&self) -> bool;
    /// Token usage reported so far, if any.
    fn usage(&self) -> Option<Usage>;
}

type Events = Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, String>> + Send>>;

/// A 2xx answer: an event stream, or (from a server that ignored `stream: true`)
/// a whole body.
pub(crate) enum Opened {
    Events(Events),
    Whole(String),
}

/// Send the request; an error status becomes a classified [`ProviderError`]
/// with its `Retry-After`, exactly as for a whole answer.
pub(crate) async fn open(request: reqwest::RequestBuilder) -> Result<Opened, ProviderError> {
    let response = request
        .send()
        .await
        .map_err(|e| ProviderError::transport(&e))?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        let wait = retry_after(response.headers());
        let text = response
            .text()
            .await
            .map_err(|e| ProviderError::transport(&e))?;
        return Err(ProviderError::from_status(status, wait, &text));
    }
    let is_sse = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    if !is_sse {
        let text = response
            .text()
            .await
            .map_err(|e| ProviderError::transport(&e))?;
        return Ok(Opened::Whole(text));
    }
    let events = response.bytes_stream().eventsource().map(|r| {
        r.map_err(|e| match e {
            EventStreamError::Transport(e) => ProviderError::transport(&e).to_string(),
            EventStreamError::Utf8(_) => "malformed response: the event stream is not UTF-8".into(),
            EventStreamError::Parser(_) => "malformed response: unreadable event stream".into(),
        })
    });
    Ok(Opened::Events(Box::pin(events)))
}

fn transient(message: String) -> ProviderError {
    ProviderError::in_answer(false, message)
}

/// One streamed call: its events through `decoder`, or, when the server answered
/// whole (a compatible server that ignores `stream`), the body through `parse`.
pub(crate) async fn call(
    request: reqwest::RequestBuilder,
    idle: Duration,
    sink: &DeltaSink,
    decoder: impl StreamDecoder,
    parse: impl FnOnce(&str) -> Result<ChatResponse, ProviderError>,
) -> Result<ChatResponse, ProviderError> {
    match open(request).await? {
        Opened::Events(events) => read(events, idle, sink, decoder).await,
        Opened::Whole(text) => whole(&text, sink, parse),
    }
}

/// Read events until the decoder says the stream is over (or it ends), sending
/// text to `sink` as it comes. A dropped connection, a malformed chunk, an error
/// event, a gap longer than `idle`, or an end before the answer was finished all
/// fail the attempt (transient, so the policy retries it).
pub(crate) async fn read(
    mut events: Events,
    idle: Duration,
    sink: &DeltaSink,
    mut decoder: impl StreamDecoder,
) -> Result<ChatResponse, ProviderError> {
    use futures::FutureExt;
    let mut text = String::new();
    // Deltas that arrived together (one network read holds many events) go to the sink
    // as one: the sink's consumers then do per read what they would do per event.
    let mut pending = String::new();
    let outcome = loop {
        if decoder.done() {
            break Ok(());
        }
        let next = match events.next().now_or_never() {
            Some(next) => Ok(next),
            None => {
                sink.delta(&std::mem::take(&mut pending));
                tokio::time::timeout(idle, events.next()).await
            }
        };
        let event = match next {
            Err(_) => {
                break Err(transient(format!(
                    "the stream stalled: nothing for {} ms",
                    idle.as_millis()
                )))
            }
            Ok(None) => break Ok(()),
            Ok(Some(Err(message))) => break Err(transient(format!("the stream broke: {message}"))),
            Ok(Some(Ok(event))) => event,
        };
        let delta = match decoder.event(&event.event, &event.data) {
            Ok(delta) => delta,
            Err(e) => break Err(e),
        };
        if let Some(usage) = decoder.usage() {
            sink.report_usage(usage);
        }
        if let Some(delta) = delta.filter(|d| !d.is_empty()) {
            pending.push_str(&delta);
            text.push_str(&delta);
        }
    };
    // What arrived before the end (or the failure) is sent: a failed attempt's text is
    // the caller's to discard.
    sink.delta(&pending);
    outcome?;
    if !decoder.complete() {
        return Err(transient(
            "the stream ended before its terminal event".into(),
        ));
    }
    if text.is_empty() {
        return Err(ProviderError::malformed("the stream carried no text"));
    }
    let (usage, note) = match decoder.usage() {
        Some(usage) => (usage, None),
        // Like a whole answer without `usage`: zero, never an estimate, and said.
        None => (
            Usage::default(),
            Some("the provider reported no token usage for this stream; none was estimated".into()),
        ),
    };
    Ok(ChatResponse { text, usage, note })
}

/// A whole answer where a stream was asked for: parsed as usual, sent as one delta.
pub(crate) fn whole(
    body: &str,
    sink: &DeltaSink,
    parse: impl FnOnce(&str) -> Result<ChatResponse, ProviderError>,
) -> Result<ChatResponse, ProviderError> {
    let response = parse(body)?;
    sink.report_usage(response.usage);
    sink.delta(&response.text);
    Ok(response)
}

/// Parse a chunk's JSON, naming the format when it is not.
pub(crate) fn chunk<T: serde::de::DeserializeOwned>(
    data: &str,
    what: &str,
) -> Result<T, ProviderError> {
    serde_json::from_str(data).map_err(|_| ProviderError::malformed(&format!("not {what}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text in every event; complete after an event whose data is `end`.
    #[derive(Default)]
    struct Plain {
        ended: bool,
        usage: Option<Usage>,
    }

    impl StreamDecoder for Plain {
        fn event(&mut self, _name: &str, data: &str) -> Result<Option<String>, ProviderError> {
            if data == "end" {
                self.ended = true;
                return Ok(None);
            }
            if data == "usage" {
                self.usage = Some(Usage {
                    input_tokens: 4,
                    output_tokens: 2,
                });
                return Ok(None);
            }
            Ok(Some(data.to_owned()))
        }
        fn done(&self) -> bool {
            false
        }
        fn complete(&self) -> bool {
            self.ended
        }
        fn usage(&self) -> Option<Usage> {
            self.usage
        }
    }

    fn events(data: &[&str]) -> Vec<Result<eventsource_stream::Event, String>> {
        data.iter()
            .map(|d| {
                Ok(eventsource_stream::Event {
                    event: "message".into(),
                    data: (*d).into(),
                    id: String::new(),
                    retry: None,
                })
            })
            .collect()
    }

    async fn run(
        stream: Events,
        idle: Duration,
    ) -> (Result<ChatResponse, ProviderError>, DeltaSink) {
        let sink = DeltaSink::counting();
        (read(stream, idle, &sink, Plain::default()).await, sink)
    }

    #[tokio::test]
    async fn deltas_join_into_the_answer_and_usage_is_reported() {
        let s = Box::pin(futures::stream::iter(events(&["a", "b", "usage", "end"])));
        let (r, sink) = run(s, Duration::from_secs(5)).await;
        let r = r.expect("complete");
        assert_eq!(r.text, "ab");
        assert_eq!(sink.sent_bytes(), 2);
        assert_eq!(r.usage.output_tokens, 2);
        assert_eq!(r.note, None);
    }

    #[tokio::test]
    async fn missing_usage_is_zero_and_said_in_the_note() {
        let s = Box::pin(futures::stream::iter(events(&["a", "end"])));
        let r = run(s, Duration::from_secs(5)).await.0.expect("complete");
        assert_eq!(r.usage, Usage::default());
        assert!(r.note.unwrap_or_default().contains("no token usage"));
    }

    #[tokio::test]
    async fn an_end_before_the_terminal_event_is_a_failed_attempt() {
        let s = Box::pin(futures::stream::iter(events(&["a", "b"])));
        let (r, sink) = run(s, Duration::from_secs(5)).await;
        let e = r.expect_err("cut");
        assert!(matches!(e, ProviderError::Transient { .. }));
        assert!(e.to_string().contains("terminal event"), "{e}");
        assert_eq!(
            sink.sent_bytes(),
            2,
            "what was sent is the caller's to discard"
        );
    }

    #[tokio::test]
    async fn a_quiet_stream_fails_after_the_idle_timeout() {
        let s = Box::pin(futures::stream::iter(events(&["a"])).chain(futures::stream::pending()));
        let e = run(s, Duration::from_millis(50))
            .await
            .0
            .expect_err("stalled");
        assert!(e.to_string().contains("stalled"), "{e}");
    }

    #[tokio::test]
    async fn a_transport_error_mid_stream_is_transient() {
        let mut items = events(&["a"]);
        items.push(Err("response body was cut short or unreadable".into()));
        let e = run(
            Box::pin(futures::stream::iter(items)),
            Duration::from_secs(5),
        )
        .await
        .0
        .expect_err("broken");
        assert!(matches!(e, ProviderError::Transient { .. }));
        assert!(e.to_string().contains("broke"), "{e}");
    }

    /// Events that arrive together reach the sink as one delta; a pause between them
    /// sends what came before it at once.
    #[tokio::test]
    async fn deltas_that_arrive_together_are_sent_as_one() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sink = DeltaSink::new(1, tx);
        let pause = futures::stream::once(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(eventsource_stream::Event {
                event: "message".into(),
                data: "c".into(),
                id: String::new(),
                retry: None,
            })
        });
        let s = futures::stream::iter(events(&["a", "b"]))
            .chain(pause)
            .chain(futures::stream::iter(events(&["d", "end"])));
        let r = read(Box::pin(s), Duration::from_secs(5), &sink, Plain::default())
            .await
            .expect("complete");
        assert_eq!(r.text, "abcd");
        drop(sink);
        let mut sent = Vec::new();
        while let Some(e) = rx.recv().await {
            if let crate::providers::StreamEvent::Delta { text, .. } = e {
                sent.push(text);
            }
        }
        assert_eq!(sent, ["ab", "cd"]);
    }
}
