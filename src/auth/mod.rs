//! JWTs: verifying the bearer tokens the HTTP API receives, and minting local
//! development tokens (`bookengine token`, the local stack, tests).

mod jwks;
mod token;

pub use jwks::{JwksPolicy, JwksSource, JwtVerifier};
pub use token::{mint, parse_ttl, MintRequest};

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
