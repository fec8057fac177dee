//! `/readyz` answers from a recent check: at most one PostgREST call per second,
//! however often load balancers (or anyone) ask, and one check at a time.

use crate::metrics::Metrics;
use crate::rest::Rest;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A check result is reused for this long.
pub const READINESS_MAX_AGE: Duration = Duration::from_secs(1);

/// Why the service is not ready: the failure's code and public message.
#[derive(Debug, Clone)]
pub struct NotReady {
    pub code: crate::error::Code,
    pub message: String,
}

pub struct Readiness {
    rest: Rest,
    /// The last check; the async lock makes concurrent askers wait for one check.
    last: Mutex<Option<(Instant, Result<(), NotReady>)>>,
}

impl Readiness {
    pub fn new(rest: Rest) -> Self {
        Self {
            rest,
            last: Mutex::new(None),
        }
    }

    /// Is PostgREST (and through it Postgres) answering, as of at most a second ago?
    pub async fn check(&self) -> Result<(), NotReady> {
        let mut last = self.last.lock().await;
        if let Some((at, result)) = last.as_ref() {
            if at.elapsed() < READINESS_MAX_AGE {
                return result.clone();
            }
        }
        let result = self.rest.ping().await.map_err(|e| {
            tracing::warn!(
                code = %e.code,
                detail = e.internal.as_deref().unwrap_or(""),
                "not ready"
            );
            NotReady {
                code: e.code,
                message: e.message,
            }
        });
        let outcome = if result.is_ok() {
            "ready"
        } else {
            "unavailable"
        };
        Metrics::global()
            .readiness_checks
            .with_label_values(&[outcome])
            .inc();
        *last = Some((Instant::now(), result.clone()));
        result
    }
}
