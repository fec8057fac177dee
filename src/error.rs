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

/// Stable error codes. Clients match on the text (`as_str`, and what the API and the
/// CLI print); the service matches on the variant. `codes::X` names each variant as the
/// constant the call sites use.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $konst:ident = $variant:ident : $text:literal,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($(#[$doc])* $variant,)*
        }

        impl Code {
            /// Every code, in the catalogue's order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The stable snake_case text clients see.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $text,)*
                }
            }
        }

        pub mod codes {
            use super::Code;
            $($(#[$doc])* pub const $konst: Code = Code::$variant;)*
        }
    };
}

error_codes! {
    INVALID_REQUEST = InvalidRequest: "invalid_request",
    INVALID_JSON = InvalidJson: "invalid_json",
    INVALID_FLOW = InvalidFlow: "invalid_flow",
    FLOW_NOT_READY = FlowNotReady: "flow_not_ready",
    SECRET_IN_FLOW = SecretInFlow: "secret_in_flow",
    INVALID_ASSIGNMENT = InvalidAssignment: "invalid_assignment",
    UNKNOWN_REFERENCE = UnknownReference: "unknown_reference",
    MISSING_TOKEN = MissingToken: "missing_token",
    INVALID_TOKEN = InvalidToken: "invalid_token",
    TOKEN_EXPIRED = TokenExpired: "token_expired",
    PERMISSION_DENIED = PermissionDenied: "permission_denied",
    NOT_FOUND = NotFound: "not_found",
    ENGINE_NOT_FOUND = EngineNotFound: "engine_not_found",
    ASSIGNMENT_NOT_FOUND = AssignmentNotFound: "assignment_not_found",
    GENERATION_NOT_FOUND = GenerationNotFound: "generation_not_found",
    NO_ENGINE_ASSIGNED = NoEngineAssigned: "no_engine_assigned",
    /// The engine's flow failed the service's check; `details.issues` says why.
    ENGINE_NOT_RUNNABLE = EngineNotRunnable: "engine_not_runnable",
    /// The engine changed moments ago and its check is not done: retry shortly.
    ENGINE_CHECK_PENDING = EngineCheckPending: "engine_check_pending",
    CONFLICT = Conflict: "conflict",
    PORT_IN_USE = PortInUse: "port_in_use",
    /// An engine has no version with that number.
    VERSION_NOT_FOUND = VersionNotFound: "version_not_found",
    /// A version the service's check found broken cannot be rolled back to or out.
    VERSION_NOT_RUNNABLE = VersionNotRunnable: "version_not_runnable",
    /// Rolling back or out to the version the engine runs already.
    VERSION_IS_CURRENT = VersionIsCurrent: "version_is_current",
    /// Another candidate is being rolled out: promote or abort it first.
    ROLLOUT_IN_PROGRESS = RolloutInProgress: "rollout_in_progress",
    /// Promote or abort with no rollout.
    NO_ROLLOUT = NoRollout: "no_rollout",
    LEASE_LOST = LeaseLost: "lease_lost",
    /// A request body nested deeper than the limit (sql/V4).
    INPUT_TOO_DEEP = InputTooDeep: "input_too_deep",
    /// A request body with more keys or items than the limit (sql/V4).
    INPUT_TOO_WIDE = InputTooWide: "input_too_wide",
    PAYLOAD_TOO_LARGE = PayloadTooLarge: "payload_too_large",
    RATE_LIMITED = RateLimited: "rate_limited",
    TOO_MANY_STREAMS = TooManyStreams: "too_many_streams",
    BACKEND_UNAVAILABLE = BackendUnavailable: "backend_unavailable",
    CONFIG_INVALID = ConfigInvalid: "config_invalid",
    INTERNAL = Internal: "internal_error",
}

impl Code {
    /// The code our SQL names in `RAISE ... USING DETAIL = 'code'`, for the codes it
    /// may name (its own spellings of two of them included); `None` for any other
    /// detail, so a database message cannot pick an arbitrary code.
    pub fn from_sql_detail(detail: &str) -> Option<Code> {
        const FROM_SQL: &[Code] = &[
            codes::NO_ENGINE_ASSIGNED,
            codes::ENGINE_NOT_FOUND,
            codes::ENGINE_NOT_RUNNABLE,
            codes::ENGINE_CHECK_PENDING,
            codes::INVALID_FLOW,
            codes::GENERATION_NOT_FOUND,
            codes::LEASE_LOST,
            codes::RATE_LIMITED,
            codes::INPUT_TOO_DEEP,
            codes::INPUT_TOO_WIDE,
            codes::INVALID_REQUEST,
            codes::PERMISSION_DENIED,
            codes::VERSION_NOT_FOUND,
            codes::VERSION_NOT_RUNNABLE,
            codes::VERSION_IS_CURRENT,
            codes::ROLLOUT_IN_PROGRESS,
            codes::NO_ROLLOUT,
        ];
        match detail {
            "invalid_input" | "input_too_large" => Some(codes::INVALID_REQUEST),
            "not_authenticated" => Some(codes::MISSING_TOKEN),
            d => FROM_SQL.iter().copied().find(|c| c.as_str() == d),
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[derive(Debug, Clone)]
pub struct Error {
    pub kind: Kind,
    pub code: Code,
    pub message: String,
    pub details: Option<Value>,
    /// Seconds a rate-limited caller should wait.
    pub retry_after: Option<u64>,
    /// Operator-only detail; logged, never shown to the caller.
    pub internal: Option<String>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, code: Code, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
            internal: None,
        }
    }

    pub fn invalid(code: Code, message: impl Into<String>) -> Self {
        Self::new(Kind::Invalid, code, message)
    }

    pub fn not_found(code: Code, message: impl Into<String>) -> Self {
        Self::new(Kind::NotFound, code, message)
    }

    pub fn conflict(code: Code, message: impl Into<String>) -> Self {
        Self::new(Kind::Conflict, code, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Kind::Forbidden, codes::PERMISSION_DENIED, message)
    }

    pub fn unauthenticated(code: Code, message: impl Into<String>) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_unique_snake_case_text() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            let text = code.as_str();
            assert!(seen.insert(text), "{text} twice");
            assert!(
                !text.is_empty() && text.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{text}"
            );
            assert_eq!(serde_json::json!(code), serde_json::json!(text));
        }
    }

    #[test]
    fn sql_details_name_only_the_codes_sql_may_raise() {
        assert_eq!(Code::from_sql_detail("lease_lost"), Some(codes::LEASE_LOST));
        assert_eq!(
            Code::from_sql_detail("input_too_large"),
            Some(codes::INVALID_REQUEST)
        );
        assert_eq!(
            Code::from_sql_detail("not_authenticated"),
            Some(codes::MISSING_TOKEN)
        );
        // A catalogued code our SQL never raises, and text that is no code at all.
        assert_eq!(Code::from_sql_detail("internal_error"), None);
        assert_eq!(Code::from_sql_detail("anything"), None);
    }
}
