//! Wake-ups from the writes themselves: with `BOOKENGINE_STREAM_LISTEN_URL` set, one
//! connection per process LISTENs on channel `generation_deltas`, where
//! `delta_append` (sql/V11) notifies each job id once per flush. A notification only
//! wakes the readers of that job; they still read through PostgREST with their
//! viewers' tokens, so RLS decides what anyone sees and the connection never carries
//! text. While the connection is down, readers poll (`stream_delta_poll_ms`); when it
//! comes back, every reader is woken once, since writes in between went unannounced.

use super::HubInner;
use crate::secret::Secret;
use futures::StreamExt;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const CHANNEL: &str = "generation_deltas";

const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub(super) fn spawn(hub: Weak<HubInner>, url: Secret, stop: CancellationToken) {
    let config = match url.expose().parse::<tokio_postgres::Config>() {
        Ok(c) => c,
        Err(e) => {
            // The connection string is a secret: name the setting, not its value.
            tracing::warn!(error = %e, "BOOKENGINE_STREAM_LISTEN_URL is not a valid connection string; event streams poll instead");
            return;
        }
    };
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            match session(&hub, &config, &stop).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, host = %crate::migrate::describe_host(&config),
                        "LISTEN connection for event streams lost; readers poll meanwhile");
                }
            }
            let Some(h) = hub.upgrade() else { return };
            let was_up = h.listening.swap(false, Ordering::Relaxed);
            drop(h);
            if was_up {
                backoff = Duration::from_millis(500);
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
}

/// One connection's life: `Ok` when the hub is gone, `Err` when the connection is.
async fn session(
    hub: &Weak<HubInner>,
    config: &tokio_postgres::Config,
    stop: &CancellationToken,
) -> Result<(), String> {
    // As `bookengine migrate` connects: TLS when offered, the chain not checked.
    let tls = crate::pgtls::connector().map_err(|e| format!("TLS setup failed: {e}"))?;
    let (client, mut connection) = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        c = config.connect(tls) => c.map_err(|e| e.to_string())?,
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    // The connection is driven here; notifications come out of it as messages.
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "LISTEN connection closed");
                    return;
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(|e| e.to_string())?;
    match hub.upgrade() {
        Some(h) => {
            h.listening.store(true, Ordering::Relaxed);
            h.wake_all();
        }
        None => return Ok(()),
    }
    tracing::info!("event streams are woken by LISTEN {CHANNEL}");
    loop {
        let payload = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            m = rx.recv() => m.ok_or_else(|| "the connection closed".to_owned())?,
        };
        let Some(h) = hub.upgrade() else {
            return Ok(());
        };
        match job_of(&payload) {
            Some(job) => h.wake_job(job),
            // A payload this build cannot read: wake everyone rather than miss a write.
            None => h.wake_all(),
        }
    }
}

/// The job a notification names: its id as text, or `{"job_id": …}`.
fn job_of(payload: &str) -> Option<Uuid> {
    let p = payload.trim();
    Uuid::parse_str(p).ok().or_else(|| {
        serde_json::from_str::<serde_json::Value>(p)
            .ok()?
            .get("job_id")?
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_a_job_as_text_or_json() {
        let id = Uuid::new_v4();
        assert_eq!(job_of(&id.to_string()), Some(id));
        assert_eq!(job_of(&format!(" {id}\n")), Some(id));
        assert_eq!(job_of(&format!(r#"{{"job_id":"{id}"}}"#)), Some(id));
        assert_eq!(job_of("nonsense"), None);
        assert_eq!(job_of(r#"{"job_id": 5}"#), None);
    }
}
