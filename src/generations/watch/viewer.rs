//! One open event stream: what it sends, in order, with no gap in the text rows.

use super::deltas::{self, DeltaEvent};
use super::{lock, Body, Reader, Slot, Update, FIRST_ROUND_WAIT};
use crate::error::{codes, Code, Result};
use crate::rest::Rest;
use crate::secret::Secret;
use futures::Stream;
use serde_json::json;
use std::sync::Arc;
use tokio::sync::broadcast;
use tokio::time::Instant;

/// One SSE event as a viewer sends it.
pub enum Sent {
    Snapshot(Arc<Update>),
    Delta(Arc<DeltaEvent>),
}

impl Sent {
    pub fn event(&self) -> &'static str {
        match self {
            Sent::Snapshot(u) => match &u.body {
                Body::Snapshot { event, .. } => event,
                Body::Deltas { .. } => "deltas",
            },
            Sent::Delta(d) => d.event,
        }
    }

    pub fn data(&self) -> &str {
        match self {
            Sent::Snapshot(u) => match &u.body {
                Body::Snapshot { data, .. } => data,
                Body::Deltas { .. } => "",
            },
            Sent::Delta(d) => &d.data,
        }
    }

    /// The SSE `id:`: a text row's `seq` (snapshots carry none, so a client's last
    /// event id is always the last text row it got).
    pub fn id(&self) -> Option<i64> {
        match self {
            Sent::Snapshot(_) => None,
            Sent::Delta(d) => Some(d.seq),
        }
    }
}

fn error_update(seq: u64, code: Code, message: &str, last: bool) -> Arc<Update> {
    Arc::new(Update {
        seq,
        body: Body::Snapshot {
            event: "error",
            data: json!({"code": code, "message": message}).to_string(),
            last,
        },
    })
}

/// One open stream: its place in a reader, until dropped.
pub struct Viewer {
    pub(super) _slot: Slot,
    pub(super) id: u64,
    pub(super) reader: Arc<Reader>,
    pub(super) rx: broadcast::Receiver<Arc<Update>>,
    pub(super) deadline: Instant,
    pub(super) rest: Rest,
    pub(super) token: Secret,
    /// The last text row this viewer has (its `Last-Event-ID`; 0 = none).
    pub(super) after: i64,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        lock(&self.reader.shared).tokens.remove(&self.id);
    }
}

impl Viewer {
    /// The rows `after < seq <= upto` this viewer lacks: from the reader's memory when
    /// it holds them (rows after what it holds reach this viewer in the reader's next
    /// batches, to which it subscribed before asking), else by its own read.
    async fn replay(&self, after: i64, upto: Option<i64>) -> Result<Vec<Arc<DeltaEvent>>> {
        let held = lock(&self.reader.shared).history.rows_after(after, upto);
        match (held, upto) {
            (Some((rows, _)), None) => return Ok(rows),
            (Some((rows, reached)), Some(upto)) if reached >= upto => return Ok(rows),
            _ => {}
        }
        deltas::read(
            &self.rest,
            &self.token,
            self.reader.job,
            after,
            upto,
            "replay",
        )
        .await
    }

    /// What this viewer sends: the current snapshot first, the text rows after its
    /// position (read from the table), then each change and each new batch of text as
    /// the reader publishes them; ends after a `done` or a final `error`, or with
    /// `token_expired` at the token's expiry. Text rows are sent once each, in `seq`
    /// order, with no gap: what the shared batches skip, the viewer reads itself.
    pub fn updates(mut self) -> impl Stream<Item = Sent> + Send {
        async_stream::stream! {
            let mut seen = 0u64;
            let mut cursor = self.after;
            // Subscribed before reading `latest`, so nothing falls between the two.
            let first = lock(&self.reader.shared).latest.clone();
            let mut ending = None;
            if let Some(u) = first {
                seen = u.seq;
                if u.is_last() {
                    ending = Some(u);
                } else {
                    yield Sent::Snapshot(u);
                }
            }
            // The text written before this viewer came (or since its Last-Event-ID):
            // a new reader's first read brings it, so wait for that round first.
            if !lock(&self.reader.shared).history.ready {
                let mut rounds = self.reader.rounds.subscribe();
                let _ = tokio::time::timeout(FIRST_ROUND_WAIT, rounds.wait_for(|n| *n > 0)).await;
            }
            match self.replay(cursor, None).await {
                Ok(rows) => {
                    for r in rows {
                        cursor = r.seq;
                        yield Sent::Delta(r);
                    }
                }
                Err(e) => {
                    yield Sent::Snapshot(error_update(seen + 1, e.code, &e.message, true));
                    return;
                }
            }
            if let Some(u) = ending {
                yield Sent::Snapshot(u);
                return;
            }
            loop {
                let next = tokio::select! {
                    biased;
                    _ = tokio::time::sleep_until(self.deadline) => {
                        yield Sent::Snapshot(error_update(
                            seen + 1,
                            codes::TOKEN_EXPIRED,
                            "the access token expired; reconnect with a fresh one",
                            true,
                        ));
                        return;
                    }
                    r = self.rx.recv() => r,
                };
                let (update, lagged) = match next {
                    Ok(u) => (u, false),
                    // Fell behind: the latest snapshot says everything the skipped ones
                    // did; the skipped text is read back from the table below.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        match lock(&self.reader.shared).latest.clone() {
                            Some(u) => (u, true),
                            None => continue,
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                // Rows this viewer lacks before what comes next: read them itself.
                let gap_to = match &update.body {
                    _ if lagged => Some(None),
                    Body::Deltas { after, .. } if *after > cursor => Some(Some(*after)),
                    _ => None,
                };
                if let Some(upto) = gap_to {
                    match self.replay(cursor, upto).await {
                        Ok(rows) => {
                            for r in rows {
                                cursor = r.seq;
                                yield Sent::Delta(r);
                            }
                        }
                        Err(e) => {
                            yield Sent::Snapshot(error_update(seen + 1, e.code, &e.message, true));
                            return;
                        }
                    }
                }
                match &update.body {
                    Body::Deltas { upto, events, .. } => {
                        for e in events {
                            if e.seq > cursor {
                                cursor = e.seq;
                                yield Sent::Delta(e.clone());
                            }
                        }
                        cursor = cursor.max(*upto);
                    }
                    Body::Snapshot { last, .. } => {
                        if update.seq <= seen {
                            continue;
                        }
                        seen = update.seq;
                        let last = *last;
                        yield Sent::Snapshot(update);
                        if last {
                            return;
                        }
                    }
                }
            }
        }
    }
}
