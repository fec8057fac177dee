//! Reading a job's text stream (`generation_deltas`, sql/V11) for its event streams.
//!
//! Every read goes to PostgREST with a viewer's own token, so RLS decides (the owner
//! and admins see a job's rows, anyone else none). Rows become SSE events named after
//! their kind (`attempt`, `delta`, `discard`, `restart`) with `id:` = the row's `seq`,
//! serialised once and shared by every viewer.

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::rest::{Caller, Rest};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;
use uuid::Uuid;

/// Rows per read: a replay of a long job takes several pages.
pub const PAGE: usize = 1000;

/// Pages one replay reads at most before it answers with what it has (the rest
/// follows on the next read): bounds a single viewer's burst.
const MAX_PAGES: usize = 50;

const COLUMNS: &str = "seq,step_id,item_index,kind,attempt,run,text,meta";

/// One row, as a viewer is sent it.
#[derive(Debug)]
pub struct DeltaEvent {
    /// The row's position in the job's stream: the SSE `id:`.
    pub seq: i64,
    /// The SSE event name: the row's kind.
    pub event: &'static str,
    /// The row as JSON (`seq, step_id, item_index, kind, attempt, run, text, meta`).
    pub data: String,
}

#[derive(Deserialize, Serialize)]
struct Row<'a> {
    seq: i64,
    step_id: String,
    item_index: i32,
    kind: String,
    attempt: i32,
    run: i32,
    text: String,
    // Passed through as written: never decoded, so no nesting can fail the read.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    meta: Option<&'a RawValue>,
}

fn event_name(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "delta" => "delta",
        "attempt" => "attempt",
        "discard" => "discard",
        "restart" => "restart",
        _ => return None,
    })
}

/// Decode a PostgREST reply into events, in the order given (ascending `seq`).
pub fn decode(body: &[u8]) -> Result<Vec<Arc<DeltaEvent>>> {
    let rows: Vec<&RawValue> = serde_json::from_slice(body)
        .map_err(|e| Error::internal(format!("unexpected PostgREST response: {e}")))?;
    let mut out = Vec::with_capacity(rows.len());
    for raw in rows {
        let row: Row = serde_json::from_str(raw.get())
            .map_err(|e| Error::internal(format!("unexpected delta row: {e}")))?;
        let Some(event) = event_name(&row.kind) else {
            // A kind this build does not know (a newer writer): skipped, not fatal.
            tracing::warn!(kind = %row.kind, seq = row.seq, "delta row of an unknown kind left out");
            continue;
        };
        let data = serde_json::to_string(&row)
            .map_err(|e| Error::internal(format!("serialising a delta: {e}")))?;
        out.push(Arc::new(DeltaEvent {
            seq: row.seq,
            event,
            data,
        }));
    }
    Ok(out)
}

/// One page of rows with `after < seq <= upto` (no upper bound when `upto` is None).
async fn page(
    rest: &Rest,
    token: &Secret,
    job: Uuid,
    after: i64,
    upto: Option<i64>,
    kind: &'static str,
) -> Result<Vec<Arc<DeltaEvent>>> {
    Metrics::global()
        .stream_reads
        .with_label_values(&[kind])
        .inc();
    let mut builder = rest
        .table(&Caller::User(token.clone()), "generation_deltas")?
        .select(COLUMNS)
        .eq("job_id", job.to_string())
        .gt("seq", after.to_string());
    if let Some(upto) = upto {
        builder = builder.lte("seq", upto.to_string());
    }
    let builder = builder.order("seq.asc").limit(PAGE);
    decode(&rest.send_raw(builder).await?)
}

/// The rows after `after` (up to `upto`), page by page: what one read of the shared
/// reader (`kind` "deltas") or one viewer's replay (`kind` "replay") sees.
pub async fn read(
    rest: &Rest,
    token: &Secret,
    job: Uuid,
    mut after: i64,
    upto: Option<i64>,
    kind: &'static str,
) -> Result<Vec<Arc<DeltaEvent>>> {
    let mut all = Vec::new();
    for _ in 0..MAX_PAGES {
        let rows = page(rest, token, job, after, upto, kind).await?;
        let full = rows.len() == PAGE;
        if let Some(last) = rows.last() {
            after = last.seq;
        }
        all.extend(rows);
        if !full {
            break;
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_events_named_by_kind_with_meta_passed_through() {
        let body = br#"[
          {"seq":1,"step_id":"outline","item_index":-1,"kind":"attempt","attempt":1,"run":1,"text":"","meta":{"provider":"openai","n":[[[1]]]}},
          {"seq":2,"step_id":"outline","item_index":-1,"kind":"delta","attempt":1,"run":1,"text":"Once \"upon\"","meta":null},
          {"seq":3,"step_id":"outline","item_index":-1,"kind":"mystery","attempt":1,"run":1,"text":""}
        ]"#;
        let events = decode(body).unwrap();
        assert_eq!(events.len(), 2, "the unknown kind is left out");
        assert_eq!((events[0].seq, events[0].event), (1, "attempt"));
        let first: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
        assert_eq!(first["meta"]["n"][0][0][0], 1);
        assert_eq!(events[1].event, "delta");
        let second: serde_json::Value = serde_json::from_str(&events[1].data).unwrap();
        assert_eq!(second["text"], "Once \"upon\"");
        assert_eq!(second["item_index"], -1);
        assert!(decode(b"{}").is_err());
    }
}
