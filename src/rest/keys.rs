//! Which API key goes on which PostgREST call, from Supabase's two generations of keys:
//! the 2026 opaque keys (`sb_publishable_…`, `sb_secret_…`) and the legacy JWT keys
//! (`anon`, `service_role`).
//!
//! `Authorization` only ever carries a real JWT. An opaque key there is answered with
//! 401 PGRST301 "Expected 3 parts in JWT; got 1" (supabase-py #1230), so an `sb_secret_`
//! key travels in `apikey` alone and the gateway maps it to the service role.

use crate::config::{present, SupabaseConfig};
use crate::error::{Error, Result};
use crate::secret::Secret;
use base64::Engine as _;

/// The headers of one kind of call: `apikey`, and the bearer when the key is a JWT.
#[derive(Clone, Debug)]
pub struct KeyUse {
    pub apikey: Secret,
    /// `Some` only for a legacy JWT key (PostgREST reached without a gateway needs it).
    pub bearer: Option<Secret>,
    /// The setting it came from, for messages.
    pub setting: &'static str,
}

/// The keys of a configuration, chosen once.
#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    /// On calls for a person, beside their own JWT.
    pub user: Option<KeyUse>,
    /// On the service's own calls (the queue).
    pub service: Option<KeyUse>,
    /// Set when both kinds were given: says which is used and whether they disagree.
    pub notice: Option<String>,
}

/// A JWT has three dot-separated parts; an opaque `sb_` key has none of the dots.
pub fn is_jwt(key: &str) -> bool {
    !key.starts_with("sb_") && key.split('.').count() == 3 && key.split('.').all(|p| !p.is_empty())
}

/// The `role` claim of a JWT, read without verifying it (only to catch a key pasted
/// into the wrong setting; PostgREST verifies every token it is given).
pub fn role_claim(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims["role"].as_str().map(str::to_owned)
}

/// Visible ASCII only: what an HTTP header value may hold.
pub fn header_safe(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..0x7f).contains(&b))
}

struct Slot<'a> {
    new: (&'static str, Option<&'a Secret>),
    legacy: (&'static str, Option<&'a Secret>),
    /// The prefix an opaque key of this slot has, and the one it must never have.
    prefix: &'static str,
    wrong_prefix: &'static str,
    /// The role a legacy key of this slot claims.
    role: &'static str,
}

impl ApiKeys {
    /// Choose and check the keys. `direct` is true when the URL is POSTGREST_URL (no
    /// gateway in between that could map an opaque key to a role).
    pub fn choose(config: &SupabaseConfig) -> Result<Self> {
        let direct = config.postgrest_url.is_some();
        let user = Slot {
            new: ("SUPABASE_PUBLISHABLE_KEY", present(&config.publishable_key)),
            legacy: ("SUPABASE_ANON_KEY", present(&config.anon_key)),
            prefix: "sb_publishable_",
            wrong_prefix: "sb_secret_",
            role: "anon",
        };
        let service = Slot {
            new: ("SUPABASE_SECRET_KEY", present(&config.secret_key)),
            legacy: (
                "SUPABASE_SERVICE_ROLE_KEY",
                present(&config.service_role_key),
            ),
            prefix: "sb_secret_",
            wrong_prefix: "sb_publishable_",
            role: "service_role",
        };
        let (user, user_note) = user.pick(direct)?;
        let (service, service_note) = service.pick(direct)?;
        let notes: Vec<String> = [user_note, service_note].into_iter().flatten().collect();
        Ok(Self {
            user,
            service,
            notice: (!notes.is_empty()).then(|| notes.join("; ")),
        })
    }
}

impl Slot<'_> {
    fn check(&self, setting: &'static str, key: &Secret) -> Result<()> {
        let k = key.expose().trim();
        if !header_safe(k) {
            return Err(Error::config(format!(
                "{setting} contains characters a key cannot have"
            )));
        }
        if k.starts_with(self.wrong_prefix) {
            return Err(Error::config(format!(
                "{setting} holds a {}… key; it belongs in the other setting",
                self.wrong_prefix
            )));
        }
        if is_jwt(k) {
            if let Some(role) = role_claim(k).filter(|r| r != self.role) {
                // A service_role key in the anon slot would hand the service role to
                // every person's call: refuse it outright.
                return Err(Error::config(format!(
                    "{setting} is a `{role}` key, not a `{}` key",
                    self.role
                )));
            }
        }
        Ok(())
    }

    fn pick(self, direct: bool) -> Result<(Option<KeyUse>, Option<String>)> {
        for (setting, key) in [self.new, self.legacy] {
            if let Some(key) = key {
                self.check(setting, key)?;
            }
        }
        let use_of = |(setting, key): (&'static str, &Secret)| {
            let k = key.expose().trim();
            KeyUse {
                apikey: Secret::new(k),
                bearer: is_jwt(k).then(|| Secret::new(k)),
                setting,
            }
        };
        match (self.new, self.legacy) {
            ((n, Some(new)), (l, Some(legacy))) => {
                // Straight to PostgREST nothing maps an opaque key to a role: the JWT
                // key is the one that works there.
                let opaque = !is_jwt(new.expose().trim());
                let legacy_jwt = is_jwt(legacy.expose().trim());
                let (used, ignored, why) = if direct && opaque && legacy_jwt {
                    (
                        (l, legacy),
                        n,
                        "POSTGREST_URL is PostgREST without a gateway, which cannot map an opaque key to a role",
                    )
                } else {
                    ((n, new), l, "the new key wins")
                };
                let agreement = if new.expose().trim() == legacy.expose().trim() {
                    "they hold the same key"
                } else if opaque && !new.expose().trim().starts_with(self.prefix) {
                    "they disagree: the new one does not look like an sb_ key"
                } else {
                    "they are different keys"
                };
                let note = format!(
                    "{n} and {l} are both set ({agreement}); using {} ({why}), {ignored} is ignored",
                    used.0
                );
                Ok((Some(use_of(used)), Some(note)))
            }
            ((n, Some(k)), _) | (_, (n, Some(k))) => Ok((Some(use_of((n, k))), None)),
            _ => Ok((None, None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANON: &str = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYW5vbiJ9.c2ln";
    const SERVICE: &str = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2ln";

    fn config(
        publishable: Option<&str>,
        secret: Option<&str>,
        anon: Option<&str>,
        service: Option<&str>,
        direct: bool,
    ) -> SupabaseConfig {
        let url = Some("http://127.0.0.1:1".parse().expect("url"));
        SupabaseConfig {
            supabase_url: if direct { None } else { url.clone() },
            postgrest_url: if direct { url } else { None },
            publishable_key: publishable.map(Secret::new),
            secret_key: secret.map(Secret::new),
            anon_key: anon.map(Secret::new),
            service_role_key: service.map(Secret::new),
        }
    }

    #[test]
    fn an_opaque_secret_key_is_never_a_bearer() {
        let keys = ApiKeys::choose(&config(
            Some("sb_publishable_abc"),
            Some("sb_secret_xyz"),
            None,
            None,
            false,
        ))
        .expect("keys");
        let service = keys.service.expect("service key");
        assert_eq!(service.apikey.expose(), "sb_secret_xyz");
        assert!(service.bearer.is_none());
        assert_eq!(
            keys.user.expect("user").apikey.expose(),
            "sb_publishable_abc"
        );
        assert!(keys.notice.is_none());
    }

    #[test]
    fn a_legacy_service_key_is_also_the_bearer() {
        let keys =
            ApiKeys::choose(&config(None, None, Some(ANON), Some(SERVICE), true)).expect("keys");
        let service = keys.service.expect("service key");
        assert_eq!(service.bearer.expect("bearer").expose(), SERVICE);
    }

    #[test]
    fn both_kinds_say_which_is_used() {
        let through_gateway = ApiKeys::choose(&config(
            Some("sb_publishable_abc"),
            Some("sb_secret_xyz"),
            Some(ANON),
            Some(SERVICE),
            false,
        ))
        .expect("keys");
        assert_eq!(
            through_gateway.service.expect("s").setting,
            "SUPABASE_SECRET_KEY"
        );
        let notice = through_gateway.notice.expect("notice");
        assert!(
            notice.contains("using SUPABASE_PUBLISHABLE_KEY"),
            "{notice}"
        );
        assert!(
            notice.contains("SUPABASE_SERVICE_ROLE_KEY is ignored"),
            "{notice}"
        );
        assert!(!notice.contains("sb_secret_xyz"), "a key leaked: {notice}");

        let direct = ApiKeys::choose(&config(
            Some("sb_publishable_abc"),
            Some("sb_secret_xyz"),
            Some(ANON),
            Some(SERVICE),
            true,
        ))
        .expect("keys");
        assert_eq!(
            direct.service.expect("s").setting,
            "SUPABASE_SERVICE_ROLE_KEY"
        );
        assert!(direct.notice.expect("notice").contains("without a gateway"));
    }

    #[test]
    fn keys_in_the_wrong_setting_are_refused() {
        for (cfg, setting) in [
            (
                config(Some("sb_secret_xyz"), None, None, None, false),
                "SUPABASE_PUBLISHABLE_KEY",
            ),
            (
                config(None, Some("sb_publishable_abc"), None, None, false),
                "SUPABASE_SECRET_KEY",
            ),
            (
                config(None, None, Some(SERVICE), None, true),
                "SUPABASE_ANON_KEY",
            ),
            (
                config(Some("sb_publishable_a\nb"), None, None, None, false),
                "SUPABASE_PUBLISHABLE_KEY",
            ),
        ] {
            let e = ApiKeys::choose(&cfg).expect_err(setting);
            assert!(e.message.contains(setting), "{}", e.message);
            assert!(!e.message.contains("sb_secret_xyz"), "{}", e.message);
        }
    }
}
