//! Token verification by the service: HS256 and asymmetric keys from a JWKS.

use crate::kit::service::{serve_config, Service};
use crate::kit::stack::{Stack, ES256_PRIVATE_PEM, JWKS_PATH};
use bookengine::auth::{JwksSource, JwtVerifier};
use bookengine::secret::Secret;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

fn es256(claims: &serde_json::Value, kid: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    encode(
        &header,
        claims,
        &EncodingKey::from_ec_pem(ES256_PRIVATE_PEM.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn claims(sub: uuid::Uuid, exp_offset: i64) -> serde_json::Value {
    json!({"sub": sub, "role": "authenticated", "aud": "authenticated", "exp": chrono::Utc::now().timestamp() + exp_offset})
}

#[tokio::test]
async fn the_verifier_accepts_es256_from_a_jwks_and_refuses_the_rest() {
    let v = JwtVerifier::new(None, Some(JwksSource::parse(JWKS_PATH)))
        .await
        .unwrap();
    let user = uuid::Uuid::new_v4();
    let c = v
        .verify(&es256(&claims(user, 600), "test-es256"))
        .await
        .unwrap();
    assert_eq!(c.user_id(), Some(user));
    for (what, token) in [
        ("unknown kid", es256(&claims(user, 600), "other")),
        ("expired", es256(&claims(user, -600), "test-es256")),
        ("HS256 with no secret configured", {
            encode(
                &Header::default(),
                &claims(user, 600),
                &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
            )
            .unwrap()
        }),
        ("garbage", "a.b.c".to_owned()),
    ] {
        let e = v.verify(&token).await.expect_err(what);
        assert_eq!(e.code, "invalid_token", "{what}");
        assert!(!e.message.contains(&token), "{what}: token echoed");
    }
    // Nothing configured is a configuration error, not a panic.
    assert!(JwtVerifier::new(None, None).await.is_err());
    assert!(
        JwtVerifier::new(None, Some(JwksSource::parse("/nonexistent/jwks.json")))
            .await
            .is_err()
    );
    // HS256 and JWKS together: both kinds verify.
    let secret = Secret::new("0123456789abcdef0123456789abcdef");
    let both = JwtVerifier::new(Some(&secret), Some(JwksSource::parse(JWKS_PATH)))
        .await
        .unwrap();
    let hs = encode(
        &Header::default(),
        &claims(user, 600),
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )
    .unwrap();
    assert!(both.verify(&hs).await.is_ok());
    assert!(both
        .verify(&es256(&claims(user, 600), "test-es256"))
        .await
        .is_ok());
}

#[tokio::test]
async fn an_es256_user_token_works_end_to_end_through_the_api_and_postgrest() {
    let stack = Stack::start_with(true).await;
    let pro = stack.user(Some("pro"), false).await;
    let engine = stack.engine_fixture("es256 engine", true).await;
    stack
        .assign_fixture(engine, Some("pro"), None, 0, true)
        .await;
    let mut config = serve_config(&stack);
    config.auth.jwks_url = Some(JWKS_PATH.into());
    let service = Service::start(&config).await.expect("start the service");
    let url = format!("{}/v1/me/engine", service.address);
    let token = es256(&claims(pro.id, 600), "test-es256");
    let r = stack
        .http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["id"], json!(engine));
    // The HS256 token of the same user still works (projects migrating keys have both).
    let r = stack
        .http
        .get(&url)
        .bearer_auth(&pro.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = stack
        .http
        .get(&url)
        .bearer_auth(es256(&claims(pro.id, 600), "rotated-away"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}
