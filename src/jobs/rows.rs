//! Rows decoded one at a time. A row the service cannot read whole (JSON nested
//! deeper than serde_json's 128 levels, a number beyond a 64-bit float) costs only
//! itself: its scalar columns are still shown, and the other rows are untouched.
//! Decoding a whole reply at once would fail for every row in it.

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

/// Decode one row as `T`, or, failing that, as its fallback `H` (the columns that can
/// always be read; serde skips the others without recursing), converted by `degrade`.
/// `None` only when not even the fallback can be read.
pub fn decode<T, H>(row: &RawValue, degrade: impl FnOnce(H, &serde_json::Error) -> T) -> Option<T>
where
    T: DeserializeOwned,
    H: DeserializeOwned,
{
    match serde_json::from_str::<T>(row.get()) {
        Ok(t) => Some(t),
        Err(e) => match serde_json::from_str::<H>(row.get()) {
            Ok(h) => Some(degrade(h, &e)),
            Err(e2) => {
                tracing::warn!(error = %e, fallback = %e2, "a row could not be read at all; left out");
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// A reply split as `Rest::rows` splits it.
    fn split(body: &[u8]) -> serde_json::Result<Vec<Box<RawValue>>> {
        serde_json::from_slice(body)
    }

    #[derive(Deserialize)]
    struct Full {
        id: u32,
        #[allow(dead_code)]
        input: serde_json::Value,
    }

    #[derive(Deserialize)]
    struct Head {
        id: u32,
    }

    #[test]
    fn a_deep_row_costs_only_itself() {
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let body = format!(
            r#"[{{"id":1,"input":{{}}}},{{"id":2,"input":{deep}}},{{"id":3,"input":1e999}},{{"id":4,"input":[]}}]"#
        );
        let rows = split(body.as_bytes()).expect("split copes with any depth");
        assert_eq!(rows.len(), 4);
        let ids: Vec<(u32, bool)> = rows
            .iter()
            .filter_map(|r| {
                decode::<Full, Head>(r, |h, _| Full {
                    id: h.id,
                    input: serde_json::Value::Null,
                })
            })
            .map(|f| (f.id, f.input.is_null()))
            .collect();
        assert_eq!(ids, vec![(1, false), (2, true), (3, true), (4, false)]);
    }

    #[test]
    fn a_row_without_its_scalar_columns_is_left_out() {
        let rows = split(br#"[{"id":"x"},{"id":5,"input":0}]"#).unwrap();
        let got: Vec<u32> = rows
            .iter()
            .filter_map(|r| {
                decode::<Full, Head>(r, |h, _| Full {
                    id: h.id,
                    input: serde_json::Value::Null,
                })
            })
            .map(|f| f.id)
            .collect();
        assert_eq!(got, vec![5]);
    }
}
