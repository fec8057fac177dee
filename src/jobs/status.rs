//! Where a job and its steps stand: the `status` columns of `generation_jobs` and
//! `generation_steps` (sql/V3's CHECK constraints list the same values).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Nothing more will happen to the job.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    /// The call is under way (a step's row is written `running` when it is slow).
    #[default]
    Running,
    Succeeded,
    Failed,
}

impl StepStatus {
    pub const ALL: [StepStatus; 3] = [
        StepStatus::Running,
        StepStatus::Succeeded,
        StepStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        JobStatus::ALL
            .into_iter()
            .find(|j| j.as_str() == s)
            .ok_or(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_the_database_words() {
        for s in JobStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(s.as_str().parse::<JobStatus>(), Ok(s));
        }
        assert_eq!(
            serde_json::from_str::<StepStatus>("\"succeeded\"").unwrap(),
            StepStatus::Succeeded
        );
        assert!("done".parse::<JobStatus>().is_err());
        assert!(serde_json::from_str::<JobStatus>("\"done\"").is_err());
    }

    /// sql/V3's CHECK constraints name the same words.
    #[test]
    fn the_schema_allows_exactly_these_words() {
        let v3 = include_str!("../../sql/V3__generation_jobs.sql");
        let jobs: Vec<String> = JobStatus::ALL
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        assert!(v3.contains(&format!("CHECK (status IN ({}))", jobs.join(", "))));
        let steps = [
            StepStatus::Running,
            StepStatus::Succeeded,
            StepStatus::Failed,
        ]
        .map(|s| format!("'{}'", s.as_str()));
        assert!(v3.contains(&format!("CHECK (status IN ({}))", steps.join(", "))));
    }
}
