//! How far a job has come (`generation_jobs.progress`): calls done of calls known, and
//! the step under way. Written by the worker with each step (sql step_save); the
//! insert trigger starts it at `{"done": 0, "total": 0}`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    #[serde(default)]
    pub done: u64,
    #[serde(default)]
    pub total: u64,
    /// The step under way; absent on a queued job and once the run has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_queued_jobs_progress_reads_and_writes_as_stored() {
        let stored = json!({"done": 0, "total": 0});
        let p: Progress = serde_json::from_value(stored.clone()).expect("progress");
        assert_eq!(p, Progress::default());
        assert_eq!(serde_json::to_value(&p).expect("json"), stored);
    }

    #[test]
    fn the_step_under_way_is_named() {
        let p: Progress =
            serde_json::from_value(json!({"done": 2, "total": 5, "current": "chapters"}))
                .expect("progress");
        assert_eq!(p.current.as_deref(), Some("chapters"));
        let p: Progress = serde_json::from_value(json!({"done": 1, "total": 1, "current": null}))
            .expect("a null step under way, as workers before this type wrote it");
        assert_eq!(p.current, None);
    }
}
