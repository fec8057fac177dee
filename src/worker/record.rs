//! What the worker records about one call (`generation_steps`): one constructor per
//! moment of a call's life, so each record says only what differs.

use crate::flow::ModelRef;
use crate::jobs::{StepRecord, StepStatus};
use crate::providers::{CallFailure, CallOutcome, Usage};
use serde_json::{json, Value};

impl StepRecord {
    /// A slow call is under way (written so viewers see it).
    pub(super) fn running(step_id: &str, item_index: i32, model: &ModelRef) -> Self {
        StepRecord {
            step_id: step_id.to_owned(),
            item_index,
            status: StepStatus::Running,
            provider: Some(model.provider.clone()),
            model: Some(model.model.clone()),
            usage: json!(Usage::default()),
            attempt_log: json!([]),
            ..Default::default()
        }
    }

    /// A call an earlier run of the job finished: kept as it was.
    pub(super) fn reused(step_id: &str, item_index: i32, done: &StepRecord) -> Self {
        StepRecord {
            step_id: step_id.to_owned(),
            item_index,
            status: StepStatus::Succeeded,
            provider: done.provider.clone(),
            model: done.model.clone(),
            fallback_used: done.fallback_used,
            attempts: done.attempts,
            usage: done.usage.clone(),
            ..Default::default()
        }
    }

    /// A call that was answered (`provider` names who answered, when a compatible
    /// server stood in for the configured one).
    pub(super) fn answered(
        step_id: &str,
        item_index: i32,
        provider: String,
        o: &CallOutcome<Value>,
        latency_ms: u64,
    ) -> Self {
        StepRecord {
            step_id: step_id.to_owned(),
            item_index,
            status: StepStatus::Succeeded,
            provider: Some(provider),
            model: Some(o.model.clone()),
            fallback_used: o.fallback_used,
            attempts: column(o.attempts),
            output: Some(o.value.clone()),
            error: None,
            usage: json!(o.usage),
            latency_ms: Some(column(latency_ms)),
            attempt_log: json!(o.log),
            ended_at: Some(chrono::Utc::now()),
            ..Default::default()
        }
    }

    /// A call whose every attempt and fallback failed.
    pub(super) fn failed(
        step_id: &str,
        item_index: i32,
        model: &ModelRef,
        f: &CallFailure,
        latency_ms: u64,
    ) -> Self {
        StepRecord {
            step_id: step_id.to_owned(),
            item_index,
            status: StepStatus::Failed,
            provider: Some(model.provider.clone()),
            model: Some(model.model.clone()),
            attempts: column(f.attempts),
            error: Some(f.message.clone()),
            usage: json!(Usage::default()),
            latency_ms: Some(column(latency_ms)),
            attempt_log: json!(f.log),
            ended_at: Some(chrono::Utc::now()),
            ..Default::default()
        }
    }

    /// A fan-out's own row, from its items' records, written once all of them are:
    /// resume can skip it whole. The items' rows carry the tokens: the sums here go in
    /// the log only (counting them again would bill twice).
    pub(super) fn fan_out(
        step_id: &str,
        provider: &str,
        items: &[StepRecord],
        output: Value,
    ) -> Self {
        let mut usage = Usage::default();
        let mut attempts = 0;
        let mut fallback_used = false;
        let mut models: Vec<String> = Vec::new();
        for item in items {
            usage.input_tokens += item.usage["input_tokens"].as_u64().unwrap_or(0);
            usage.output_tokens += item.usage["output_tokens"].as_u64().unwrap_or(0);
            attempts = item.attempts.saturating_add(attempts);
            fallback_used |= item.fallback_used;
            let m = format!(
                "{}/{}",
                item.provider.as_deref().unwrap_or_default(),
                item.model.as_deref().unwrap_or_default()
            );
            if !models.contains(&m) {
                models.push(m);
            }
        }
        StepRecord {
            step_id: step_id.to_owned(),
            item_index: crate::jobs::WHOLE_STEP,
            status: StepStatus::Succeeded,
            provider: Some(provider.to_owned()),
            model: Some(models.join(", ")),
            fallback_used,
            attempts,
            output: Some(output),
            usage: json!(Usage::default()),
            attempt_log: json!([{"items": items.len(), "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}]),
            ..Default::default()
        }
    }
}

/// A count or a duration as its integer column holds it (24 days of milliseconds).
fn column(n: impl TryInto<i32>) -> i32 {
    n.try_into().unwrap_or(i32::MAX)
}
