//! The writer's inbox: every job's messages in push order, and the rule for when a
//! push wakes the writer.
//!
//! A channel wakes its receiver on every send. A streamed call pushes a row per
//! network read, and each wake is a thread handoff that costs more than the push:
//! with one-step jobs answered at once (the queue benchmark), waking the writer per
//! row was most of the worker's streaming overhead. Rows only need to be looked at
//! when a flush is due, so a row wakes the writer only when nothing else will: the
//! writer has no flush scheduled, or enough bytes wait for an early one. Barriers and
//! finishes, which someone awaits, always wake it.

use super::Msg;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Whether a push wakes the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wake {
    /// Someone waits for the answer (a barrier, a finish).
    Now,
    /// A row of this many bytes of text: only when no flush is scheduled, or when
    /// the bytes waiting reach the early-flush threshold.
    Row(usize),
    /// Bookkeeping (open, close) that can wait for the writer's next look.
    Later,
}

pub(super) struct Inbox {
    state: Mutex<State>,
    wake: Notify,
    flush_bytes: usize,
}

#[derive(Default)]
struct State {
    msgs: Vec<Msg>,
    /// Text pushed since the writer last took the messages.
    bytes: usize,
    /// When the first row since then was pushed: a flush is due one interval later.
    first_row: Option<Instant>,
    /// The writer will look at the inbox by itself soon (a flush is scheduled, in
    /// flight or waiting to be retried), so a row need not wake it.
    armed: bool,
    /// Every handle is gone: the writer makes a last flush and stops.
    closed: bool,
}

/// What the writer takes in one look.
pub(super) struct Taken {
    pub msgs: Vec<Msg>,
    pub first_row: Option<Instant>,
    pub closed: bool,
}

impl Inbox {
    pub fn new(flush_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            flush_bytes,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a Vec push half-done at worst.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `msg`; it comes back when the writer is gone.
    pub fn push(&self, msg: Msg, wake: Wake) -> Result<(), Msg> {
        let mut s = self.lock();
        if s.closed {
            return Err(msg);
        }
        s.msgs.push(msg);
        let notify = match wake {
            Wake::Now => true,
            Wake::Later => false,
            Wake::Row(bytes) => {
                let before = s.bytes;
                s.bytes = s.bytes.saturating_add(bytes);
                let first = s.first_row.is_none();
                if first {
                    s.first_row = Some(Instant::now());
                }
                (first && !s.armed) || (before < self.flush_bytes && s.bytes >= self.flush_bytes)
            }
        };
        drop(s);
        if notify {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// No handle is left: wake the writer for its last flush.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// Take what is waiting.
    pub fn take(&self) -> Taken {
        let mut s = self.lock();
        s.bytes = 0;
        Taken {
            msgs: std::mem::take(&mut s.msgs),
            first_row: s.first_row.take(),
            closed: s.closed,
        }
    }

    /// Before the writer sleeps: say whether it will look again by itself (`armed`).
    /// False when messages arrived since it last took them: it must look now.
    pub fn settle(&self, armed: bool) -> bool {
        let mut s = self.lock();
        if !s.msgs.is_empty() || s.closed {
            return false;
        }
        s.armed = armed;
        true
    }

    /// Resolves when a push asks for the writer (or asked since it last slept).
    pub async fn woken(&self) {
        self.wake.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use uuid::Uuid;

    fn msg() -> Msg {
        Msg::Close(Uuid::nil())
    }

    fn woke(inbox: &Inbox) -> bool {
        inbox.woken().now_or_never().is_some()
    }

    #[test]
    fn a_row_wakes_the_writer_only_when_nothing_else_will() {
        let inbox = Inbox::new(100);
        // Nothing scheduled: the first row wakes it, the next ones do not.
        assert!(inbox.push(msg(), Wake::Row(10)).is_ok());
        assert!(woke(&inbox));
        assert!(inbox.push(msg(), Wake::Row(10)).is_ok());
        assert!(!woke(&inbox));
        assert_eq!(inbox.take().msgs.len(), 2);

        // A flush is scheduled: rows wait for it, until enough bytes wait.
        assert!(inbox.settle(true));
        assert!(inbox.push(msg(), Wake::Row(60)).is_ok());
        assert!(!woke(&inbox));
        assert!(inbox.push(msg(), Wake::Row(60)).is_ok());
        assert!(woke(&inbox));
        assert!(inbox.push(msg(), Wake::Row(60)).is_ok());
        assert!(!woke(&inbox), "one early wake per look");

        // The writer cannot sleep on messages it has not taken.
        assert!(!inbox.settle(true));
        let taken = inbox.take();
        assert_eq!(taken.msgs.len(), 3);
        assert!(taken.first_row.is_some());
        assert!(inbox.settle(true));

        // Someone waiting always wakes it; bookkeeping never does.
        assert!(inbox.push(msg(), Wake::Later).is_ok());
        assert!(!woke(&inbox));
        assert!(inbox.push(msg(), Wake::Now).is_ok());
        assert!(woke(&inbox));
        assert!(inbox.take().first_row.is_none());
    }

    #[test]
    fn a_closed_inbox_wakes_the_writer_and_gives_pushes_back() {
        let inbox = Inbox::new(100);
        assert!(inbox.settle(false));
        inbox.close();
        assert!(woke(&inbox));
        assert!(!inbox.settle(false));
        assert!(inbox.take().closed);
        assert!(inbox.push(msg(), Wake::Now).is_err());
    }
}
