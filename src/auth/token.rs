//! Minting HS256 tokens for local development only. A real project's tokens come
//! from Supabase Auth; nothing here is used to answer a request.

use crate::error::{Error, Result};
use crate::secret::Secret;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct MintRequest {
    pub user: Option<Uuid>,
    pub role: String,
    pub ttl: Duration,
    pub email: Option<String>,
}

/// Sign a token the way Supabase Auth shapes its access tokens.
pub fn mint(secret: &Secret, req: &MintRequest) -> Result<Secret> {
    if secret.expose().len() < 32 {
        return Err(Error::config(
            "SUPABASE_JWT_SECRET must be at least 32 characters",
        ));
    }
    if !matches!(req.role.as_str(), "anon" | "authenticated" | "service_role") {
        return Err(Error::invalid(
            crate::error::codes::INVALID_REQUEST,
            format!(
                "role must be anon, authenticated or service_role, not {}",
                req.role
            ),
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| Error::internal(format!("clock before 1970: {e}")))?
        .as_secs();
    let mut claims = json!({
        "iss": "bookengine-local",
        "role": req.role,
        "iat": now,
        "exp": now + req.ttl.as_secs(),
    });
    if let Some(user) = req.user {
        claims["sub"] = json!(user.to_string());
        claims["aud"] = json!("authenticated");
    }
    if let Some(email) = &req.email {
        claims["email"] = json!(email);
    }
    let token = encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )
    .map_err(|e| Error::internal(format!("signing token: {e}")))?;
    Ok(Secret::new(token))
}

/// Parse `30s`, `15m`, `1h`, `7d` or a plain number of seconds.
pub fn parse_ttl(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 30s, 15m, 1h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{s}`: unit must be s, m, h or d")),
    };
    if secs == 0 {
        return Err("ttl must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("0s").is_err());
    }
}
