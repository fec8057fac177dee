//! Operations endpoints (#13, item 7): `/metrics` behind an optional bearer token, and
//! `/readyz` answered from a check at most a second old.

use super::streams::{reads_proxy, take};
use crate::kit::service::Service;
use crate::kit::stack::Stack;
use bookengine::http::OpsConfig;
use bookengine::secret::Secret;
use std::time::Duration;

#[tokio::test]
async fn metrics_take_a_bearer_token_when_one_is_set() {
    let stack = Stack::start().await;
    let http = reqwest::Client::new();
    let get = |base: String, auth: Option<&'static str>| {
        let http = http.clone();
        async move {
            let mut r = http.get(format!("{base}/metrics"));
            if let Some(a) = auth {
                r = r.header("authorization", a);
            }
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            let www = r.headers().get("www-authenticate").is_some();
            (status, www, r.text().await.unwrap_or_default())
        }
    };

    // Unset: open, as before.
    let open = Service::api_via(&stack, &stack.rest_url, OpsConfig::default()).await;
    let (status, _, text) = get(open.address.clone(), None).await;
    assert_eq!(status, 200);
    assert!(text.contains("bookengine_"), "{text}");

    let token = "metrics-token-0123456789abcdef";
    let guarded = Service::api_via(
        &stack,
        &stack.rest_url,
        OpsConfig {
            metrics_token: Some(Secret::new(token)),
            ..Default::default()
        },
    )
    .await;
    let base = guarded.address.clone();
    let (status, www, text) = get(base.clone(), None).await;
    assert_eq!((status, www), (401, true), "{text}");
    assert!(text.contains("missing_token"), "{text}");
    for wrong in [
        "Bearer metrics-token-0123456789abcdeX",
        "Bearer metrics-token",
        "Bearer ",
        "Basic bWV0cmljczp4",
    ] {
        let (status, _, text) = get(base.clone(), Some(wrong)).await;
        assert_eq!(status, 401, "{wrong}: {text}");
        assert!(!text.contains("bookengine_"), "{wrong}: metrics leaked");
        assert!(!text.contains(token), "{wrong}: token echoed");
    }
    let (status, _, text) = get(base.clone(), Some("Bearer metrics-token-0123456789abcdef")).await;
    assert_eq!(status, 200);
    assert!(text.contains("bookengine_event_streams_open"), "{text}");
    // Health and readiness stay open: load balancers send no token.
    let r = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn readiness_is_checked_at_most_once_a_second() {
    let mut stack = Stack::start().await;
    let proxy = reads_proxy(&stack).await;
    let app = Service::api_via(&stack, &proxy.url, OpsConfig::default()).await;
    let url = format!("{}/readyz", app.address);
    take(&proxy);
    // Twice quickly, and 20 at once: one PostgREST call.
    let first = reqwest::get(&url).await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let second = reqwest::get(&url).await.unwrap();
    assert_eq!(second.status().as_u16(), 200);
    let many: Vec<_> = (0..20)
        .map(|_| tokio::spawn(reqwest::get(url.clone())))
        .collect();
    for r in many {
        assert_eq!(r.await.unwrap().unwrap().status().as_u16(), 200);
    }
    let calls: u64 = take(&proxy).values().sum();
    assert_eq!(calls, 1, "22 readiness probes within a second");

    // A second later the check is made again, and an outage shows within about a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(reqwest::get(&url).await.unwrap().status().as_u16(), 200);
    assert_eq!(take(&proxy).values().sum::<u64>(), 1);
    stack.kill_postgrest();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let down = reqwest::get(&url).await.unwrap();
    assert_eq!(down.status().as_u16(), 503);
    let body: serde_json::Value = down.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    stack.restart_postgrest().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(reqwest::get(&url).await.unwrap().status().as_u16(), 200);
}
