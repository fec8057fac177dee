//! Verifying Supabase access tokens: HS256 with the project's JWT secret, and
//! ES256/RS256 with the keys of a JWKS (current Supabase projects sign asymmetrically).

use super::Claims;
use crate::error::{codes, Error, Result};
use crate::metrics::Metrics;
use crate::secret::Secret;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Where the asymmetric keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    Url(String),
    File(std::path::PathBuf),
}

impl JwksSource {
    pub fn parse(s: &str) -> Self {
        if s.starts_with("http://") || s.starts_with("https://") {
            Self::Url(s.to_owned())
        } else {
            Self::File(s.into())
        }
    }

    async fn load(&self, http: &reqwest::Client, timeout: Duration) -> Result<JwkSet> {
        let text = match self {
            Self::File(path) => tokio::fs::read_to_string(path).await.map_err(|e| {
                Error::config(format!(
                    "SUPABASE_JWKS_URL: cannot read {}: {e}",
                    path.display()
                ))
            })?,
            Self::Url(url) => http
                .get(url)
                .timeout(timeout)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| Error::unavailable(format!("fetching JWKS from {url}: {e}")))?
                .text()
                .await
                .map_err(|e| Error::unavailable(format!("reading JWKS from {url}: {e}")))?,
        };
        serde_json::from_str(&text)
            .map_err(|e| Error::config(format!("SUPABASE_JWKS_URL: not a JWKS document: {e}")))
    }
}

/// How the key set is kept fresh. The defaults suit a Supabase project; tests
/// shorten them.
#[derive(Debug, Clone)]
pub struct JwksPolicy {
    /// The set is fetched again this often, so rotated-out keys are dropped.
    pub refresh_every: Duration,
    /// A token with an unknown `kid` triggers a fetch at most this often (rotation).
    pub unknown_kid_interval: Duration,
    /// The longest a token with an unknown `kid` waits for a fetch in flight.
    pub unknown_kid_wait: Duration,
    /// After a failed fetch, the next waits this long, doubling up to `backoff_max`.
    pub backoff_first: Duration,
    pub backoff_max: Duration,
    /// One fetch's time limit.
    pub fetch_timeout: Duration,
}

impl Default for JwksPolicy {
    fn default() -> Self {
        Self {
            refresh_every: Duration::from_secs(300),
            unknown_kid_interval: Duration::from_secs(60),
            unknown_kid_wait: Duration::from_millis(250),
            backoff_first: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            fetch_timeout: Duration::from_secs(10),
        }
    }
}

/// The keys by `kid`, parsed once per fetch.
type Keys = HashMap<String, Arc<DecodingKey>>;

/// The asymmetric keys and how they are fetched. Verification only ever reads the
/// current key map (a short, synchronous read lock); fetches run outside every lock,
/// one at a time, in a task of their own.
struct KeyStore {
    source: JwksSource,
    http: reqwest::Client,
    policy: JwksPolicy,
    keys: RwLock<Arc<Keys>>,
    book: Mutex<FetchBook>,
}

/// What the store remembers about fetching.
struct FetchBook {
    /// Set while a fetch runs; it changes (or closes) when the fetch ends.
    in_flight: Option<watch::Receiver<()>>,
    /// The last successful fetch.
    fetched_at: Instant,
    /// The last fetch an unknown `kid` started.
    unknown_kid_fetch: Option<Instant>,
    /// Failed fetches in a row, and when the next may start.
    failures: u32,
    retry_at: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn parse_keys(set: &JwkSet) -> Keys {
    let mut keys = Keys::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid, Arc::new(key));
            }
            Err(e) => tracing::warn!(%kid, error = %e, "JWKS key skipped: not usable"),
        }
    }
    keys
}

impl KeyStore {
    fn current(&self) -> Arc<Keys> {
        match self.keys.read() {
            Ok(k) => k.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn find(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.current().get(kid).cloned()
    }

    /// The running fetch, or a new one. Called with the book locked.
    fn fetch_locked(self: &Arc<Self>, book: &mut FetchBook) -> watch::Receiver<()> {
        if let Some(rx) = &book.in_flight {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(());
        book.in_flight = Some(rx.clone());
        let store = self.clone();
        tokio::spawn(async move {
            let loaded = store
                .source
                .load(&store.http, store.policy.fetch_timeout)
                .await;
            let mut book = lock(&store.book);
            match loaded {
                Ok(set) => {
                    // The whole set is replaced: keys that left it are dropped.
                    let keys = Arc::new(parse_keys(&set));
                    match store.keys.write() {
                        Ok(mut k) => *k = keys,
                        Err(poisoned) => *poisoned.into_inner() = keys,
                    }
                    book.fetched_at = Instant::now();
                    book.failures = 0;
                    book.retry_at = None;
                    Metrics::global()
                        .jwks_fetches
                        .with_label_values(&["ok"])
                        .inc();
                }
                Err(e) => {
                    book.failures = book.failures.saturating_add(1);
                    let exp = book.failures.saturating_sub(1).min(16);
                    let delay = store
                        .policy
                        .backoff_first
                        .saturating_mul(1u32 << exp)
                        .min(store.policy.backoff_max);
                    book.retry_at = Some(Instant::now() + delay);
                    tracing::warn!(code = %e.code, detail = %e.message,
                        failures = book.failures, retry_in_ms = delay.as_millis() as u64,
                        "JWKS fetch failed; keeping the keys we have");
                    Metrics::global()
                        .jwks_fetches
                        .with_label_values(&["error"])
                        .inc();
                }
            }
            book.in_flight = None;
            drop(book);
            let _ = tx.send(());
        });
        rx
    }

    /// A token names a `kid` we do not have: fetch (at most once per
    /// `unknown_kid_interval`, never during a failure's backoff) and wait for the
    /// fetch in flight, if any, at most `unknown_kid_wait`.
    async fn find_unknown(self: &Arc<Self>, kid: &str) -> Option<Arc<DecodingKey>> {
        let rx = {
            let mut book = lock(&self.book);
            let now = Instant::now();
            let due = book
                .unknown_kid_fetch
                .is_none_or(|at| now.duration_since(at) >= self.policy.unknown_kid_interval);
            let backing_off = book.retry_at.is_some_and(|at| now < at);
            if book.in_flight.is_some() {
                book.in_flight.clone()
            } else if due && !backing_off {
                book.unknown_kid_fetch = Some(now);
                Some(self.fetch_locked(&mut book))
            } else {
                None
            }
        };
        if let Some(mut rx) = rx {
            let _ = tokio::time::timeout(self.policy.unknown_kid_wait, rx.changed()).await;
        }
        self.find(kid)
    }

    /// When the timer should fetch next: after a failure, its backoff; otherwise
    /// `refresh_every` after the last success.
    fn next_due(&self) -> Instant {
        let book = lock(&self.book);
        match book.retry_at {
            Some(at) => at,
            None => book.fetched_at + self.policy.refresh_every,
        }
    }
}

/// Refresh on a timer until the verifier is dropped.
async fn refresh_loop(store: Weak<KeyStore>) {
    loop {
        let Some(due) = store.upgrade().map(|s| s.next_due()) else {
            return;
        };
        tokio::time::sleep_until(due).await;
        let Some(s) = store.upgrade() else {
            return;
        };
        // Another fetch may have moved the due time while we slept.
        if Instant::now() < s.next_due() {
            continue;
        }
        let mut rx = {
            let mut book = lock(&s.book);
            s.fetch_locked(&mut book)
        };
        drop(s);
        let _ = rx.changed().await;
    }
}

/// Checks signature, algorithm and expiry. Cheap to clone.
#[derive(Clone)]
pub struct JwtVerifier {
    hs256: Option<Arc<DecodingKey>>,
    jwks: Option<Arc<KeyStore>>,
}

impl JwtVerifier {
    pub async fn new(secret: Option<&Secret>, jwks: Option<JwksSource>) -> Result<Self> {
        Self::with_policy(secret, jwks, JwksPolicy::default()).await
    }

    /// As [`JwtVerifier::new`], with the key set kept fresh as `policy` says. The
    /// first fetch happens here: a key set that cannot be loaded stops the start.
    pub async fn with_policy(
        secret: Option<&Secret>,
        jwks: Option<JwksSource>,
        policy: JwksPolicy,
    ) -> Result<Self> {
        let hs256 = match secret {
            Some(s) if !s.is_empty() => {
                Some(Arc::new(DecodingKey::from_secret(s.expose().as_bytes())))
            }
            _ => None,
        };
        let jwks = match jwks {
            Some(source) => {
                let http = reqwest::Client::new();
                let set = source.load(&http, policy.fetch_timeout).await?;
                let store = Arc::new(KeyStore {
                    source,
                    http,
                    policy,
                    keys: RwLock::new(Arc::new(parse_keys(&set))),
                    book: Mutex::new(FetchBook {
                        in_flight: None,
                        fetched_at: Instant::now(),
                        unknown_kid_fetch: None,
                        failures: 0,
                        retry_at: None,
                    }),
                });
                tokio::spawn(refresh_loop(Arc::downgrade(&store)));
                Some(store)
            }
            None => None,
        };
        if hs256.is_none() && jwks.is_none() {
            return Err(Error::config(
                "SUPABASE_JWT_SECRET or SUPABASE_JWKS_URL must be set to verify tokens",
            ));
        }
        Ok(Self { hs256, jwks })
    }

    /// The `kid`s of the asymmetric keys held now (tests, diagnostics).
    pub fn key_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .jwks
            .as_ref()
            .map(|s| s.current().keys().cloned().collect())
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Verify a bearer token. Every failure is `invalid_token` (401); the reason is
    /// kept for the log, and the token itself is never included.
    pub async fn verify(&self, token: &str) -> Result<Claims> {
        let bad = |why: String| {
            Error::unauthenticated(
                codes::INVALID_TOKEN,
                "the access token is invalid or expired",
            )
            .with_internal(why)
        };
        let header = decode_header(token).map_err(|e| bad(format!("header: {e}")))?;
        let key = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => self
                .hs256
                .clone()
                .ok_or_else(|| bad("HS256 token but no SUPABASE_JWT_SECRET configured".into()))?,
            _ => self.jwk_for(header.kid.as_deref()).await.map_err(bad)?,
        };
        let mut validation = Validation::new(header.alg);
        validation.validate_aud = false;
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp"]);
        decode::<Claims>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| bad(format!("verify: {e}")))
    }

    async fn jwk_for(&self, kid: Option<&str>) -> std::result::Result<Arc<DecodingKey>, String> {
        let Some(store) = &self.jwks else {
            return Err("asymmetric token but no SUPABASE_JWKS_URL configured".into());
        };
        let kid = kid.ok_or("asymmetric token without kid")?;
        if let Some(key) = store.find(kid) {
            return Ok(key);
        }
        // Unknown kid: the project may have rotated keys, or the token is made up.
        store
            .find_unknown(kid)
            .await
            .ok_or_else(|| format!("no key with kid {kid}"))
    }
}
