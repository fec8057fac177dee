//! What a run keeps while it goes: the outputs templates read, progress, and the
//! records held back for `job_complete`.

use super::Run;
use crate::jobs::{Progress, StepRecord};
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;

impl Run<'_> {
    pub(super) fn progress(&self, current: Option<&str>) -> Progress {
        Progress {
            done: self.calls_done.load(Ordering::SeqCst),
            total: self.calls_total.load(Ordering::SeqCst),
            current: current.map(str::to_owned),
        }
    }

    pub(super) fn output_of(&self, id: &str) -> Option<Value> {
        self.outputs.lock().ok().and_then(|o| o.get(id).cloned())
    }

    pub(super) fn set_output(&self, id: &str, value: Value) {
        if let Ok(mut o) = self.outputs.lock() {
            o.insert(id.to_owned(), value);
        }
    }

    /// The variables templates see.
    pub(super) fn context(&self, item: Option<(usize, &Value)>) -> Value {
        let steps: Map<String, Value> = self
            .outputs
            .lock()
            .map(|o| {
                o.iter()
                    .map(|(id, v)| {
                        let outputs = if v.is_array() { v.clone() } else { json!([v]) };
                        (id.clone(), json!({"output": v, "outputs": outputs}))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut ctx = json!({"input": self.job.input, "steps": steps});
        if let Some((k, v)) = item {
            ctx["item"] = v.clone();
            ctx["item_index"] = json!(k);
            ctx["item_number"] = json!(k + 1);
        }
        ctx
    }

    /// Hold a record back for `job_complete` instead of saving it now.
    pub(super) fn hold(&self, write: StepRecord) {
        if let Ok(mut h) = self.held.lock() {
            h.push(write);
        }
    }
}
