//! A pass-through proxy in front of PostgREST that counts (and times) the calls going
//! through it, by a key of the caller's choosing.

use super::stack::BoxError;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A call's key from its method and path with query.
pub type KeyOf = fn(&Method, &str) -> String;

#[derive(Clone, Copy, Debug, Default)]
pub struct CallStats {
    pub count: u64,
    /// Time from sending the call upstream to its whole answer, summed.
    pub total_ms: f64,
}

type Calls = Arc<Mutex<BTreeMap<String, CallStats>>>;

pub struct CountingProxy {
    /// Where to send the calls instead of PostgREST.
    pub url: String,
    calls: Calls,
}

#[derive(Clone)]
struct Proxy {
    upstream: String,
    http: reqwest::Client,
    key_of: KeyOf,
    calls: Calls,
}

impl CountingProxy {
    pub async fn start(upstream: &str, key_of: KeyOf) -> Result<CountingProxy, BoxError> {
        let calls = Calls::default();
        let state = Proxy {
            upstream: upstream.to_owned(),
            http: reqwest::Client::new(),
            key_of,
            calls: calls.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let app = axum::Router::new().fallback(forward).with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(CountingProxy {
            url: format!("http://127.0.0.1:{port}"),
            calls,
        })
    }

    /// The calls counted since the start or the last take, by key.
    pub fn take(&self) -> BTreeMap<String, CallStats> {
        self.calls
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }
}

async fn forward(State(p): State<Proxy>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |x| x.as_str())
        .to_owned();
    let mut rb = p.http.request(
        parts.method.clone(),
        format!("{}{path_and_query}", p.upstream),
    );
    for (k, v) in parts.headers.iter() {
        if k != header::HOST && k != header::CONTENT_LENGTH {
            rb = rb.header(k, v);
        }
    }
    let started = Instant::now();
    let answer = match rb.body(bytes).send().await {
        Ok(r) => {
            let (status, headers) = (r.status(), r.headers().clone());
            Ok((status, headers, r.bytes().await.unwrap_or_default()))
        }
        Err(e) => Err(e),
    };
    // Counted whatever the answer: a call that found PostgREST down was made too.
    let took_ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(mut calls) = p.calls.lock() {
        let c = calls
            .entry((p.key_of)(&parts.method, &path_and_query))
            .or_default();
        c.count += 1;
        c.total_ms += took_ms;
    }
    let (status, headers, body) = match answer {
        Ok(a) => a,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let mut out = Response::builder().status(status);
    for (k, v) in headers.iter() {
        if k != header::TRANSFER_ENCODING && k != header::CONTENT_LENGTH {
            out = out.header(k, v);
        }
    }
    out.body(axum::body::Body::from(body))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}
