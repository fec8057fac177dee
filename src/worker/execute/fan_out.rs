//! A `for_each` step: one call per item of an earlier step's JSON array, `width` at
//! a time (one in a sequential flow), kept in the items' order, then one summary
//! record for the whole step, written after its items' records.

use super::{Run, Stop, MAX_ITEMS};
use crate::flow::{ExecutionMode, ForEach, Step};
use crate::jobs::StepRecord;
use crate::worker::output::navigate;
use futures::stream::{StreamExt, TryStreamExt};
use serde_json::Value;
use std::sync::atomic::Ordering;

impl Run<'_> {
    pub(super) async fn fan_out(
        &self,
        step: &Step,
        for_each: &ForEach,
        last: bool,
    ) -> Result<(), Stop> {
        let source = self.output_of(&for_each.step).ok_or_else(|| {
            Stop::Fatal(format!(
                "step {}: for_each source {} has no output",
                step.id, for_each.step
            ))
        })?;
        let items = navigate(&source, &for_each.path)
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| {
                let path = std::iter::once(for_each.step.as_str())
                    .chain(for_each.path.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(".");
                Stop::Fatal(format!(
                    "step {}: for_each {path} is not a JSON array in the model's answer",
                    step.id
                ))
            })?;
        if items.len() > MAX_ITEMS {
            return Err(Stop::Fatal(format!(
                "step {}: {} items; at most {MAX_ITEMS}",
                step.id,
                items.len()
            )));
        }
        self.calls_total
            .fetch_add(items.len() as u64, Ordering::SeqCst);
        // Sequential means one call at a time, fan-out items included.
        let width = match self.flow.execution_mode {
            ExecutionMode::Sequential => 1,
            ExecutionMode::Parallel => self.worker.config.fanout_concurrency.max(1),
        };
        // `buffered` keeps the items' order while running `width` at once.
        let calls = items
            .into_iter()
            .enumerate()
            .map(|(k, item)| async move { self.call(step, Some((k, &item)), false).await });
        let results: Vec<(Value, StepRecord)> = futures::stream::iter(calls)
            .buffered(width)
            .try_collect()
            .await?;
        let (outputs, writes): (Vec<Value>, Vec<StepRecord>) = results.into_iter().unzip();
        let output = Value::Array(outputs);
        let summary = StepRecord::fan_out(&step.id, &step.config.provider, &writes, output.clone());
        self.calls_done.fetch_add(1, Ordering::SeqCst);
        if last {
            self.hold(summary);
        } else {
            // After its items' records, so resume never sees a summary without them.
            self.writes
                .send(summary, self.progress(Some(&step.id)), None);
        }
        self.set_output(&step.id, output);
        Ok(())
    }
}
