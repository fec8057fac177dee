//! JWTs: verifying the bearer tokens the HTTP API receives, and minting local
//! development tokens (`bookengine token`, the local stack, tests).

mod jwks;
mod token;

pub use jwks::{JwksPolicy, JwksSource, JwtVerifier};
pub use token::{mint, parse_ttl, MintRequest};

use crate::error::Error;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The claims bookengine reads from a Supabase access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub sub: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    pub exp: i64,
}

impl Claims {
    /// The user id, when `sub` is one.
    pub fn user_id(&self) -> Option<Uuid> {
        self.sub.as_deref().and_then(|s| Uuid::parse_str(s).ok())
    }
}

/// The verifier the settings describe: the HS256 secret and/or the JWKS, which defaults
/// to `$SUPABASE_URL/auth/v1/.well-known/jwks.json`. A defaulted JWKS that cannot be
/// loaded is not fatal when the secret is there (a legacy project, or a local stack).
pub async fn verifier_from(
    auth: &crate::config::AuthConfig,
    supabase: &crate::config::SupabaseConfig,
) -> crate::error::Result<JwtVerifier> {
    let secret = crate::config::present(&auth.jwt_secret);
    match auth.jwks(supabase) {
        Some((url, explicit)) => {
            match JwtVerifier::new(secret, Some(JwksSource::parse(&url))).await {
                Ok(v) => Ok(v),
                Err(e) if !explicit && secret.is_some() => {
                    tracing::warn!(
                        jwks = %url,
                        error = %e.message,
                        "the default JWKS could not be loaded; verifying with SUPABASE_JWT_SECRET only"
                    );
                    JwtVerifier::new(secret, None).await
                }
                Err(e) if !explicit => Err(Error::config(format!(
                    "SUPABASE_JWT_SECRET is not set and the JWKS at {url} (the default from \
                 SUPABASE_URL) could not be loaded: {}",
                    e.message
                ))),
                Err(e) => Err(e),
            }
        }
        None => JwtVerifier::new(secret, None).await,
    }
}
