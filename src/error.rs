//! One error type for the library, with a stable snake_case code per failure.
//!
//! The `message` is public (shown to the caller, printed by the CLI); `internal`
//! holds what only operators may see and is logged, never returned.

use serde_json::Value;
use std::fmt;

/// The class of a failure: it decides the HTTP status and the CLI exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad input: 400/422. Exit code 2.
    Invalid,
    /// No or bad credentials: 401. Exit code 3.
    Unauthenticated,
    /// Authenticated but not allowed: 403. Exit code 3.
    Forbidden,
    /// Not there, or not visible to the caller: 404. Exit code 4.
    NotFound,
    /// State conflict (duplicate, lease lost): 409. Exit code 5.
    Conflict,
    /// Body too large: 413. Exit code 2.
    TooLarge,
    /// Too many requests: 429. Exit code 6.
    RateLimited,
    /// A dependency (PostgREST, Postgres, a provider) is down: 503. Exit code 7.
    Unavailable,
    /// A bug or an unexpected answer: 500. Exit code 1.
    Internal,
}

/// Stable error codes. Clients match on these; messages may change.
pub mod codes {
    pub const INVALID_REQUEST: &str = "invalid_request";
    pub const INVALID_JSON: &str = "invalid_json";
    pub const INVALID_FLOW: &str = "invalid_flow";
    pub const FLOW_NOT_READY: &str = "flow_not_ready";
    pub const SECRET_IN_FLOW: &str = "secret_in_flow";
    pub const INVALID_ASSIGNMENT: &str = "invalid_assignment";
    pub const UNKNOWN_REFERENCE: &str = "unknown_reference";
    pub const MISSING_TOKEN: &str = "missing_token";
    pub const INVALID_TOKEN: &str = "invalid_token";
    pub const TOKEN_EXPIRED: &str = "token_expired";
    pub const PERMISSION_DENIED: &str = "permission_denied";
    pub const NOT_FOUND: &str = "not_found";
    pub const ENGINE_NOT_FOUND: &str = "engine_not_found";
    pub const ASSIGNMENT_NOT_FOUND: &str = "assignment_not_found";
    pub const GENERATION_NOT_FOUND: &str = "generation_not_found";
    pub const NO_ENGINE_ASSIGNED: &str = "no_engine_assigned";
    /// The engine's flow failed the service's check; `details.issues` says why.
    pub const ENGINE_NOT_RUNNABLE: &str = "engine_not_runnable";
    /// The engine changed moments ago and its check is not done: retry shortly.
    pub const ENGINE_CHECK_PENDING: &str = "engine_check_pending";
    pub const CONFLICT: &str = "conflict";
    pub const PORT_IN_USE: &str = "port_in_use";
    /// An engine has no version with that number.
    pub const VERSION_NOT_FOUND: &str = "version_not_found";
    /// A version the service's check found broken cannot be rolled back to or out.
    pub const VERSION_NOT_RUNNABLE: &str = "version_not_runnable";
    /// Rolling back or out to the version the engine runs already.
    pub const VERSION_IS_CURRENT: &str = "version_is_current";
    /// Another candidate is being rolled out: promote or abort it first.
    pub const ROLLOUT_IN_PROGRESS: &str = "rollout_in_progress";
    /// Promote or abort with no rollout.
    pub const NO_ROLLOUT: &str = "no_rollout";
    pub const LEASE_LOST: &str = "lease_lost";
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const TOO_MANY_STREAMS: &str = "too_many_streams";
    pub const BACKEND_UNAVAILABLE: &str = "backend_unavailable";
    pub const CONFIG_INVALID: &str = "config_invalid";
    pub const INTERNAL: &str = "internal_error";
}

#[derive(Debug, Clone)]
pub struct Error {
    pub kind: Kind,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Seconds a rate-limited caller should wait.
    pub retry_after: Option<u64>,
    /// Operator-only detail; logged, never shown to the caller.
    pub internal: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
            internal: None,
        }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Invalid, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Conflict, code, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Kind::Forbidden, codes::PERMISSION_DENIED, message)
    }

    pub fn unauthenticated(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Kind::Unauthenticated, code, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Kind::Unavailable, codes::BACKEND_UNAVAILABLE, message)
    }

    /// An unexpected failure: the caller sees a generic message, operators the detail.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(Kind::Internal, codes::INTERNAL, "internal error").with_internal(detail)
    }

    pub fn config(message: impl Into<String>) -> Self {
        Self::new(Kind::Invalid, codes::CONFIG_INVALID, message)
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn with_internal(mut self, detail: impl Into<String>) -> Self {
        self.internal = Some(detail.into());
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Exit code for the CLI, so scripts can tell failures apart.
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            Kind::Internal => 1,
            Kind::Invalid | Kind::TooLarge => 2,
            Kind::Unauthenticated | Kind::Forbidden => 3,
            Kind::NotFound => 4,
            Kind::Conflict => 5,
            Kind::RateLimited => 6,
            Kind::Unavailable => 7,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}
