//! Verifying Supabase access tokens: HS256 with the project's JWT secret, and
//! ES256/RS256 with the keys of a JWKS (current Supabase projects sign asymmetrically).

use super::Claims;
use crate::error::{codes, Error, Result};
use crate::secret::Secret;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::RwLock;

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

    async fn load(&self, http: &reqwest::Client) -> Result<JwkSet> {
        let text = match self {
            Self::File(path) => tokio::fs::read_to_string(path).await.map_err(|e| {
                Error::config(format!(
                    "SUPABASE_JWKS_URL: cannot read {}: {e}",
                    path.display()
                ))
            })?,
            Self::Url(url) => http
                .get(url)
                .timeout(Duration::from_secs(10))
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

struct JwksCache {
    keys: JwkSet,
    fetched: Instant,
}

/// Checks signature, algorithm and expiry. Cheap to clone.
#[derive(Clone)]
pub struct JwtVerifier {
    hs256: Option<Arc<DecodingKey>>,
    jwks: Option<(JwksSource, Arc<RwLock<JwksCache>>)>,
    http: reqwest::Client,
}

/// A key set is fetched again for an unknown `kid` at most this often (key rotation).
const JWKS_REFRESH_MIN: Duration = Duration::from_secs(60);

impl JwtVerifier {
    pub async fn new(secret: Option<&Secret>, jwks: Option<JwksSource>) -> Result<Self> {
        let http = reqwest::Client::new();
        let hs256 = match secret {
            Some(s) if !s.is_empty() => {
                Some(Arc::new(DecodingKey::from_secret(s.expose().as_bytes())))
            }
            _ => None,
        };
        let jwks = match jwks {
            Some(source) => {
                let keys = source.load(&http).await?;
                let cache = JwksCache {
                    keys,
                    fetched: Instant::now(),
                };
                Some((source, Arc::new(RwLock::new(cache))))
            }
            None => None,
        };
        if hs256.is_none() && jwks.is_none() {
            return Err(Error::config(
                "SUPABASE_JWT_SECRET or SUPABASE_JWKS_URL must be set to verify tokens",
            ));
        }
        Ok(Self { hs256, jwks, http })
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
            _ => Arc::new(self.jwk_for(header.kid.as_deref()).await.map_err(bad)?),
        };
        let mut validation = Validation::new(header.alg);
        validation.validate_aud = false;
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp"]);
        decode::<Claims>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| bad(format!("verify: {e}")))
    }

    async fn jwk_for(&self, kid: Option<&str>) -> std::result::Result<DecodingKey, String> {
        let Some((source, cache)) = &self.jwks else {
            return Err("asymmetric token but no SUPABASE_JWKS_URL configured".into());
        };
        let kid = kid.ok_or("asymmetric token without kid")?;
        if let Some(key) = find_key(&cache.read().await.keys, kid) {
            return key;
        }
        // Unknown kid: the project may have rotated keys. Refetch, but not too often.
        let mut guard = cache.write().await;
        if guard.fetched.elapsed() >= JWKS_REFRESH_MIN {
            if let Ok(keys) = source.load(&self.http).await {
                guard.keys = keys;
                guard.fetched = Instant::now();
            }
        }
        find_key(&guard.keys, kid).unwrap_or_else(|| Err(format!("no key with kid {kid}")))
    }
}

fn find_key(keys: &JwkSet, kid: &str) -> Option<std::result::Result<DecodingKey, String>> {
    keys.find(kid)
        .map(|jwk| DecodingKey::from_jwk(jwk).map_err(|e| format!("bad JWK {kid}: {e}")))
}
