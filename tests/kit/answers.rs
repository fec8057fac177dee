//! Checks of an answer that many tests make.

use serde_json::{json, Value};

/// The answer is `want` with the API's error `code` (`{"error": {"code": …}}`).
#[track_caller]
pub fn assert_api_error(status: u16, body: &Value, want: u16, code: &str) {
    assert_eq!(
        (status, &body["error"]["code"]),
        (want, &json!(code)),
        "{body}"
    );
}

/// The answer is PostgREST's `want` with `details` = `code` (what the SQL raised).
#[track_caller]
pub fn assert_rest_error(status: u16, body: &Value, want: u16, code: &str) {
    assert_eq!((status, &body["details"]), (want, &json!(code)), "{body}");
}
