//! A finished job's run report: steps, models, attempts, fallbacks, tokens,
//! wall time and the critical path.

use super::{JobDetail, StepRecord};
use crate::flow::Flow;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct StepLine {
    pub step: String,
    pub calls: usize,
    pub models: Vec<String>,
    pub attempts: i64,
    pub fallbacks: usize,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Longest single call of the step (a fan-out's items run side by side).
    pub longest_call_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub status: crate::jobs::JobStatus,
    /// The engine version the job ran (sql/V9); none for jobs older than versions.
    pub engine_version: Option<i32>,
    pub steps: Vec<StepLine>,
    pub models_used: Vec<String>,
    pub calls: usize,
    pub attempts: i64,
    pub fallbacks: usize,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub wall_ms: Option<u64>,
    /// The slowest dependency chain of calls: what parallel execution cannot beat.
    pub critical_path_ms: u64,
    /// What providers said about how they got an answer ("step[item]: note").
    pub notes: Vec<String>,
}

fn ms_between(a: Option<&str>, b: Option<&str>) -> Option<u64> {
    let a = chrono::DateTime::parse_from_rfc3339(a?).ok()?;
    let b = chrono::DateTime::parse_from_rfc3339(b?).ok()?;
    u64::try_from((b - a).num_milliseconds()).ok()
}

/// The calls that did the work: fan-out items, and plain steps (not a fan-out's summary row).
fn calls<'a>(steps: &'a [StepRecord], id: &str, fan_out: bool) -> Vec<&'a StepRecord> {
    steps
        .iter()
        .filter(|s| s.step_id == id && (s.item_index >= 0) == fan_out)
        .collect()
}

pub fn run_report(detail: &JobDetail, flow: &Flow) -> RunReport {
    let mut lines = Vec::new();
    let mut longest = Vec::new();
    for step in &flow.steps {
        let calls = calls(&detail.steps, &step.id, step.config.for_each.is_some());
        let mut models: Vec<String> = Vec::new();
        for c in &calls {
            let m = format!(
                "{}/{}",
                c.provider.as_deref().unwrap_or("?"),
                c.model.as_deref().unwrap_or("?")
            );
            if !models.contains(&m) {
                models.push(m);
            }
        }
        let tokens = |k: &str| {
            calls
                .iter()
                .map(|c| c.usage[k].as_u64().unwrap_or(0))
                .sum::<u64>()
        };
        let slowest = calls
            .iter()
            .filter_map(|c| c.latency_ms)
            .max()
            .unwrap_or(0)
            .max(0) as u64;
        longest.push(slowest);
        lines.push(StepLine {
            step: step.id.clone(),
            calls: calls.len(),
            models,
            attempts: calls.iter().map(|c| i64::from(c.attempts)).sum(),
            fallbacks: calls.iter().filter(|c| c.fallback_used).count(),
            input_tokens: tokens("input_tokens"),
            output_tokens: tokens("output_tokens"),
            longest_call_ms: slowest,
        });
    }
    // Longest path through the dependency graph (steps are listed so that, in a
    // valid flow, a topological order exists; iterate until stable to be safe).
    let n = flow.steps.len();
    let mut finish = vec![0u64; n];
    for _ in 0..n.max(1) {
        let mut changed = false;
        for i in 0..n {
            let start = flow
                .dependencies(i)
                .iter()
                .map(|&d| finish[d])
                .max()
                .unwrap_or(0);
            let f = start + longest[i];
            if f != finish[i] {
                finish[i] = f;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut models_used: Vec<String> = Vec::new();
    for l in &lines {
        for m in &l.models {
            if !models_used.contains(m) {
                models_used.push(m.clone());
            }
        }
    }
    let mut notes = Vec::new();
    for step in &detail.steps {
        let notes_here = step.attempt_log.as_array().into_iter().flatten();
        for note in notes_here.filter_map(|a| a["note"].as_str()) {
            let at = if step.item_index >= 0 {
                format!("{}[{}]", step.step_id, step.item_index)
            } else {
                step.step_id.clone()
            };
            notes.push(format!("{at}: {note}"));
        }
    }
    RunReport {
        status: detail.job.status,
        engine_version: detail.job.engine_version,
        calls: lines.iter().map(|l| l.calls).sum(),
        attempts: lines.iter().map(|l| l.attempts).sum(),
        fallbacks: lines.iter().map(|l| l.fallbacks).sum(),
        input_tokens: lines.iter().map(|l| l.input_tokens).sum(),
        output_tokens: lines.iter().map(|l| l.output_tokens).sum(),
        wall_ms: ms_between(
            detail.job.started_at.as_deref(),
            detail.job.finished_at.as_deref(),
        ),
        critical_path_ms: finish.into_iter().max().unwrap_or(0),
        models_used,
        steps: lines,
        notes,
    }
}
