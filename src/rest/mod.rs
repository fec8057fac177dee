//! The PostgREST client. Every call names who it is made for: a person (their own
//! JWT is forwarded, so RLS decides) or the service (the service role key, for the
//! job queue only).

use crate::config::SupabaseConfig;
use crate::error::{codes, Error, Kind, Result};
use crate::secret::Secret;
use postgrest::{Builder, Postgrest};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;

/// On whose behalf a request is made.
#[derive(Clone, Debug)]
pub enum Caller {
    /// A person: their access token goes to PostgREST unchanged.
    User(Secret),
    /// Work that belongs to no person (the queue): the service role key.
    Service,
}

#[derive(Clone)]
pub struct Rest {
    client: Postgrest,
    service_key: Option<Secret>,
    timeout: Duration,
}

/// PostgREST's error body.
#[derive(Debug, Deserialize, Default)]
struct PgrstError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    details: Option<String>,
    #[serde(default)]
    hint: Option<String>,
}

impl Rest {
    pub fn new(config: &SupabaseConfig) -> Result<Self> {
        let url = config.rest_url()?;
        let mut client = Postgrest::new(url.as_str().trim_end_matches('/'));
        if let Some(key) = config.anon_key.as_ref().filter(|k| !k.is_empty()) {
            if !header_safe(key.expose().trim()) {
                return Err(Error::config(
                    "SUPABASE_ANON_KEY contains characters a key cannot have",
                ));
            }
            client = client.insert_header("apikey", key.expose().trim());
        }
        Ok(Self {
            client,
            service_key: config.service_role_key.clone(),
            timeout: Duration::from_secs(30),
        })
    }

    fn bearer(&self, caller: &Caller) -> Result<String> {
        let token = match caller {
            Caller::User(jwt) => jwt.expose().trim().to_owned(),
            Caller::Service => self
                .service_key
                .as_ref()
                .map(|k| k.expose().trim().to_owned())
                .ok_or_else(|| {
                    Error::config("SUPABASE_SERVICE_ROLE_KEY must be set for the worker")
                })?,
        };
        // postgrest-rs panics on a header value it cannot encode; refuse it here instead.
        if !header_safe(&token) {
            return Err(Error::unauthenticated(
                codes::INVALID_TOKEN,
                "the access token contains characters a token cannot have",
            ));
        }
        Ok(token)
    }

    /// A request on a table or view.
    pub fn table(&self, caller: &Caller, table: &str) -> Result<Builder> {
        Ok(self.client.from(table).auth(self.bearer(caller)?))
    }

    /// A call of a database function.
    pub fn rpc(&self, caller: &Caller, function: &str, params: &Value) -> Result<Builder> {
        Ok(self
            .client
            .rpc(function, params.to_string())
            .auth(self.bearer(caller)?))
    }

    /// Send, and decode a 2xx body as `T`; any other answer becomes an [`Error`].
    pub async fn send<T: DeserializeOwned>(&self, builder: Builder) -> Result<T> {
        let body = self.send_raw(builder).await?;
        serde_json::from_slice(&body)
            .map_err(|e| Error::internal(format!("unexpected PostgREST response: {e}")))
    }

    /// Send, returning the raw 2xx body.
    pub async fn send_raw(&self, builder: Builder) -> Result<bytes::Bytes> {
        let response = tokio::time::timeout(self.timeout, builder.execute())
            .await
            .map_err(|_| Error::unavailable("PostgREST did not answer in time"))?
            .map_err(|e| {
                Error::unavailable(format!("PostgREST unreachable: {}", e.without_url()))
            })?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| Error::unavailable(format!("reading PostgREST response: {e}")))?;
        if (200..300).contains(&status) {
            // reqwest 0.11 and 0.12 carry different `bytes` versions; copy across.
            return Ok(bytes::Bytes::copy_from_slice(&body));
        }
        let err: PgrstError = serde_json::from_slice(&body).unwrap_or_default();
        Err(map_error(status, err))
    }

    /// Is PostgREST answering? (`/readyz`)
    pub async fn ping(&self) -> Result<()> {
        let builder = self.client.from("ai_engines").select("id").limit(1); // limit(0) underflows inside postgrest-rs
        self.send_raw(builder.auth(self.bearer(&Caller::Service).unwrap_or_default()))
            .await
            .map(|_| ())
            .or_else(|e| match e.kind {
                // Reached PostgREST and the database answered a policy question: up.
                Kind::Unauthenticated | Kind::Forbidden => Ok(()),
                _ => Err(e),
            })
    }
}

/// Visible ASCII only: what an HTTP header value (and so a JWT) may hold.
fn header_safe(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..0x7f).contains(&b))
}

/// A stable code set by our SQL (`RAISE ... USING DETAIL = 'snake_code'`).
fn sql_code(details: Option<&str>) -> Option<&'static str> {
    let d = details?;
    const KNOWN: &[&str] = &[
        codes::NO_ENGINE_ASSIGNED,
        codes::ENGINE_NOT_FOUND,
        codes::GENERATION_NOT_FOUND,
        codes::LEASE_LOST,
        codes::RATE_LIMITED,
        "invalid_input",
        "input_too_large",
        "input_too_deep",
        "input_too_wide",
        "not_authenticated",
        codes::INVALID_REQUEST,
    ];
    KNOWN.iter().copied().find(|k| *k == d)
}

fn map_error(status: u16, err: PgrstError) -> Error {
    let pg_code = err.code.clone().unwrap_or_default();
    let message = err
        .message
        .clone()
        .unwrap_or_else(|| format!("PostgREST answered {status}"));
    let internal = format!(
        "PostgREST {status} {pg_code}: {message} (details: {:?}, hint: {:?})",
        err.details, err.hint
    );
    if let Some(code) = sql_code(err.details.as_deref()) {
        let kind = match status {
            401 => Kind::Unauthenticated,
            404 => Kind::NotFound,
            409 => Kind::Conflict,
            429 => Kind::RateLimited,
            _ => Kind::Invalid,
        };
        let code = match code {
            "invalid_input" | "input_too_large" => codes::INVALID_REQUEST,
            "not_authenticated" => codes::MISSING_TOKEN,
            c => c,
        };
        let mut e = Error::new(kind, code, message).with_internal(internal);
        if kind == Kind::RateLimited {
            // Our SQL says "Try again in N seconds."
            let secs = err
                .hint
                .as_deref()
                .and_then(|h| h.split_whitespace().find_map(|w| w.parse::<u64>().ok()))
                .unwrap_or(30);
            e = e.with_retry_after(secs);
        }
        if let Some(hint) = err.hint {
            e = e.with_details(serde_json::json!({ "hint": hint }));
        }
        return e;
    }
    let e = match (status, pg_code.as_str()) {
        (401, _) if pg_code.starts_with("PGRST3") => Error::unauthenticated(
            codes::INVALID_TOKEN,
            "the access token is invalid or expired",
        ),
        (401, "42501") | (403, _) => Error::forbidden("not allowed for this account"),
        (401, _) => Error::unauthenticated(codes::INVALID_TOKEN, "not authenticated"),
        (_, "23505") => Error::conflict(codes::CONFLICT, "that already exists"),
        (_, "23503") => {
            // Name the field from the foreign key the database reported.
            let field = ["engine_id", "user_id"]
                .into_iter()
                .find(|f| message.contains(&format!("_{f}_fkey")));
            let what = match field {
                Some("engine_id") => "the engine does not exist",
                Some("user_id") => "the user does not exist",
                _ => "a referenced engine or user does not exist",
            };
            let e = Error::invalid(codes::UNKNOWN_REFERENCE, what);
            match field {
                Some(f) => e.with_details(serde_json::json!({ "path": f })),
                None => e,
            }
        }
        (_, "23514") | (_, "23502") | (_, "22P02") | (_, "22023") | (_, "22007") => {
            Error::invalid(codes::INVALID_REQUEST, message)
        }
        (404, _) => Error::not_found(codes::NOT_FOUND, "not found"),
        (406, "PGRST116") => Error::not_found(codes::NOT_FOUND, "not found"),
        (s, _) if s >= 500 => Error::unavailable("the database is unavailable"),
        _ => Error::internal("unexpected PostgREST error"),
    };
    e.with_internal(internal)
}
