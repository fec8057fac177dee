//! Legacy API keys in the service's own settings. Supabase's original anon and
//! service_role keys are long-lived JWTs signed with the project's JWT secret: one
//! cannot be revoked without rotating the secret, which signs every user out. The
//! publishable (`sb_publishable_…`) and secret (`sb_secret_…`) keys replace them and
//! can be rotated one at a time.

use super::finding::{Finding, Severity};
use crate::config::SupabaseConfig;
use crate::rest::keys::{is_jwt, role_claim};
use crate::secret::Secret;

pub fn check(settings: &SupabaseConfig) -> Vec<Finding> {
    let legacy: Vec<String> = [
        ("SUPABASE_ANON_KEY", &settings.anon_key),
        ("SUPABASE_SERVICE_ROLE_KEY", &settings.service_role_key),
    ]
    .into_iter()
    .filter_map(|(name, key)| {
        let role = key.as_ref().and_then(jwt_role)?;
        Some(format!("{name} (a legacy JWT key, role {role})"))
    })
    .collect();
    if legacy.is_empty() {
        return Vec::new();
    }
    let replacements = [
        ("SUPABASE_PUBLISHABLE_KEY", &settings.publishable_key),
        ("SUPABASE_SECRET_KEY", &settings.secret_key),
    ]
    .into_iter()
    .filter(|(_, key)| key.as_ref().is_some_and(|k| !k.is_empty()))
    .map(|(name, _)| name)
    .collect::<Vec<_>>();
    let already = if replacements.is_empty() {
        String::new()
    } else {
        format!(
            " ({} already set: the service uses the new key and the legacy one can go)",
            replacements.join(", ")
        )
    };
    vec![Finding::new(
        "legacy_api_keys",
        Severity::Warning,
        format!(
            "{} legacy JWT API key(s) in the service's settings{already}",
            legacy.len()
        ),
    )
    .objects(legacy)
    .why(
        "Legacy anon/service_role keys are JWTs that live for years and are signed with the \
         project's JWT secret: a leaked service_role key bypasses RLS until the secret is rotated, \
         and rotating it signs every user out. Publishable and secret keys can be revoked one by one.",
    )
    .fix(
        "-- not SQL: Dashboard -> Project Settings -> API Keys: create a publishable and a secret key,\n\
         -- give them to the service (SUPABASE_PUBLISHABLE_KEY / SUPABASE_SECRET_KEY),\n\
         -- then disable the legacy JWT-based keys.",
    )]
}

/// The `role` claim of a key that is a JWT (`eyJ…`); the key itself is never shown.
fn jwt_role(key: &Secret) -> Option<String> {
    let value = key.expose().trim();
    if !is_jwt(value) {
        return None;
    }
    let role = role_claim(value).unwrap_or_else(|| "unknown".into());
    // Only the role's shape is echoed: a claim is not a secret, but keep it a word.
    Some(
        if role.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            role
        } else {
            "unknown".into()
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn with(anon: &str, service: &str) -> SupabaseConfig {
        SupabaseConfig {
            anon_key: Some(Secret::new(anon)),
            service_role_key: Some(Secret::new(service)),
            ..Default::default()
        }
    }

    #[test]
    fn jwt_keys_are_reported_without_their_value() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"role":"service_role","iss":"supabase"}"#);
        let service = format!("eyJhbGciOiJIUzI1NiJ9.{payload}.c2lnbmF0dXJl");
        let findings = check(&with("sb_publishable_abc", &service));
        assert_eq!(findings.len(), 1);
        let f = &findings[0];
        assert_eq!(
            f.objects,
            ["SUPABASE_SERVICE_ROLE_KEY (a legacy JWT key, role service_role)"]
        );
        let text = serde_json::to_string(f).unwrap_or_default();
        assert!(
            !text.contains(&service) && !text.contains(&payload),
            "{text}"
        );
    }

    #[test]
    fn new_keys_and_no_keys_are_quiet() {
        assert!(check(&with("sb_publishable_x", "sb_secret_y")).is_empty());
        assert!(check(&SupabaseConfig::default()).is_empty());
    }
}
