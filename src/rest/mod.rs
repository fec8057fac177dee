//! The PostgREST client. Every call names who it is made for: a person (their own
//! JWT is forwarded, so RLS decides) or the service (the secret or service role key,
//! for the job queue only). Which key goes where: [`keys`].

pub mod keys;

use crate::config::SupabaseConfig;
use crate::error::{codes, Code, Error, Kind, Result};
use crate::secret::Secret;
use keys::{header_safe, ApiKeys};
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
    /// Work that belongs to no person (the queue): the secret or service role key.
    Service,
}

#[derive(Clone)]
pub struct Rest {
    /// `apikey`: the publishable (or anon) key; the bearer is each person's JWT.
    user_client: Postgrest,
    /// `apikey`: the secret (or service role) key; `None` when neither is set.
    service_client: Option<Postgrest>,
    /// The bearer of service calls: the legacy service role JWT, never an opaque key.
    service_bearer: Option<Secret>,
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

const NO_SERVICE_KEY: &str =
    "SUPABASE_SECRET_KEY (or the legacy SUPABASE_SERVICE_ROLE_KEY) must be set for the worker";

impl Rest {
    pub fn new(config: &SupabaseConfig) -> Result<Self> {
        let url = config.rest_url()?;
        let base = url.as_str().trim_end_matches('/').to_owned();
        let keys = ApiKeys::choose(config)?;
        if let Some(notice) = &keys.notice {
            // Once per process: the API and the worker each build a client.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| tracing::info!("API keys: {notice}"));
        }
        let mut user_client = Postgrest::new(&base);
        if let Some(key) = &keys.user {
            user_client = user_client.insert_header("apikey", key.apikey.expose());
        }
        let service_client = keys
            .service
            .as_ref()
            .map(|key| Postgrest::new(&base).insert_header("apikey", key.apikey.expose()));
        Ok(Self {
            user_client,
            service_client,
            service_bearer: keys.service.and_then(|k| k.bearer),
            timeout: Duration::from_secs(30),
        })
    }

    /// The client for `caller`, and the bearer to put on its request (if any).
    fn client_for(&self, caller: &Caller) -> Result<(&Postgrest, Option<String>)> {
        match caller {
            Caller::User(jwt) => {
                let token = jwt.expose().trim();
                // postgrest-rs panics on a header value it cannot encode; refuse it here.
                if !header_safe(token) {
                    return Err(Error::unauthenticated(
                        codes::INVALID_TOKEN,
                        "the access token contains characters a token cannot have",
                    ));
                }
                Ok((&self.user_client, Some(token.to_owned())))
            }
            Caller::Service => {
                let client = self
                    .service_client
                    .as_ref()
                    .ok_or_else(|| Error::config(NO_SERVICE_KEY))?;
                let bearer = self.service_bearer.as_ref().map(|b| b.expose().to_owned());
                Ok((client, bearer))
            }
        }
    }

    fn authorize(builder: Builder, bearer: Option<String>) -> Builder {
        match bearer {
            Some(token) => builder.auth(token),
            None => builder,
        }
    }

    /// A request on a table or view.
    pub fn table(&self, caller: &Caller, table: &str) -> Result<Builder> {
        let (client, bearer) = self.client_for(caller)?;
        Ok(Self::authorize(client.from(table), bearer))
    }

    /// A call of a database function.
    pub fn rpc(&self, caller: &Caller, function: &str, params: &Value) -> Result<Builder> {
        let (client, bearer) = self.client_for(caller)?;
        Ok(Self::authorize(
            client.rpc(function, params.to_string()),
            bearer,
        ))
    }

    /// Send, and decode a 2xx body as `T`; any other answer becomes an [`Error`].
    pub async fn send<T: DeserializeOwned>(&self, builder: Builder) -> Result<T> {
        let body = self.send_raw(builder).await?;
        serde_json::from_slice(&body)
            .map_err(|e| Error::internal(format!("unexpected PostgREST response: {e}")))
    }

    /// Send, and split the reply (a JSON array) into its rows without decoding them:
    /// each is decoded on its own (`jobs::rows`), so one unreadable row costs only
    /// itself. serde_json skips a raw value iteratively, so any nesting depth is fine.
    pub async fn rows(&self, builder: Builder) -> Result<Vec<Box<serde_json::value::RawValue>>> {
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
        // As the service when it can be; else anonymously (a policy answer is still up).
        let (client, bearer) = self
            .client_for(&Caller::Service)
            .unwrap_or((&self.user_client, None));
        let builder = client.from("ai_engines").select("id").limit(1); // limit(0) underflows inside postgrest-rs
        self.send_raw(Self::authorize(builder, bearer))
            .await
            .map(|_| ())
            .or_else(|e| match e.kind {
                // Reached PostgREST and the database answered a policy question: up.
                Kind::Unauthenticated | Kind::Forbidden => Ok(()),
                _ => Err(e),
            })
    }
}

/// The wait in a rate-limit hint, which our SQL (sql/V4) writes as exactly
/// "Try again in N seconds."; any other hint gives none (the caller's default).
fn retry_after_of(hint: &str) -> Option<u64> {
    hint.trim()
        .strip_prefix("Try again in ")?
        .strip_suffix(" seconds.")?
        .parse()
        .ok()
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
    // A stable code set by our SQL (`RAISE ... USING DETAIL = 'snake_code'`).
    if let Some(code) = err.details.as_deref().and_then(Code::from_sql_detail) {
        let kind = match status {
            401 => Kind::Unauthenticated,
            403 => Kind::Forbidden,
            404 => Kind::NotFound,
            409 => Kind::Conflict,
            429 => Kind::RateLimited,
            _ => Kind::Invalid,
        };
        let mut e = Error::new(kind, code, message).with_internal(internal);
        if kind == Kind::RateLimited {
            let secs = err.hint.as_deref().and_then(retry_after_of).unwrap_or(30);
            e = e.with_retry_after(secs);
        }
        if let Some(hint) = err.hint {
            // engine_not_runnable carries the check's issues as JSON in the hint.
            let issues = matches!(
                code,
                codes::ENGINE_NOT_RUNNABLE | codes::VERSION_NOT_RUNNABLE
            )
            .then(|| serde_json::from_str::<Value>(&hint).ok())
            .flatten()
            .filter(Value::is_array);
            e = e.with_details(match issues {
                Some(issues) => serde_json::json!({ "issues": issues }),
                None => serde_json::json!({ "hint": hint }),
            });
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
        (_, "23514") | (_, "23502") | (_, "22P02") | (_, "22P05") | (_, "22023") | (_, "22007") => {
            Error::invalid(codes::INVALID_REQUEST, message)
        }
        (404, _) => Error::not_found(codes::NOT_FOUND, "not found"),
        (406, "PGRST116") => Error::not_found(codes::NOT_FOUND, "not found"),
        (s, _) if s >= 500 => Error::unavailable("the database is unavailable"),
        _ => Error::internal("unexpected PostgREST error"),
    };
    e.with_internal(internal)
}

#[cfg(test)]
mod tests {
    use super::retry_after_of;

    #[test]
    fn retry_after_comes_only_from_the_sql_hint_form() {
        assert_eq!(retry_after_of("Try again in 12 seconds."), Some(12));
        assert_eq!(retry_after_of("Try again in 30 seconds."), Some(30));
        // Not a number picked out of any text.
        assert_eq!(retry_after_of("Try again in a few seconds."), None);
        assert_eq!(retry_after_of("limit 5 per 60 seconds"), None);
        assert_eq!(retry_after_of("Try again in -3 seconds."), None);
    }
}
