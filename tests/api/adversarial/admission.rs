//! Issue #13, item 9: a property test of admission. Hostile inputs (deep and wide
//! JSON, huge strings, \u0000, lone surrogates, numbers beyond i64 and beyond a
//! float) are sent as raw JSON text both through the service (`POST /v1/generations`)
//! and straight to PostgREST (`rpc/request_generation`): neither answers 5xx, and
//! another user's queued job is untouched and still runs.
//! Cases: 10,000 by default; `BOOKENGINE_FUZZ_CASES` scales it (1,000,000 in the
//! long tier).

use super::queue::start_worker;
use crate::kit::app::{book_setup, spawn_app};
use crate::kit::http::JsonCalls;
use crate::kit::jobs::{finished, request_book, wait_until};
use crate::kit::mock_llm::Mocks;
use futures::StreamExt;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::json;
use std::time::Duration;

fn cases() -> usize {
    std::env::var("BOOKENGINE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// A JSON string literal, escapes included (some of them invalid on purpose).
fn string_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "\\PC{0,24}".prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
        1 => Just(r#""\u0000""#.to_owned()),
        1 => Just(r#""a\u0000b""#.to_owned()),
        1 => Just(r#""\ud800""#.to_owned()),
        1 => Just(r#""x\udc00y""#.to_owned()),
        1 => Just(r#""\ud83d\ude00""#.to_owned()),
    ]
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        "-?[1-9][0-9]{19,60}",
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::to_string(&f).unwrap_or_default()),
        prop::sample::select(vec![
            "1e308",
            "-1e308",
            "2e308",
            "1e400",
            "-1e309",
            "1e-400",
            "0.0000000000000000000001"
        ])
        .prop_map(str::to_owned),
    ]
}

fn leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        number(),
        string_literal(),
    ]
}

/// Small trees of every kind of value.
fn tree() -> impl Strategy<Value = String> {
    leaf().prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((string_literal(), inner), 0..6).prop_map(|kv| {
                let members: Vec<String> = kv.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

/// Shapes at and around the limits: depth 1-60, width 990-1010, sizes near 64 KiB.
fn edge() -> impl Strategy<Value = String> {
    prop_oneof![
        (1usize..60, any::<bool>(), leaf()).prop_map(|(d, objects, l)| if objects {
            format!("{}{l}{}", "{\"a\":".repeat(d), "}".repeat(d))
        } else {
            format!("{}{l}{}", "[".repeat(d), "]".repeat(d))
        }),
        (990usize..1010, any::<bool>()).prop_map(|(n, objects)| if objects {
            let m: Vec<String> = (0..n).map(|i| format!("\"k{i}\":{i}")).collect();
            format!("{{{}}}", m.join(","))
        } else {
            format!("[{}]", vec!["0"; n].join(","))
        }),
        (65_400usize..65_700).prop_map(|n| format!("\"{}\"", "x".repeat(n))),
        (100_000usize..400_000).prop_map(|n| format!("\"{}\"", "y".repeat(n))),
    ]
}

/// The `input` member of a request: mostly an object around a hostile value.
fn input() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => tree().prop_map(|v| format!(r#"{{"topic":"fuzz","v":{v}}}"#)),
        3 => edge().prop_map(|v| format!(r#"{{"topic":"fuzz","v":{v}}}"#)),
        1 => prop_oneof![tree(), edge()],
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_never_cause_a_5xx_nor_touch_another_users_job() {
    let n = cases();
    let mocks = Mocks::start().await;
    let app = spawn_app().await;
    let (_admin, victim, _) = book_setup(&app).await;
    let attacker = app.stack.user(Some("pro"), false).await;
    let attacker_token = attacker.token.clone();
    let (s, job) = request_book(&app, &victim, "victim").await;
    assert_eq!(s, 202, "{job}");
    let victim_job = job["id"].as_str().unwrap().to_owned();

    // Generated as they are sent (1,000,000 cases would not fit in memory at once).
    let mut runner = TestRunner::default();
    let strategy = input();
    let service = format!("{}/v1/generations", app.address);
    let rest = format!("{}/rpc/request_generation", app.stack.rest_url);
    let http = app.http.clone();
    let started = std::time::Instant::now();
    let mut statuses = std::collections::BTreeMap::<(bool, u16), usize>::new();
    let mut results = futures::stream::iter((0..n).map(move |i| {
        let input = strategy
            .new_tree(&mut runner)
            .expect("generate an input")
            .current();
        // Alternate the two doors; each case goes through one of them.
        let through_service = i % 2 == 0;
        let url = if through_service { &service } else { &rest };
        let req = http
            .post(url)
            .bearer_auth(&attacker_token)
            .header("content-type", "application/json")
            .body(format!(r#"{{"input":{input}}}"#))
            .send();
        async move {
            let r = req.await.expect("request");
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            (i, input, through_service, status, body)
        }
    }))
    .buffer_unordered(8);
    while let Some((i, input, through_service, status, body)) = results.next().await {
        *statuses.entry((through_service, status)).or_default() += 1;
        assert!(
            status < 500,
            "{} answered {status} to input #{i} ({} bytes, starts {:?}): {body}",
            if through_service {
                "the service"
            } else {
                "PostgREST"
            },
            input.len(),
            input.chars().take(200).collect::<String>()
        );
    }
    println!(
        "admission fuzz: {n} cases in {:.1} s; (through the service?, status) -> count: {statuses:?}",
        started.elapsed().as_secs_f64()
    );

    // The other user's job: still queued, same input, and it runs.
    let (s, job) = app
        .get(&format!("/v1/generations/{victim_job}"), &victim.token)
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        (job["status"].as_str(), &job["input"]),
        (Some("queued"), &json!({"topic": "victim"}))
    );
    let others: i64 = app
        .stack
        .count(
            "SELECT count(*) FROM generation_jobs WHERE user_id <> $1",
            &[&attacker.id],
        )
        .await;
    assert_eq!(
        others, 1,
        "the fuzzing created or removed another user's job"
    );
    let stop = start_worker(&app, &mocks).await;
    let job = wait_until(
        &app,
        &victim.token,
        &victim_job,
        Duration::from_secs(60),
        finished,
    )
    .await;
    stop.cancel();
    assert_eq!(job["status"], "succeeded", "{job}");
}
