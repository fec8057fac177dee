//! One JSON request, as every caller of the kit makes them.

use serde_json::Value;

/// Send `req` with an optional bearer token and JSON body; returns (status, body as
/// JSON, or as a JSON string when it is not JSON).
pub async fn json_answer(
    mut req: reqwest::RequestBuilder,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}
